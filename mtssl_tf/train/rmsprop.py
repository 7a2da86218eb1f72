"""RMSProp with separate slots per task (Doersch & Zisserman 2017, §4).

"A separate RMSProp per task": every task keeps its own moving average of squared
gradients (and momentum) for the shared trunk, so a task with large gradients does
not shrink another task's steps; each head has the slots of its one task.

§4 chooses RMSProp because it "re-scales the gradients for each parameter such that
multiplying the loss by a constant factor does not change how quickly the network
learns". The update (`tf.raw_ops.ResourceApplyRMSProp`, epsilon inside the square root,
as TF1's RMSPropOptimizer and Keras 2.15's RMSprop both do; checked against each in
tests) is

    ms  <- decay * ms + (1 - decay) * g^2
    mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
    w   <- w - mom

A loss x c gives gradients x c and ms x c^2, so the step is unchanged only while both
epsilon and the initial mean square are small next to E[g^2]. Two settings decide that:

* epsilon (default 1e-10, TF1 RMSPropOptimizer's default). Relative error of the
  scaling is about epsilon / (2 E[g^2]): 0.5% at a gradient RMS of 1e-4, 5e-5 at
  1e-3. Keras 2.15's default 1e-7 is already 5% off at an RMS of 1e-3 and 3x at 1e-4;
  slim's ImageNet recipe uses 1.0 (tuned for learning rates ~0.05), which for
  gradients far below 1 turns RMSProp into momentum SGD: a loss x100 moves the
  weights x100. Still settable (`train.rmsprop_epsilon`), any positive value.
* the initial mean square (`variant`, default 'keras'):
  - 'keras' (Keras 2.15 RMSprop): 0. Scale invariant from the first step; the first
    steps are larger than later ones (lr / sqrt(1 - decay^t) per coordinate for a
    steady gradient: 3.2 lr at t = 1, 1.6 lr at t = 5, 1.2 lr at t = 10).
  - 'tf1' (TF1 RMSPropOptimizer, the paper's era): 1. ms = decay^t + (1 - decay^t) E[g^2]
    is dominated by the initial 1 for about log(E[g^2]) / log(decay) steps (131 steps
    at a gradient RMS of 1e-3 and decay 0.9; 44 for the same loss x100), during which
    the step is ~lr * g: damped (1000x at RMS 1e-3) and proportional to the loss scale.
    At paper scale (millions of steps) that warm-up is negligible; in the miniature
    (tens of updates per task) it is the whole run, which is why 'keras' is the default.

This is not a Keras optimizer on purpose. Under ParameterServerStrategy a Keras
optimizer's `apply_gradients` cannot run inside `tf.switch_case`/`tf.cond`
(merge_call), which is where a worker running "whatever task its pool serves" needs
it; plain variable ops can. Slots are ordinary variables created next to their
variables (on the parameter servers under the strategy's scope) and tracked by this
`tf.Module`, so `tf.train.Checkpoint` saves and restores them. The local
(`train/local.py`) and distributed (`train/distributed.py`) trainers both build it from the
same `train.*` fields through `mtssl_tf.train.optim.from_config` when `train.optimizer` is
'rmsprop' (the default; 'sgd' is Caffe's SGD for the Noroozi runs, `train/optim.py`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Dict, Iterable, List, Sequence, Tuple

import tensorflow as tf

if TYPE_CHECKING:
  from mtssl_tf.train.experiment import TrainConfig

# Initial mean square of each variant (see the module docstring).
INITIAL_MEAN_SQUARE = {'keras': 0.0, 'tf1': 1.0}
VARIANTS = tuple(INITIAL_MEAN_SQUARE)
DEFAULT_VARIANT = 'keras'
# TF1 RMSPropOptimizer's default (tensorflow/python/training/rmsprop.py): small next to
# the squared gradients of any loss scale, so §4's scale invariance holds.
DEFAULT_EPSILON = 1e-10
# decay and momentum 0.9: the slim ImageNet recipe (tensorflow/models research/slim
# train_image_classifier.py: rmsprop_decay 0.9, rmsprop_momentum 0.9, opt_epsilon 1.0);
# decay 0.9 is also TF1 RMSPropOptimizer's default. The paper states neither.
DEFAULT_DECAY = 0.9
DEFAULT_MOMENTUM = 0.9


def check_hyperparameters(learning_rate: float, decay: float, momentum: float, epsilon: float, variant: str) -> None:
  """Raises ValueError naming the bad hyperparameter (the config adds its key)."""
  if variant not in VARIANTS:
    raise ValueError(f'rmsprop variant must be one of {VARIANTS}, got {variant!r}')
  if not learning_rate > 0:
    raise ValueError(f'rmsprop learning_rate must be positive, got {learning_rate}')
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'rmsprop decay must be in [0, 1), got {decay}')
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'rmsprop momentum must be in [0, 1), got {momentum}')
  if not epsilon > 0:
    raise ValueError(f'rmsprop epsilon must be positive (it keeps sqrt(ms + epsilon) above 0), got {epsilon}')


def _slot_name(variable: tf.Variable) -> str:
  return re.sub(r'[^A-Za-z0-9_]', '_', variable.name.split(':')[0])


class PerTaskRMSProp(tf.Module):
  """RMSProp whose slots are kept per (task, variable)."""

  def __init__(
    self,
    task_variables: Dict[str, Sequence[tf.Variable]],
    learning_rate: float = 1e-3,
    decay: float = DEFAULT_DECAY,
    momentum: float = DEFAULT_MOMENTUM,
    epsilon: float = DEFAULT_EPSILON,
    variant: str = DEFAULT_VARIANT,
    name: str = 'per_task_rmsprop',
  ):
    """Creates every slot (call inside the strategy scope so they land on the PS).

    Args:
      task_variables: task name -> the variables that task updates (trunk + its head).
      learning_rate: step size.
      decay: moving-average decay of squared gradients (rho).
      momentum: momentum coefficient.
      epsilon: added to the mean square inside the square root; must be small next to
        the squared gradients for scale invariance (see the module docstring).
      variant: initial mean square, 'keras' (0) or 'tf1' (1) (see the module docstring).
      name: module name.

    Raises:
      ValueError: a hyperparameter out of range or an unknown variant.
    """
    super().__init__(name=name)
    check_hyperparameters(learning_rate, decay, momentum, epsilon, variant)
    self.variant = variant
    self.learning_rate = learning_rate
    self.decay = decay
    self.momentum = momentum
    self.epsilon = epsilon
    init = INITIAL_MEAN_SQUARE[variant]
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


def from_config(
  train: TrainConfig, task_variables: Dict[str, Sequence[tf.Variable]], name: str = 'per_task_rmsprop'
) -> PerTaskRMSProp:
  """The per-task RMSProp of `train.learning_rate` and `train.rmsprop_*` (local and distributed trainers).

  Args:
    train: the experiment's `train` config.
    task_variables: task name -> the variables that task updates.
    name: module name.

  Returns:
    The optimizer, its slots created (call inside the strategy scope for the PS).
  """
  return PerTaskRMSProp(
    task_variables,
    learning_rate=train.learning_rate,
    decay=train.rmsprop_decay,
    momentum=train.rmsprop_momentum,
    epsilon=train.rmsprop_epsilon,
    variant=train.rmsprop_variant,
    name=name,
  )
