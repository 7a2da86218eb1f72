"""The synthetic world: every dataset the project reads, generated in its real format.

`make_world(root, preset)` writes, under `root`:

* `images/train-*`, `images/validation-*`: Model Garden classification TFRecords;
* `folder/<class>/*.jpg|png`: the same kind of images as a plain folder;

and a `world.json` manifest with the sources to put in configs (`tfrecord:...`).
A world whose manifest matches the requested preset and seed is reused, so binaries
can call `make_world` on every start and pay for generation only once.

Presets name sizes and a class cue (`scenes.CLASS_CUES`): 'tiny', 'small' and 'large' are
the original world, whose classes also differ by colour; 'tiny_shape', 'small_shape' and
'large_shape' have the same sizes, but their classes differ only by shape and texture,
with colour drawn independently of the class (the miniature reproduction uses
'small_shape'). A preset's default folder, ~/.cache/mtssl_tf/world_<preset>, is its own,
and a manifest records the preset and class cue, so no preset reuses another's world.
Further parts (detection as a VOCdevkit folder, depth as an NYU .mat file, videos
with motion masks) are listed explicitly in `_PARTS`; each format's writer lives in
its own module next to the reader it feeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import multiprocessing
import os
import time
from typing import Callable, Dict

import tensorflow as tf
from absl import logging

from mtssl_tf.data.synthetic.classification import write_image_folder, write_image_tfrecords
from mtssl_tf.data.synthetic.depth import write_depth_part
from mtssl_tf.data.synthetic.detection import write_detection_part
from mtssl_tf.data.synthetic.scenes import CLASS_CUES
from mtssl_tf.data.synthetic.video import write_video_part

MANIFEST = 'world.json'


@dataclasses.dataclass(frozen=True)
class Preset:
  """Sizes of one world.

  Attributes:
    train_images: classification training images.
    validation_images: classification validation images.
    folder_images: images in the plain-folder copy.
    image_size: side of classification images.
    num_shards: TFRecord shards per split.
    detection_images: VOCdevkit images (trainval + test).
    depth_images: NYU-style images.
    videos: clips for motion segmentation.
    video_frames: frames per clip.
    class_cue: how classes look in every class-labelled part (classification images,
      detection objects; depth frames are rendered alike): 'colour' or 'shape'
      (`scenes.CLASS_CUES`). Videos carry no classes and do not depend on it.
  """

  train_images: int
  validation_images: int
  folder_images: int
  image_size: int
  num_shards: int
  detection_images: int
  depth_images: int
  videos: int
  video_frames: int
  class_cue: str = 'colour'

  def __post_init__(self):
    if self.class_cue not in CLASS_CUES:
      raise ValueError(f'Preset.class_cue must be one of {CLASS_CUES}, got {self.class_cue!r}')


_SIZES = {
  'tiny': Preset(40, 20, 20, 64, 2, 16, 8, 2, 16),
  'small': Preset(2000, 500, 200, 128, 8, 400, 200, 12, 40),
  'large': Preset(20000, 2000, 1000, 224, 32, 2000, 1449, 60, 60),
}
# The original presets (class colour) under their old names, so existing caches, configs and tests keep their
# world; each also as '<name>_shape' (classes by shape and texture only).
PRESETS = {
  **_SIZES,
  **{f'{name}_shape': dataclasses.replace(sizes, class_cue='shape') for name, sizes in _SIZES.items()},
}


def _image_parts(root: str, preset: Preset, seed: int) -> Dict[str, str]:
  images = os.path.join(root, 'images')
  cue = preset.class_cue
  write_image_tfrecords(
    images, preset.train_images, preset.num_shards, preset.image_size, seed=seed, prefix='train', class_cue=cue
  )
  write_image_tfrecords(
    images, preset.validation_images, max(1, preset.num_shards // 4), preset.image_size, seed=seed + 1,
    prefix='validation', class_cue=cue,
  )  # fmt: skip
  folder = os.path.join(root, 'folder')
  write_image_folder(folder, preset.folder_images, preset.image_size, seed=seed + 2, class_cue=cue)
  return {
    'images_train': f'tfrecord:{images}/train-*',
    'images_validation': f'tfrecord:{images}/validation-*',
    'images_folder': f'folder:{folder}',
  }


# name -> writer(root, preset, seed) -> manifest entries. Written after the image parts.
_PARTS: Dict[str, Callable[[str, Preset, int], Dict[str, str]]] = {
  'detection': write_detection_part,
  'depth': write_depth_part,
  'video': write_video_part,
}


def default_world_dir(preset: str) -> str:
  """~/.cache/mtssl_tf/world_<preset> (or under $XDG_CACHE_HOME): where a preset's world lives by default."""
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'mtssl_tf', f'world_{preset}')


