"""Reading one part of a pre-training model (`model/<part>`) out of a checkpoint."""

from __future__ import annotations

import tensorflow as tf


def read_model_part(prefix: str, **part: tf.Module) -> None:
  """Fills `part` (one keyword: its name under `model/`, e.g. trunk=...) from checkpoint `prefix`.

  Pre-training checkpoints hold `MultiTaskModel` as `model`, so its trunk is at
  `model/trunk` and a supervised baseline's block 4 at `model/block4`. Everything else in
  the checkpoint (heads, optimizer slots, counters) is ignored; every variable of the
  part must be found, with its shape.

  Raises:
    AssertionError, ValueError, tf.errors.OpError: the part is missing or does not fit
      (callers name the source and the expected shape in their own error).
  """
  if len(part) != 1:
    raise TypeError(f'read_model_part takes one part, got {sorted(part)}')
  status = tf.train.Checkpoint(model=tf.train.Checkpoint(**part)).read(prefix)
  status.expect_partial()
  status.assert_existing_objects_matched()
