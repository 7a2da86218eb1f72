"""tf.data building blocks shared by every reader: sharding, robust mapping, skip counts.

All of it is pure TF, so datasets built here run on ParameterServerStrategy workers
(py_function and from_generator would silently run on the coordinator instead).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import tensorflow as tf
from absl import logging

SKIPPED_KEY = 'num_skipped'
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
) -> tf.data.Dataset:
  """Maps `fn` over dict elements, dropping (and counting) elements where it fails.

  Every output element gets `SKIPPED_KEY`: the number of input elements dropped so
  far on this pipeline (int64), which the trainer logs and writes to TensorBoard.
  The map keeps element order (it is still parallel) so that the count is exact.

  Args:
    dataset: dataset of dicts.
    fn: dict -> dict; may raise at run time (e.g. undecodable image bytes).
    num_parallel_calls: parallelism of the map.

  Returns:
    Dataset of `fn`'s dicts plus `SKIPPED_KEY`.
  """
  ds = dataset.enumerate()
  ds = ds.map(lambda i, x: (i, fn(x)), num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.ignore_errors()

  def count(kept, item):
    index, element = item
    kept += 1
    element = dict(element)
    element[SKIPPED_KEY] = index + 1 - kept
    return kept, element

  return ds.scan(tf.constant(0, tf.int64), count)


class SkipCounter:
  """Tracks the skipped-element count seen in batches and logs when it grows."""

  def __init__(self, name: str):
    """Creates a counter for the pipeline called `name` (used in log lines)."""
    self.name = name
    self.count = 0

  def update(self, num_skipped) -> int:
    """Feeds a batch's `SKIPPED_KEY` values; returns the running count."""
    value = int(tf.reduce_max(num_skipped)) if tf.size(num_skipped) > 0 else 0
    if value > self.count:
      logging.warning('%s: %d undecodable elements skipped so far', self.name, value)
      self.count = value
    return self.count
