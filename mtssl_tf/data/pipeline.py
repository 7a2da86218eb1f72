"""tf.data building blocks shared by every reader: sharding, robust mapping, skip counts.

All of it is pure TF, so datasets built here run on ParameterServerStrategy workers
(py_function and from_generator would silently run on the coordinator instead).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from absl import logging

SKIPPED_KEY = 'num_skipped'
SKIPPED_SOURCES_KEY = 'skipped_sources'
# How many of the most recent skipped elements each batch names (the count is exact).
MAX_NAMED_SKIPS = 4
AUTOTUNE = tf.data.AUTOTUNE


def file_dataset(
  files: Sequence[str],
  reader: Callable[[tf.Tensor], tf.data.Dataset],
  shard_index: int = 0,
  num_shards: int = 1,
  shuffle_files: bool = False,
  seed: Optional[int] = None,
  cycle_length: int = 8,
  deterministic: bool = True,
) -> tf.data.Dataset:
  """Interleaves records of many files, sharded across workers by file when possible.

  Args:
    files: file paths.
    reader: file path tensor -> dataset of its records.
    shard_index: this worker's index (e.g. from
      `tf.distribute.coordinator.experimental_get_current_worker_index()`).
    num_shards: number of workers reading this source.
    shuffle_files: shuffle the file order (seeded).
    seed: shuffle seed; with `deterministic` the whole order is reproducible.
    cycle_length: files read concurrently.
    deterministic: keep a reproducible element order (slightly slower).

  Returns:
    A dataset of records. A file whose records become unreadable part-way (a
    truncated shard) contributes its readable records, with a logged warning.
  """
  ds = tf.data.Dataset.from_tensor_slices(list(files))
  by_file = len(files) >= num_shards
  if by_file and num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  if shuffle_files:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

  def read(path):
    # A truncated shard raises DataLossError at its end; keep what was readable.
    return reader(path).ignore_errors(log_warning=True)

  ds = ds.interleave(
    read,
    cycle_length=min(cycle_length, max(1, len(files))),
    num_parallel_calls=AUTOTUNE,
    deterministic=deterministic,
  )
  if not by_file and num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  return ds


def robust_map(
  dataset: tf.data.Dataset,
  fn: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]],
  num_parallel_calls=AUTOTUNE,
  describe: Union[None, Callable[..., tf.Tensor], Sequence[Callable[..., tf.Tensor]]] = None,
) -> tf.data.Dataset:
  """Maps `fn` over elements, dropping (counting and naming) elements where it fails.

  Every output element gets `SKIPPED_KEY`: the number of input elements dropped so
  far on this pipeline (int64), and `SKIPPED_SOURCES_KEY`: string [MAX_NAMED_SKIPS],
  'source: reason' of the most recently dropped ones ('' where fewer), which the
  trainers log once each, print and write to the run's results. The map keeps element
  order (it is still parallel) so that the count is exact.

  `fn` runs in one parallel, order-keeping `map` whose errors are ignored; a dropped
  element shows as a gap in the element indices, so the count needs no per-element
  bookkeeping. Each element carries the `MAX_NAMED_SKIPS` raw elements before it (a
  sliding window, references only), from which a gap's newest members are described;
  that per-element dataset work runs only where a gap is found. Measured on the small
  world's JPEG reader (one core, per CPU second): its cost over a plain `map` of the same
  records fell from 0.7-0.85x to ~0.25x of a decode+resize, against trying each element
  in a dataset of its own (`ignore_errors` on one element). Raw elements of unknown rank use that older path.
  Errors raised upstream of the map are ignored too (readers already skip a truncated
  file's tail, `file_dataset`).

  Args:
    dataset: dataset of elements (dicts or tuples, passed to `fn` as one argument).
    fn: element -> dict; may raise at run time (e.g. undecodable image bytes).
    num_parallel_calls: parallelism of the map.
    describe: element -> scalar string naming a failed element and why (e.g. its path
      and `decode.diagnose` of its bytes), or several tried in order: each may itself
      fail, and after the last 'element <i>' is used.

  Returns:
    Dataset of `fn`'s dicts plus `SKIPPED_KEY` and `SKIPPED_SOURCES_KEY`.
  """
  describers = [] if describe is None else [describe] if callable(describe) else list(describe)
  ds = dataset.enumerate()
  spec = ds.map(lambda i, x: fn(x)).element_spec
  if any(s.shape.rank is None for s in tf.nest.flatten(spec)):
    raise ValueError('robust_map: fn must return tensors of known rank')
  raw_specs = tf.nest.flatten(dataset.element_spec)
  if not all(isinstance(s, tf.TensorSpec) and s.shape.rank is not None for s in raw_specs):
    return _robust_map_per_element(ds, fn, spec, num_parallel_calls, describers)

  def name(index, element):
    """'source: reason' of a failed element: the first describer that does not raise."""
    one = tf.data.Dataset.from_tensors((element,))  # A 1-tuple: map passes the element as one argument.
    candidates = tf.data.Dataset.from_tensors(tf.strings.format('element {}', index))
    for describer in reversed(describers):
      candidates = one.map(lambda x, d=describer: d(x)).ignore_errors().concatenate(candidates)
    return candidates.take(1).get_single_element()

  # Each element with the raw elements before it (oldest first; blanks before the first).
  blank = tf.nest.map_structure(lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype), dataset.element_spec)

  def remember(window, item):
    index, element = item
    return window[1:] + (element,), (index, element, window)

  ds = ds.scan((blank,) * MAX_NAMED_SKIPS, remember)
  ds = ds.map(
    lambda index, element, window: (index, window, fn(element)),
    num_parallel_calls=num_parallel_calls,
    deterministic=True,
  ).ignore_errors()

  def count(state, item):
    last, skipped, recent = state
    index, window, out = item
    gap = index - last - 1

    def named_gap():
      # window[j] is element index - MAX_NAMED_SKIPS + j: skipped when it comes after `last`.
      names = []
      for j, element in enumerate(window):
        position = index - MAX_NAMED_SKIPS + j
        names.append(tf.cond(position > last, lambda p=position, e=element: name(p, e), lambda: tf.constant('')))
      is_new = tf.range(MAX_NAMED_SKIPS, dtype=tf.int64) >= MAX_NAMED_SKIPS - gap
      return tf.boolean_mask(tf.concat([recent, names], 0), tf.concat([tf.fill([MAX_NAMED_SKIPS], True), is_new], 0))[
        -MAX_NAMED_SKIPS:
      ]

    recent = tf.cond(gap > 0, named_gap, lambda: recent)
    recent.set_shape([MAX_NAMED_SKIPS])
    skipped = skipped + gap
    element = dict(out)
    element[SKIPPED_KEY] = skipped
    element[SKIPPED_SOURCES_KEY] = recent
    return (index, skipped, recent), element

  initial = (tf.constant(-1, tf.int64), tf.constant(0, tf.int64), tf.fill([MAX_NAMED_SKIPS], ''))
  return ds.scan(initial, count)


def _robust_map_per_element(ds, fn, spec, num_parallel_calls, describers) -> tf.data.Dataset:
  """`robust_map` trying each element in a dataset of its own (raw elements of unknown rank)."""
  # A stand-in for a failed element's output: never emitted, only shaped like one.
  stand_in = tf.nest.map_structure(lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype), spec)

  def attempt(index, element):
    one = tf.data.Dataset.from_tensors((element,))  # A 1-tuple: map passes the element as one argument.
    # (output, failed, 'source: reason'); the first candidate that does not raise wins.
    ok = one.map(lambda x: (fn(x), tf.constant(False), tf.constant(''))).ignore_errors()
    fallback = tf.data.Dataset.from_tensors((stand_in, tf.constant(True), tf.strings.format('element {}', index)))
    candidates = ok
    for name in describers:
      named = one.map(lambda x, name=name: (stand_in, tf.constant(True), name(x))).ignore_errors()
      candidates = candidates.concatenate(named)
    return candidates.concatenate(fallback).take(1)

  cycle = 8 if num_parallel_calls == AUTOTUNE else max(1, int(num_parallel_calls))
  ds = ds.interleave(
    attempt, cycle_length=cycle, block_length=1, num_parallel_calls=num_parallel_calls, deterministic=True
  )

  def count(state, item):
    skipped, recent = state
    out, failed, failure = item
    skipped = tf.where(failed, skipped + 1, skipped)
    recent = tf.cond(failed, lambda: tf.concat([recent[1:], [failure]], 0), lambda: recent)
    element = dict(out)
    element[SKIPPED_KEY] = skipped
    element[SKIPPED_SOURCES_KEY] = recent
    return (skipped, recent), (failed, element)

  initial = (tf.constant(0, tf.int64), tf.fill([MAX_NAMED_SKIPS], ''))
  ds = ds.scan(initial, count)

  def kept(failed, element):
    del element
    return tf.logical_not(failed)

  def output(failed, element):
    del failed
    return element

  return ds.filter(kept).map(output)


# Skipped elements logged one by one (after that only the count grows) and listed in results.
MAX_LOGGED_SKIPS = 10
MAX_LISTED_SKIPS = 100


class SkipCounter:
  """Tracks a pipeline's skipped elements from its batches: the count and their names.

  The count comes from `SKIPPED_KEY` (exact); names from `SKIPPED_SOURCES_KEY` (the
  most recent few per batch, so with many skips between two batches some go unnamed).
  The first `MAX_LOGGED_SKIPS` names are logged once each as they appear. Several
  pipelines of one source (a task's workers, each with its own running count) are told
  apart by `pipeline_id`: the total is the sum of each pipeline's latest count.
  """

  def __init__(self, name: str):
    """Creates a counter for the pipeline called `name` (used in log lines)."""
    self.name = name
    self.count = 0
    self.sources: List[str] = []
    self._seen = set()
    self._per_pipeline: Dict[int, int] = {}

  def update(self, num_skipped, sources=None, pipeline_id: int = 0) -> int:
    """Feeds a batch's `SKIPPED_KEY` (and `SKIPPED_SOURCES_KEY`) values; returns the running count."""
    num_skipped = np.asarray(num_skipped)
    value = int(num_skipped.max()) if num_skipped.size else 0
    if sources is not None:
      self.add_sources(sources)
    # A lagging batch of the same pipeline never lowers its count.
    self._per_pipeline[pipeline_id] = max(self._per_pipeline.get(pipeline_id, 0), value)
    total = sum(self._per_pipeline.values())
    if total > self.count:
      logging.warning('%s: %d undecodable elements skipped so far', self.name, total)
      self.count = total
    return self.count

  def add_sources(self, sources) -> None:
    """Records (and logs the first few of) 'source: reason' strings, each once."""
    for source in np.asarray(sources).reshape(-1):
      text = source.decode('utf-8', 'replace') if isinstance(source, bytes) else str(source)
      if not text or text in self._seen or len(self._seen) >= MAX_LISTED_SKIPS:
        continue
      self._seen.add(text)
      self.sources.append(text)
      if len(self.sources) <= MAX_LOGGED_SKIPS:
        logging.warning('%s: skipped %s', self.name, text)

  def result(self) -> Dict[str, object]:
    """{'count', 'sources'} for a run's results file."""
    return {'count': self.count, 'sources': list(self.sources)}
