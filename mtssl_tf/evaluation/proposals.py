"""Precomputed region proposals for Fast R-CNN: selective search once per image, cached, looked up by image id.

Fast R-CNN (Girshick 2015), which Noroozi et al. 2018 (§5, Table 3 "Det.") fine-tune every
AlexNet with, scores the selective-search boxes R-CNN computed once for PASCAL VOC ("fast
mode", about 2000 boxes an image; rbgirshick/fast-rcnn `datasets/pascal_voc.py` loads them,
`selective_search.py` here computes them). Training adds the ground-truth boxes to them
(`merge_roidbs`; `fast_rcnn.FastRCNN` does it through Model Garden's ROI sampler); the test
scores every proposal.

A cache is one `.npz` file per (detection source, selective-search settings): an array of
normalised [ymin, xmin, ymax, xmax] boxes per image id (best-ranked first) and a JSON record
of the source and settings, so a cache made with other settings is refused by name instead
of silently reused. A cache marked complete is used without reading the source again (a
source that gained images since fails at the first unknown id, naming the file); an
incomplete one (an interrupted run) is resumed: missing images are computed in worker processes (spawned, so they do not
inherit TensorFlow's threads) and the file is replaced atomically: a crash loses nothing
already written, and two evaluations sharing a cache directory at most compute an image twice.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from typing import Callable, Dict, Iterable, Iterator, Tuple

import numpy as np
from absl import logging

from mtssl_tf.evaluation.selective_search import SelectiveSearchSettings, selective_search

META_KEY = '__meta__'
# In the meta record: every image of the source has its boxes (written last, after the final image).
COMPLETE_KEY = 'complete'
# Bump when the boxes a setting gives change (a cache written before is then recomputed, not reused).
ALGORITHM_VERSION = 1
# Images between progress lines while computing.
_PROGRESS_EVERY = 100


class ProposalError(ValueError):
  """A cache that cannot serve the request (another source or settings, a missing image)."""


def cache_path(cache_dir: str, spec: str, settings: SelectiveSearchSettings) -> str:
  """The cache file of (source `spec`, `settings`) under `cache_dir`: readable settings plus a hash of both."""
  key = json.dumps({'spec': spec, 'settings': settings.to_dict(), 'version': ALGORITHM_VERSION}, sort_keys=True)
  digest = hashlib.sha1(key.encode()).hexdigest()[:12]
  return os.path.join(
    cache_dir, f'selective_search_{settings.mode}_min{settings.min_box_side}_max{settings.max_image_side}_{digest}.npz'
  )


def _normalised(image: np.ndarray, settings_dict: dict) -> np.ndarray:
  """One image's selective-search boxes, normalised by its size (worker entry point: plain arguments only)."""
  boxes = selective_search(image, SelectiveSearchSettings(**settings_dict))
  height, width = image.shape[:2]
  return (boxes / np.array([height, width, height, width], np.float32)).astype(np.float32)


