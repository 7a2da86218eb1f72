"""Per-closure gradient buffers on the parameter servers: exactly-once aggregation.

ClusterCoordinator runs a closure at least once: when a worker dies, its closure is
run again on another worker, so a closure that *adds* its gradients to an
accumulator may add them twice (measured: 61 increments after 60 steps). Here each
scheduled closure owns a slot, and writes the sum of its steps' gradients (one step,
or K_t under worker accumulation) into that slot with `assign`, which is idempotent:
a re-run overwrites the same slot. The coordinator knows which closures finished
(their results were fetched), which task each ran and how many steps, so it divides
exactly those slots' sum by their steps for one update of that task. No gradient is
applied twice and none is lost.

Memory: every trainable variable gets a buffer of `num_slots` copies, next to the
variable (on its parameter server). The trainer sizes `num_slots` as the closures in
flight plus those that can wait for an aggregate, e.g. 2 x workers + sum(K_t - 1);
with the ResNet-101 block-3 trunk (27.6M parameters, 110 MB) that is ~110 MB per slot,
spread over the parameter servers.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import tensorflow as tf


class GradientSlots(tf.Module):
  """`num_slots` gradient buffers per variable; written by workers, averaged by the coordinator."""

  def __init__(self, variables: Sequence[tf.Variable], num_slots: int, name: str = 'gradient_slots'):
    """Creates the buffers (inside the strategy scope, so they land beside their variables).

    Args:
      variables: every trainable variable any task updates (each listed once).
      num_slots: steps whose gradients can be held at once.
      name: module name.

    Raises:
      ValueError: `num_slots` < 1.
    """
    super().__init__(name=name)
    if num_slots < 1:
      raise ValueError(f'num_slots must be >= 1, got {num_slots}')
    self.num_slots = num_slots
    self.buffers: List[tf.Variable] = []
    for v in variables:
      # Beside its variable (PSS ignores tf.device for placement, not colocation), so
      # averaging and applying stay on one parameter server.
      with tf.distribute.get_strategy().extended.colocate_vars_with(v):
        self.buffers.append(
          tf.Variable(tf.zeros([num_slots, *v.shape], v.dtype), trainable=False, name=f'slots_{len(self.buffers)}')
        )
    self._index = {id(v): i for i, v in enumerate(variables)}

  def buffer(self, variable: tf.Variable) -> tf.Variable:
    """The buffer of `variable`."""
    return self.buffers[self._index[id(variable)]]

  def write(self, slot: tf.Tensor, grads_and_vars: Iterable[Tuple[Optional[tf.Tensor], tf.Variable]]) -> List:
    """Assigns each gradient into `slot` of its variable's buffer (None gradients skipped).

    Returns:
      The assign ops (use them as control dependencies).
    """
    ops = []
    for grad, var in grads_and_vars:
      if grad is None:
        continue
      # scatter_update, not `buffer[slot].assign`: slicing a variable the strategy
      # wrapped gives a plain tensor.
      update = tf.IndexedSlices(tf.cast(grad, var.dtype)[None], tf.reshape(tf.cast(slot, tf.int32), [1]))
      ops.append(self.buffer(var).scatter_update(update))
    return ops

  def mean(self, variable: tf.Variable, slots: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
    """Mean gradient of `variable` over `steps` steps whose gradient sums are held in `slots`.

    Args:
      variable: a variable passed to the constructor.
      slots: int32 [k], k >= 1: the slots to add up (computed on the variable's device).
      steps: how many worker steps those slots hold together (a slot holds the sum of
        the steps of one closure).

    Returns:
      The mean gradient, shaped like `variable`.
    """
    buffer = self.buffer(variable)
    with tf.device(buffer.device):
      return tf.reduce_sum(tf.gather(buffer, slots), axis=0) / tf.cast(steps, buffer.dtype)
