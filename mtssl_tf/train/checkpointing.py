"""Checkpoint writes that trace their tf.function once per run, not once per save.

Why: in TF 2.15, `MultiDeviceSaver.save` (tensorflow/python/checkpoint/functional_saver.py)
wraps its save ops in a *new* `tf.function` (`tf_function_save`) on every eager call when
the saved tensors live on more than one device (`len(self._single_device_savers) > 1`:
the parameter servers plus the coordinator's save counter and object graph under
ParameterServerStrategy). Every save therefore traces the whole save graph again, and
from the fifth save on TensorFlow logs "N out of the last N calls to
MultiDeviceSaver.save.<locals>.tf_function_save triggered tf.function retracing".
Single-device checkpoints (the evaluation loops) take TF's plain path and never retrace.

How: `TracedCheckpoint.write` runs `tf.train.Checkpoint.write` inside one `tf.function`
whose file prefix is a scalar tf.string argument. Inside a function TF builds the same
save ops in graph mode (the sharded write to `<prefix>_temp` and the atomic
`MergeV2Checkpoints`) without the nested per-call function, so a run traces once and
every later save (any prefix, any manager) reuses the trace. The trace is redone only
if the set of checkpointed objects changes (a variable created after the first save).

`tf.train.CheckpointManager` keeps all its bookkeeping (numbering, `max_to_keep`, the
`checkpoint` state file written after the data): `CheckpointManager.save` hands it to
the checkpoint as `CheckpointOptions.experimental_write_callbacks` and calls the
checkpoint's `_write`. That method is private, so overriding it is isolated here;
tests/train/checkpointing_test.py fails if a TF upgrade stops routing manager saves
through it (or stops tracing them once).
"""

from __future__ import annotations

import inspect
import os
from typing import Optional

import tensorflow as tf


class _TracedWriter:
  """The traced write of one checkpoint (a plain object: the checkpoint does not track it)."""

  def __init__(self, checkpoint: TracedCheckpoint):
    self.checkpoint = checkpoint
    self.objects = None  # The checkpointed objects the current trace saves.
    self.function = None
    self.traces = 0

  def write(self, file_prefix: str) -> str:
    objects = tf.train.TrackableView(self.checkpoint).descendants()
    same = self.objects is not None and len(objects) == len(self.objects)
    if not (same and all(a is b for a, b in zip(objects, self.objects))):
      frozen = [type(o).__name__ for o in objects if isinstance(o, tf.train.experimental.PythonState)]
      if frozen:
        raise ValueError(f'TracedCheckpoint cannot save Python state ({frozen}): a trace would freeze its value')
      self.objects = objects
      self.function = tf.function(
        self._traced, input_signature=[tf.TensorSpec([], tf.string, name='file_prefix')], autograph=False
      )
    # The graph-mode save does not create the directory (TF's eager path does).
    tf.io.gfile.makedirs(os.path.dirname(file_prefix) or '.')
    return self.function(tf.constant(file_prefix)).numpy().decode()

  def _traced(self, file_prefix: tf.Tensor) -> tf.Tensor:
    self.traces += 1  # Python side effect: runs once per trace, never per call.
    return self.checkpoint.write(file_prefix)


class TracedCheckpoint(tf.train.Checkpoint):
  """A `tf.train.Checkpoint` whose eager writes (also through a CheckpointManager) reuse one trace.

  Reading, restoring and the checkpoint format are `tf.train.Checkpoint`'s own: a
  checkpoint written by either class restores into the other.
  """

  def __init__(self, **kwargs):
    """Same arguments as `tf.train.Checkpoint` (the objects to save, by name)."""
    super().__init__(**kwargs)
    self._traced_writer = _TracedWriter(self)

  @property
  def traces(self) -> int:
    """How many times the write function was traced (1 after any number of saves of a fixed set of objects)."""
    return self._traced_writer.traces

  def _write(self, file_prefix, options: Optional[tf.train.CheckpointOptions] = None) -> str:
    """Writes through the traced function; runs `options`' write callbacks after the write, as TF does.

    Inside the trace (and for options a trace cannot hold: an I/O device, async writes)
    this is `tf.train.Checkpoint._write`.
    """
    untraceable = options is not None and (options.experimental_io_device or options.enable_async)
    if tf.inside_function() or not tf.executing_eagerly() or untraceable:
      return super()._write(file_prefix, options)
    callbacks = (options.experimental_write_callbacks if options else None) or []
    prefix = file_prefix.numpy().decode() if tf.is_tensor(file_prefix) else os.fspath(file_prefix)
    path = self._traced_writer.write(prefix)
    # After the data and index files exist: CheckpointManager's callback records the new
    # checkpoint in the state file and deletes the oldest, so a crash before this line
    # leaves the previous checkpoint the latest.
    for callback in callbacks:
      if inspect.signature(callback).parameters:
        callback(path)
      else:
        callback()
    return path