def _read(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
  with np.load(path, allow_pickle=False) as data:
    meta = json.loads(str(data[META_KEY]))
    return {k: data[k] for k in data.files if k != META_KEY}, meta


def _write(path: str, boxes: Dict[str, np.ndarray], meta: dict) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.proposals-', suffix='.npz', dir=os.path.dirname(path) or '.')
  os.close(fd)
  try:
    np.savez(tmp, **{META_KEY: np.array(json.dumps(meta, sort_keys=True))}, **boxes)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from the team's other users.
    os.replace(tmp, path)  # Atomic: readers see the old file or the new one, never half of one.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


class ProposalStore:
  """Proposals of one source by image id: `boxes(image_id)` -> normalised [N, 4] float32."""

  def __init__(self, path: str, boxes: Dict[str, np.ndarray], meta: dict):
    self.path, self._boxes, self.meta = path, boxes, meta

  def __len__(self) -> int:
    return len(self._boxes)

  def boxes(self, image_id: str) -> np.ndarray:
    """Normalised [ymin, xmin, ymax, xmax] boxes of `image_id`, best-ranked first.

    Raises:
      ProposalError: the image has no entry (the cache file is named).
    """
    try:
      return self._boxes[image_id]
    except KeyError:
      raise ProposalError(
        f'proposals: no selective-search boxes for image {image_id!r} in {self.path} ({len(self)} images); '
        'the source changed since the cache was built: delete the file to rebuild it'
      ) from None

  def mean_count(self) -> float:
    return float(np.mean([len(b) for b in self._boxes.values()])) if self._boxes else 0.0

  def lookup(self, image_id, max_proposals: int) -> np.ndarray:
    """`tf.numpy_function` body: image id bytes -> float32 [max_proposals, 4], the first boxes padded with -1."""
    key = np.asarray(image_id).item()  # A 0-d array of bytes from tf.numpy_function.
    key = key.decode() if isinstance(key, bytes) else str(key)
    boxes = self.boxes(key)[:max_proposals]
    out = np.full([max_proposals, 4], -1.0, np.float32)
    out[: len(boxes)] = boxes
    return out


def build(
  images: Callable[[], Iterable[Tuple[str, np.ndarray]]],
  spec: str,
  cache_dir: str,
  settings: SelectiveSearchSettings,
  workers: int = 0,
  progress: bool = True,
) -> ProposalStore:
  """The proposals of every image of a source, computing (and caching) those not cached yet.

  Args:
    images: returns an iterable of (image id, uint8 [H, W, 3] RGB image) over the source.
    spec: the source's spec (recorded, and part of the cache's name).
    cache_dir: where the cache file lives.
    settings: the selective-search settings.
    workers: processes computing boxes (0: one per CPU).
    progress: log a line every 100 images computed.

  Raises:
    ProposalError: the cache file records another source or settings; an image id repeats.
    ValueError: bad settings (the field is named).
  """
  settings.validate()
  path = cache_path(cache_dir, spec, settings)
  meta = {'spec': spec, 'settings': settings.to_dict(), 'version': ALGORITHM_VERSION}
  boxes: Dict[str, np.ndarray] = {}
  if os.path.exists(path):
    boxes, stored = _read(path)
    complete = stored.pop(COMPLETE_KEY, False)
    if stored != meta:
      raise ProposalError(f'proposals: {path} was built for {stored}, not {meta}; delete it or use another cache_dir')
    if complete:  # Decoding the whole source only to find nothing missing would cost minutes on VOC.
      return ProposalStore(path, boxes, meta)
  todo = _missing(images(), boxes)
  workers = workers or os.cpu_count() or 1
  tick, computed = time.perf_counter(), 0
  for image_id, result in _compute(todo, settings.to_dict(), workers):
    boxes[image_id] = result
    computed += 1
    if progress and computed % _PROGRESS_EVERY == 0:
      logging.info('proposals: selective search on %d images (%.2f s each) -> %s', computed,
                   (time.perf_counter() - tick) / computed, path)  # fmt: skip
      _write(path, boxes, dict(meta, **{COMPLETE_KEY: False}))  # Long runs keep what they computed if stopped.
  _write(path, boxes, dict(meta, **{COMPLETE_KEY: True}))
  if progress and computed:
    logging.info('proposals: %d images computed in %.0f s, %d cached, %.0f boxes an image -> %s', computed,
                 time.perf_counter() - tick, len(boxes), np.mean([len(b) for b in boxes.values()]), path)  # fmt: skip
  return ProposalStore(path, boxes, meta)


def _missing(
  images: Iterable[Tuple[str, np.ndarray]], cached: Dict[str, np.ndarray]
) -> Iterator[Tuple[str, np.ndarray]]:
  seen = set()
  for image_id, image in images:
    if image_id in seen:
      raise ProposalError(f'proposals: image id {image_id!r} appears twice in the source; ids key the cache')
    seen.add(image_id)
    if image_id not in cached:
      yield image_id, image


def _compute(todo: Iterator[Tuple[str, np.ndarray]], settings: dict, workers: int) -> Iterator[Tuple[str, np.ndarray]]:
  """(id, boxes) as they finish; in this process for one worker, else in spawned processes, a bounded queue ahead."""
  if workers == 1:
    for image_id, image in todo:
      yield image_id, _normalised(image, settings)
    return
  context = multiprocessing.get_context('spawn')  # A forked child would inherit TensorFlow's thread pools.
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    pending: Dict[concurrent.futures.Future, str] = {}
    for image_id, image in todo:
      pending[pool.submit(_normalised, image, settings)] = image_id
      if len(pending) >= 4 * workers:  # Bounded: images are decoded no faster than they are searched.
        yield from _drain(pending, concurrent.futures.FIRST_COMPLETED)
    yield from _drain(pending, concurrent.futures.ALL_COMPLETED)


def _drain(pending: Dict[concurrent.futures.Future, str], when: str) -> Iterator[Tuple[str, np.ndarray]]:
  done, _ = concurrent.futures.wait(list(pending), return_when=when)
  for future in done:
    yield pending.pop(future), future.result()


def settings_from(cfg) -> SelectiveSearchSettings:
  """The selective-search settings of a detection config's `proposal_*` fields."""
  return SelectiveSearchSettings(
    mode=cfg.proposal_mode,
    min_box_side=cfg.proposal_min_box_side,
    max_image_side=cfg.proposal_max_image_side,
    seed=cfg.proposal_seed,
  )


def describe(store: ProposalStore) -> Dict[str, object]:
  """What the results record of the proposals."""
  return {'proposal_cache': store.path, 'proposal_settings': store.meta['settings'],
          'proposals_per_image': round(store.mean_count(), 1)}  # fmt: skip


__all__ = ['ProposalError', 'ProposalStore', 'build', 'cache_path', 'settings_from', 'describe']
