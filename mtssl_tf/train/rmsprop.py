"""RMSProp with separate slots per task (Doersch & Zisserman 2017, §4).

"A separate RMSProp per task": every task keeps its own moving average of squared
gradients (and momentum) for the shared trunk, so a task with large gradients does
not shrink another task's steps; each head has the slots of its one task.

This is not a Keras optimizer on purpose. Under ParameterServerStrategy a Keras
optimizer's `apply_gradients` cannot run inside `tf.switch_case`/`tf.cond`
(merge_call), which is where a worker running "whatever task its pool serves" needs
it; plain variable ops can. Slots are ordinary variables created next to their
variables (on the parameter servers under the strategy's scope) and tracked by this
`tf.Module`, so `tf.train.Checkpoint` saves and restores them.

Both variants apply `tf.raw_ops.ResourceApplyRMSProp` (epsilon inside the square
root, as TF1's RMSPropOptimizer and Keras 2.15's RMSprop both do; checked against
each in tests). They differ in the initial mean square (`variant`):
* 'tf1' (TF1's RMSPropOptimizer, the paper's era): 1, so early steps are damped;
* 'keras' (tf.keras RMSprop in this stack): 0, so the first steps are large (about
  lr / sqrt(1 - decay) per coordinate).
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple

import tensorflow as tf

VARIANTS = ('tf1', 'keras')


def _slot_name(variable: tf.Variable) -> str:
  return re.sub(r'[^A-Za-z0-9_]', '_', variable.name.split(':')[0])


class PerTaskRMSProp(tf.Module):
  """RMSProp whose slots are kept per (task, variable)."""

  def __init__(
    self,
    task_variables: Dict[str, Sequence[tf.Variable]],
    learning_rate: float = 1e-3,
    decay: float = 0.9,
    momentum: float = 0.9,
    epsilon: float = 1.0,
    variant: str = 'tf1',
    name: str = 'per_task_rmsprop',
  ):
    """Creates every slot (call inside the strategy scope so they land on the PS).

    Args:
      task_variables: task name -> the variables that task updates (trunk + its head).
      learning_rate: step size.
      decay: moving-average decay of squared gradients (rho).
      momentum: momentum coefficient.
      epsilon: numerical floor (TF1 default 1e-10; the slim/Inception recipes use 1.0).
      variant: 'tf1' or 'keras' (see the module docstring).
      name: module name.

    Raises:
      ValueError: unknown variant.
    """
    super().__init__(name=name)
    if variant not in VARIANTS:
      raise ValueError(f'rmsprop variant must be one of {VARIANTS}, got {variant!r}')
    self.variant = variant
    self.learning_rate = learning_rate
    self.decay = decay
    self.momentum = momentum
    self.epsilon = epsilon
    init = 1.0 if variant == 'tf1' else 0.0
    self.mean_square: Dict[str, List[tf.Variable]] = {}
    self.moment: Dict[str, List[tf.Variable]] = {}
    self.iterations: Dict[str, tf.Variable] = {}
    for task, variables in task_variables.items():
      ms, mom = [], []
      for v in variables:
        # ResourceApplyRMSProp needs a variable and its slots on one device; with several
        # parameter servers, round-robin placement would otherwise split them.
        with tf.distribute.get_strategy().extended.colocate_vars_with(v):
          ms.append(tf.Variable(tf.fill(v.shape, init), trainable=False, name=f'{task}/{_slot_name(v)}/ms'))
          mom.append(tf.Variable(tf.zeros(v.shape), trainable=False, name=f'{task}/{_slot_name(v)}/mom'))
      self.mean_square[task] = ms
      self.moment[task] = mom
      self.iterations[task] = tf.Variable(0, dtype=tf.int64, trainable=False, name=f'{task}/iterations')
    self._index = {task: {id(v): i for i, v in enumerate(vs)} for task, vs in task_variables.items()}

  def slots(self, task: str, variable: tf.Variable) -> Tuple[tf.Variable, tf.Variable]:
    """(mean square, momentum) slots of `variable` for `task`."""
    i = self._index[task][id(variable)]
    return self.mean_square[task][i], self.moment[task][i]

  def apply(self, task: str, grads_and_vars: Iterable[Tuple[tf.Tensor, tf.Variable]]) -> tf.Operation:
    """Applies one update of `task` (gradients that are None are skipped)."""
    updates = []
    for grad, var in grads_and_vars:
      if grad is None:
        continue
      ms, mom = self.slots(task, var)
      grad = tf.convert_to_tensor(grad, var.dtype)
      updates.append(
        tf.raw_ops.ResourceApplyRMSProp(
          var=var.handle,
          ms=ms.handle,
          mom=mom.handle,
          lr=tf.cast(self.learning_rate, var.dtype),
          rho=tf.cast(self.decay, var.dtype),
          momentum=tf.cast(self.momentum, var.dtype),
          epsilon=tf.cast(self.epsilon, var.dtype),
          grad=grad,
          use_locking=True,
        )  # fmt: skip
      )
    with tf.control_dependencies(updates):
      return self.iterations[task].assign_add(1)