def make_world(root: str, preset: str = 'small', seed: int = 0, force: bool = False) -> Dict[str, object]:
  """Writes (or reuses) a synthetic world and returns its manifest.

  Args:
    root: output directory.
    preset: 'tiny' (tests), 'small' (the default local run) or 'large' (benchmarks), each
      optionally '_shape' (classes by shape and texture; 'small_shape' is the miniature's).
    seed: generation seed.
    force: regenerate even if a matching world exists.

  Returns:
    The manifest: preset, seed, sizes and source specs per part.

  Raises:
    ValueError: unknown preset.
  """
  if preset not in PRESETS:
    raise ValueError(f'unknown synthetic world preset {preset!r}; choose one of {sorted(PRESETS)}')
  with _exclusive(root):
    return _make_world(root, preset, seed, force)


class WorldLockError(RuntimeError):
  """A worker process asked for the world its own parent is writing: it would wait forever."""


@contextlib.contextmanager
def _exclusive(root: str):
  # Concurrent jobs (a grid run with --parallel, tests) may ask for the same world at once:
  # one writes it while the others wait, then find its manifest. Local folders only.
  if '://' in root:
    yield
    return
  os.makedirs(root, exist_ok=True)
  # 'a+': opening must not truncate the holder's pid, which a waiter reads.
  with open(os.path.join(root, '.lock'), 'a+') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip()
      _refuse_deadlock(root, holder)
      logging.info('synthetic world: waiting for process %s, which is writing %s', holder or '?', root)
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      _write_holder(lock, str(os.getpid()))
      yield
    finally:
      _write_holder(lock, '')  # No stale pid for the next waiter to blame.
      fcntl.flock(lock, fcntl.LOCK_UN)


def _write_holder(lock, pid: str) -> None:
  lock.seek(0)
  lock.truncate()
  lock.write(pid)
  lock.flush()


def _refuse_deadlock(root: str, holder: str) -> None:
  # Writing the world spawns worker processes (motion masks), and a spawned worker first re-imports the script
  # that started it. A script that calls make_world at its top level, without `if __name__ == '__main__':`,
  # thus calls it again in the worker, which would wait on the lock its own parent holds while the parent waits
  # for the worker: a silent hang. Python raises for a nested spawn; this is the same mistake one step earlier.
  if multiprocessing.parent_process() is not None and holder == str(os.getppid()):
    raise WorldLockError(
      f'synthetic world: this worker process (pid {os.getpid()}) asked for {root}, which its parent (pid '
      f'{holder}) is writing and waits on this worker to finish: a script that starts the world at its top level '
      "must guard it with `if __name__ == '__main__':` (worker processes are spawned and re-import the script)"
    )


# Every folder the parts write under a world root. When a world is rewritten (another preset, seed or layout in
# the same folder), they are removed first: shard globs such as images/train-* would otherwise also match the
# old world's shards when the shard counts differ.
_PART_FOLDERS = ('images', 'folder', 'detection', 'nyu', 'videos', 'motion')


def _remove_parts(root: str) -> None:
  # Only called where a manifest shows the folder holds a world this module wrote.
  tf.io.gfile.remove(os.path.join(root, MANIFEST))
  for name in _PART_FOLDERS:
    folder = os.path.join(root, name)
    if tf.io.gfile.isdir(folder):
      tf.io.gfile.rmtree(folder)


def _make_world(root: str, preset: str, seed: int, force: bool) -> Dict[str, object]:
  path = os.path.join(root, MANIFEST)
  sizes = PRESETS[preset]
  # layout: bumped when a part's manifest entries or rendering change, so older worlds are rewritten
  # (3: the detection part's segmentation masks and sources; images and boxes as in 2).
  wanted = {
    'preset': preset, 'seed': seed, 'parts': ['images', *sorted(_PARTS)], 'layout': 3, 'class_cue': sizes.class_cue,
  }  # fmt: skip
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      manifest = json.load(f)
    # Manifests from before class cues existed describe 'colour' worlds.
    manifest.setdefault('class_cue', 'colour')
    if not force and all(manifest.get(k) == v for k, v in wanted.items()):
      return manifest
    _remove_parts(root)
  start = time.time()
  sources = _image_parts(root, sizes, seed)
  for name in sorted(_PARTS):
    logging.info('synthetic world: writing %s', name)
    sources.update(_PARTS[name](root, sizes, seed))
  manifest = dict(wanted, sizes=dataclasses.asdict(sizes), sources=sources, seconds=round(time.time() - start, 1))
  # Written last and atomically: an interrupted run leaves no manifest, so it reruns.
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump(manifest, f, indent=2)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return manifest
