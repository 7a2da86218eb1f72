"""Read a closure's weights from the parameter servers once, not once per step.

Under worker accumulation (`train.accumulate: worker`) a closure runs its task's K_t
steps on one worker. Reading the trunk from the parameter servers at every step costs
a whole-model transfer per step (110 MB for the ResNet-101 block-3 trunk), which
benchmarks/ps_overhead.py measured as most of what remains of the strategy's overhead
once gradients are written once per closure. Here the closure reads its trainable
variables once into tensors on the worker, and every step's forward pass uses those
tensors: the K_t gradients are then taken at one set of weights, as for one batch K_t
times larger, which is what their average approximates anyway. Batch-norm moving
statistics (not trainable) are still read and updated at every step.

How: ParameterServerStrategy wraps each variable it creates in a `CachingVariable`,
whose reads return a cached tensor inside TF's `cache_variable_reads` scope. Inside
`read_from`, the trainable variables' caches are set to the given tensors, so the
layers read them, and every other variable's cache is emptied, so it gets a fresh read
in the graph being traced. (TF keeps the scope count per thread and `strategy.run`
traces in a thread of its own, so its own bookkeeping could hand a variable a cache
from another graph; setting both caches explicitly avoids that.)
The gradient tape does not see those reads as variable reads, so gradients are taken
with respect to the returned tensors (`MultiTaskModel.compute_gradients(sources=...)`).
This relies on two private attributes of TF 2.15's `CachingVariable`; the pinned
version is tested (tests/train/snapshot_test.py), and `check_supported` fails loudly
before training if a variable is not such a wrapper.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence

import tensorflow as tf
from tensorflow.python.distribute import distribute_utils, ps_values


def _caching_variable(variable) -> ps_values.CachingVariable:
  # Mixed precision wraps the strategy's variable once more (Keras AutoCastVariable).
  v = variable
  while not isinstance(v, ps_values.CachingVariable) and hasattr(v, '_variable'):
    v = v._variable  # noqa: SLF001
  if not isinstance(v, ps_values.CachingVariable):
    raise TypeError(
      f'variable {variable.name!r} is a {type(variable).__name__}, not the CachingVariable that '
      'ParameterServerStrategy creates; weight snapshots (train.accumulate: worker) need it'
    )
  return v


def check_supported(variables: Sequence[tf.Variable]) -> None:
  """Raises TypeError unless every variable can be read from a snapshot."""
  for v in variables:
    _caching_variable(v)


@contextlib.contextmanager
def read_from(
  variables: Sequence[tf.Variable], values: Sequence[tf.Tensor], others: Sequence[tf.Variable] = ()
) -> Iterator[List[tf.Tensor]]:
  """Inside, reads of `variables` return `values` (in the graph being traced).

  Args:
    variables: trainable variables created under ParameterServerStrategy.
    values: one tensor per variable (e.g. read once, outside a loop).
    others: every other variable the code inside may read (batch-norm statistics,
      other heads): each gets a fresh read.

  Yields:
    The tensors the reads return, one per variable: watch them with the gradient tape
    and differentiate with respect to them.
  """
  with distribute_utils.cache_variable_reads():
    scope = distribute_utils.caching_scope_local.new_cache_scope_count
    tensors = []
    for variable, value in zip(variables, values):
      cached = _caching_variable(variable)
      tensor = tf.identity(value)
      cached._cache = tensor  # noqa: SLF001
      cached._current_new_cache_scope_count = scope  # noqa: SLF001
      tensors.append(tensor)
    for variable in others:
      cached = _caching_variable(variable)
      cached._cache = None  # noqa: SLF001
      cached._current_new_cache_scope_count = scope  # noqa: SLF001
    yield tensors
