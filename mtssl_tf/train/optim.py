"""The pre-training optimizer: per-task RMSProp (Doersch §4) or per-task Caffe SGD (Noroozi's solvers).

`from_config` is the one factory both trainers (`train/local.py`, `train/distributed.py`)
call; `train.optimizer` picks the update:

* 'rmsprop' (default): `mtssl_tf.train.rmsprop.PerTaskRMSProp`, Doersch & Zisserman §4's
  "separate RMSProp per task".
* 'sgd': `PerTaskSGD` below, momentum SGD as Caffe's SGDSolver applies it, which is how
  the authors of the Noroozi et al. 2018 pre-training runs trained:
  - MehdiNoroozi/JigsawPuzzleSolver `solver_cfn_jps.prototxt` (the repository's only
    pre-training solver; its Jigsaw++ net `train_val_cfn_jps++.prototxt` ships without one):
    base_lr 0.01, lr_policy "step", gamma 0.1, stepsize 100000, max_iter 350000,
    momentum 0.9, weight_decay 0.0005; every conv/fc layer's params are
    {lr_mult 1, decay_mult 1} for weights and {lr_mult 2, decay_mult 0} for biases.
  - cdoersch/deepcontext `train.py` + `solver_mko.prototxt` (relative position, "Context"):
    SGD, base_lr 1e-5, lr_policy "fixed", momentum 0 (the template's default, not passed),
    weight_decay 0, on a loss summed over the pairs (SoftmaxWithLoss normalization NONE).

Caffe's SGDSolver (src/caffe/solvers/sgd_solver.cpp), per parameter and iteration, with
rate = base_lr * gamma ^ floor(iter / stepsize) ('step'; 'fixed': base_lr), iter counting
the updates done before this one:

    g <- g + weight_decay * decay_mult * w          (Regularize, L2)
    v <- momentum * v + rate * lr_mult * g          (ComputeUpdateValue)
    w <- w - v                                       (Update)

The learning rate sits inside the history, so a step of the schedule takes effect
gradually (TF's `ResourceApplyMomentum` and Keras 2's SGD put it outside). The update runs
as `tf.raw_ops.ResourceApplyKerasMomentum` (accum <- momentum * accum - lr * g;
w <- w + accum), i.e. exactly Caffe's with accum = -v: the slot stores minus Caffe's history.

Slots and schedule are per task, like the RMSProp class: every task keeps its own history
for the shared trunk and its own iteration counter (a single-task Noroozi run is exactly
Caffe's solver; with several tasks each task's schedule counts its own updates). The same
design reasons hold (rmsprop.py): plain variable ops and a fused raw op, not a Keras
optimizer, so `apply` runs inside `tf.switch_case` under ParameterServerStrategy; slots
are colocated with their variables and tracked by this `tf.Module` for checkpoints.

Which variables are biases (`bias_lr_mult`, `bias_decay_mult`): those whose last name
component starts with 'bias' (Keras Conv2D / Dense biases), the prototxt's second param
of each layer. Every other variable takes Caffe's default multipliers {1, 1}, including
BatchNorm's gamma/beta, which the authors' nets do not have (our small-world option).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Dict, Iterable, List, Sequence, Tuple, Union

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.train import rmsprop

if TYPE_CHECKING:
  from mtssl_tf.train.experiment import TrainConfig

OPTIMIZERS = ('rmsprop', 'sgd')
DEFAULT_OPTIMIZER = 'rmsprop'  # Doersch & Zisserman §4.
LR_POLICIES = ('step', 'fixed')  # Caffe's lr_policy values used by the authors' solvers.
# MehdiNoroozi/JigsawPuzzleSolver solver_cfn_jps.prototxt (the base_lr 0.01 is `train.learning_rate`).
DEFAULT_MOMENTUM = 0.9
DEFAULT_WEIGHT_DECAY = 5e-4
DEFAULT_LR_POLICY = 'step'
DEFAULT_LR_GAMMA = 0.1
DEFAULT_LR_STEPSIZE = 100_000
# train_val_cfn_jps++.prototxt: every layer's bias param {lr_mult: 2, decay_mult: 0}.
DEFAULT_BIAS_LR_MULT = 2.0
DEFAULT_BIAS_DECAY_MULT = 0.0


def caffe_rate(base_lr: float, policy: str, gamma: float, stepsize: int, iteration: int) -> float:
  """Caffe's `SGDSolver::GetLearningRate` for 'fixed' and 'step' (iteration = updates done before this one)."""
  if policy == 'fixed':
    return base_lr
  return base_lr * gamma ** (iteration // stepsize)


def is_bias(variable: tf.Variable) -> bool:
  """Whether `variable` is a layer's bias (Keras names it '.../bias:0')."""
  return variable.name.split(':')[0].split('/')[-1].startswith('bias')


def check_sgd(
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  lr_policy: str,
  lr_gamma: float,
  lr_stepsize: int,
  bias_lr_mult: float,
  bias_decay_mult: float,
  prefix: str = 'sgd ',
  learning_rate_key: str = 'sgd learning_rate',
) -> None:
  """Raises ConfigError naming the bad setting (`prefix` + its name: 'train.sgd_momentum', ...)."""
  if not learning_rate > 0:
    raise ConfigError(f'{learning_rate_key}: must be positive, got {learning_rate}')
  if not 0.0 <= momentum < 1.0:
    raise ConfigError(f'{prefix}momentum: must be in [0, 1), got {momentum}')
  if weight_decay < 0:
    raise ConfigError(f'{prefix}weight_decay: must be >= 0, got {weight_decay}')
  if lr_policy not in LR_POLICIES:
    raise ConfigError(f'{prefix}lr_policy: must be one of {LR_POLICIES} (Caffe lr_policy), got {lr_policy!r}')
  if not 0.0 < lr_gamma <= 1.0:
    raise ConfigError(f'{prefix}lr_gamma: the step factor must be in (0, 1], got {lr_gamma}')
  if lr_stepsize < 1:
    raise ConfigError(f'{prefix}lr_stepsize: must be a positive number of updates, got {lr_stepsize}')
  if bias_lr_mult < 0 or bias_decay_mult < 0:
    raise ConfigError(
      f'{prefix}bias_lr_mult / {prefix}bias_decay_mult: must be >= 0, got {bias_lr_mult}, {bias_decay_mult}'
    )


def check_config(train: TrainConfig) -> None:
  """Validates `train.optimizer` and the `train.sgd_*` fields; errors name the key."""
  if train.optimizer not in OPTIMIZERS:
    raise ConfigError(f'train.optimizer: must be one of {OPTIMIZERS}, got {train.optimizer!r}')
  check_sgd(
    train.learning_rate, train.sgd_momentum, train.sgd_weight_decay, train.sgd_lr_policy, train.sgd_lr_gamma,
    train.sgd_lr_stepsize, train.sgd_bias_lr_mult, train.sgd_bias_decay_mult, prefix='train.sgd_',
    learning_rate_key='train.learning_rate',
  )  # fmt: skip


def _slot_name(variable: tf.Variable) -> str:
  return re.sub(r'[^A-Za-z0-9_]', '_', variable.name.split(':')[0])


class PerTaskSGD(tf.Module):
  """Caffe's momentum SGD whose history and schedule are kept per task (module docstring)."""

  def __init__(
    self,
    task_variables: Dict[str, Sequence[tf.Variable]],
    learning_rate: float = 0.01,
    momentum: float = DEFAULT_MOMENTUM,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    lr_policy: str = DEFAULT_LR_POLICY,
    lr_gamma: float = DEFAULT_LR_GAMMA,
    lr_stepsize: int = DEFAULT_LR_STEPSIZE,
    bias_lr_mult: float = DEFAULT_BIAS_LR_MULT,
    bias_decay_mult: float = DEFAULT_BIAS_DECAY_MULT,
    name: str = 'per_task_sgd',
  ):
    """Creates every slot (call inside the strategy scope so they land on the PS).

    Args:
      task_variables: task name -> the variables that task updates (trunk + its head).
      learning_rate: Caffe's base_lr (default: JigsawPuzzleSolver's 0.01).
      momentum: Caffe's momentum.
      weight_decay: Caffe's weight_decay (L2, added to the gradient).
      lr_policy: 'step' (rate x lr_gamma every lr_stepsize updates of the task) or 'fixed'.
      lr_gamma: Caffe's gamma.
      lr_stepsize: Caffe's stepsize, in updates of the task.
      bias_lr_mult: lr_mult of biases (weights: 1).
      bias_decay_mult: decay_mult of biases (weights: 1).
      name: module name.

    Raises:
      ConfigError (a ValueError): a setting out of range, named.
    """
    super().__init__(name=name)
    check_sgd(learning_rate, momentum, weight_decay, lr_policy, lr_gamma, lr_stepsize, bias_lr_mult, bias_decay_mult)
    self.learning_rate = learning_rate
    self.momentum = momentum
    self.weight_decay = weight_decay
    self.lr_policy = lr_policy
    self.lr_gamma = lr_gamma
    self.lr_stepsize = lr_stepsize
    self.bias_lr_mult = bias_lr_mult
    self.bias_decay_mult = bias_decay_mult
    self.history: Dict[str, List[tf.Variable]] = {}
    self.iterations: Dict[str, tf.Variable] = {}
    for task, variables in task_variables.items():
      slots = []
      for v in variables:
        # The fused apply needs a variable and its slot on one device (several PS: round-robin would split them).
        with tf.distribute.get_strategy().extended.colocate_vars_with(v):
          slots.append(tf.Variable(tf.zeros(v.shape), trainable=False, name=f'{task}/{_slot_name(v)}/history'))
      self.history[task] = slots
      self.iterations[task] = tf.Variable(0, dtype=tf.int64, trainable=False, name=f'{task}/iterations')
    self._index = {task: {id(v): i for i, v in enumerate(vs)} for task, vs in task_variables.items()}

  def slot(self, task: str, variable: tf.Variable) -> tf.Variable:
    """The history slot of `variable` for `task` (minus Caffe's history, see the module docstring)."""
    return self.history[task][self._index[task][id(variable)]]

  def rate(self, task: str) -> tf.Tensor:
    """The task's current rate (float64): Caffe's `GetLearningRate` at its update count."""
    if self.lr_policy == 'fixed':
      return tf.constant(self.learning_rate, tf.float64)
    # Caffe computes the rate in double, then uses it as the blob's type.
    steps = tf.cast(self.iterations[task] // self.lr_stepsize, tf.float64)
    return self.learning_rate * tf.pow(tf.constant(self.lr_gamma, tf.float64), steps)

  def multipliers(self, variable: tf.Variable) -> Tuple[float, float]:
    """(lr_mult, decay_mult) of `variable` (module docstring)."""
    return (self.bias_lr_mult, self.bias_decay_mult) if is_bias(variable) else (1.0, 1.0)

  def apply(self, task: str, grads_and_vars: Iterable[Tuple[Union[tf.Tensor, None], tf.Variable]]) -> tf.Operation:
    """Applies one update of `task` (gradients that are None are skipped) and counts it."""
    rate = self.rate(task)
    updates = []
    for grad, var in grads_and_vars:
      if grad is None:
        continue
      lr_mult, decay_mult = self.multipliers(var)
      grad = tf.convert_to_tensor(grad, var.dtype)
      decay = self.weight_decay * decay_mult
      if decay:
        grad = grad + tf.cast(decay, var.dtype) * var.read_value()
      updates.append(
        tf.raw_ops.ResourceApplyKerasMomentum(
          var=var.handle,
          accum=self.slot(task, var).handle,
          lr=tf.cast(rate * lr_mult, var.dtype),
          grad=grad,
          momentum=tf.cast(self.momentum, var.dtype),
          use_locking=True,
        )  # fmt: skip
      )
    with tf.control_dependencies(updates):
      return self.iterations[task].assign_add(1)


Optimizer = Union[rmsprop.PerTaskRMSProp, PerTaskSGD]


def from_config(train: TrainConfig, task_variables: Dict[str, Sequence[tf.Variable]]) -> Optimizer:
  """The optimizer `train.optimizer` names, from `train.learning_rate` and its `train.rmsprop_*` / `train.sgd_*`.

  Args:
    train: the experiment's `train` config.
    task_variables: task name -> the variables that task updates.

  Returns:
    The optimizer, its slots created (call inside the strategy scope for the PS). Both kinds
    have `apply(task, grads_and_vars)` and `iterations[task]`.
  """
  check_config(train)
  if train.optimizer == 'rmsprop':
    return rmsprop.from_config(train, task_variables)
  return PerTaskSGD(
    task_variables,
    learning_rate=train.learning_rate,
    momentum=train.sgd_momentum,
    weight_decay=train.sgd_weight_decay,
    lr_policy=train.sgd_lr_policy,
    lr_gamma=train.sgd_lr_gamma,
    lr_stepsize=train.sgd_lr_stepsize,
    bias_lr_mult=train.sgd_bias_lr_mult,
    bias_decay_mult=train.sgd_bias_decay_mult,
  )
