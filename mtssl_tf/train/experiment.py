"""The root config of a pre-training run and its `train` section.

`ExperimentConfig` nests every task's config (`TasksConfig`), so it lives above the task
layer, next to the trainer that reads it; the sections binaries share without tasks
(trunk, lasso, runtime, demo) are in `mtssl_tf.configs`.
"""

from __future__ import annotations

import dataclasses

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.configs.experiment import DemoConfig, LassoConfig, RuntimeConfig, TrunkConfig
from mtssl_tf.tasks import TasksConfig, check_trunk
from mtssl_tf.train import optim, rmsprop
from mtssl_tf.train.knn import KnnMonitorConfig
from mtssl_tf.trunk import registry

TRAIN_MODES = ('hybrid', 'async', 'sync')
ACCUMULATE = ('parameter_server', 'worker')


@dataclasses.dataclass
class TrainConfig(Config):
  """Distributed pre-training (Doersch & Zisserman §4).

  Attributes:
    mode: 'hybrid' (each task averages `aggregate_steps` worker steps per update and
      never waits for other tasks: the paper's scheme), 'async' (every step applied
      at once) or 'sync' (all tasks in lock step: a round of one step per worker,
      then every task's update).
    accumulate: where a hybrid run sums a task's K_t gradients. 'parameter_server'
      (the paper's scheme): every step writes its gradients to the parameter servers
      and any K_t steps of the task's pool make an update. 'worker': one closure reads
      the weights once, runs K_t steps of its task on them on one worker and writes
      the gradients' sum once, K_t times less traffic each way; an update's K_t
      gradients are then taken at one set of weights on one worker. Ignored by
      'async' and 'sync'.
    total_steps: worker steps over all tasks.
    optimizer: 'rmsprop' (default: Doersch & Zisserman §4's per-task RMSProp, the `rmsprop_*`
      fields) or 'sgd' (Caffe's momentum SGD with per-task history and schedule, the `sgd_*`
      fields: the solver of the Noroozi et al. 2018 pre-training runs). Both trainers build it
      with `mtssl_tf.train.optim.from_config`.
    learning_rate: the optimizer's (base) learning rate; Caffe's base_lr for 'sgd'.
    rmsprop_variant: initial mean square of the per-task RMSProp (§4). 'keras' (0, as
      Keras 2.15's RMSprop): a loss x c trains alike from the first step. 'tf1' (1, as
      TF1's RMSPropOptimizer): steps are damped and scale dependent for about
      log(E[g^2]) / log(decay) updates (131 at a gradient RMS of 1e-3), the whole of a
      miniature run. Both the local and the distributed trainer use these fields
      (`mtssl_tf.train.rmsprop.from_config`; the module docstring has the derivation).
    rmsprop_decay: decay of the mean square (0.9, slim's ImageNet recipe and TF1's default).
    rmsprop_momentum: momentum (0.9, slim's ImageNet recipe).
    rmsprop_epsilon: added to the mean square inside the square root. 1e-10 (TF1
      RMSPropOptimizer's default) is small next to the squared gradients (0.5% error at a
      gradient RMS of 1e-4, less above), so §4's "multiplying the loss by a constant factor
      does not change how quickly the network learns" holds; 1e-7 (Keras's default) is 5%
      off at a gradient RMS of 1e-3; 1.0 (slim's recipe) makes it momentum SGD for
      gradients much smaller than 1.
    sgd_momentum: Caffe momentum (0.9: JigsawPuzzleSolver solver_cfn_jps.prototxt).
    sgd_weight_decay: Caffe weight_decay, L2 added to the gradient (5e-4: the same solver).
    sgd_lr_policy: Caffe lr_policy, 'step' (the same solver) or 'fixed' (deepcontext).
    sgd_lr_gamma: rate factor at each step (0.1: the same solver).
    sgd_lr_stepsize: updates of a task between steps (100000: the same solver).
    sgd_bias_lr_mult: biases' lr_mult (2: train_val_cfn_jps++.prototxt; weights 1).
    sgd_bias_decay_mult: biases' decay_mult (0: the same prototxt; weights 1).
    closures_per_worker: compute closures the coordinator keeps in flight per worker. 1
      (default): a worker's next step starts after the coordinator took its last result and
      applied any update it completed, so with one worker per task (or K_t = 1) every
      gradient is taken at the latest weights, as §4's per-task synchronous aggregation
      ("applies the accumulated update while all workers wait ... preventing stale
      gradients"); the worker idles for the coordinator's round trip. 2: that round trip
      hides behind a queued step, whose gradient is one update older (a VGG16 Jigsaw++ run
      of tests/train/conv_trunk_test.py stayed at chance with 2 and learned with 1, same
      seed). With `wait_for_update` (the default) a queued step waits on its worker for the
      update instead, so 2 is as fresh as 1 and only hides the dispatch. 'sync' ignores it
      (a round is one closure per worker).
    wait_for_update: 'hybrid' only. True (default, §4: the parameter servers apply a task's
      accumulated update "while all workers wait ... preventing stale gradients"): a step
      starts on its worker only while its task's open update has room (K_t steps, or one
      closure under worker accumulation), so every gradient of an update is taken at the
      weights of the update before, however many workers a task has
      (mtssl_tf/train/admission.py). False: a worker that finishes early starts its next step
      at once, and that gradient is one update old when applied.
    wait_timeout_seconds: a waiting step runs anyway after this long (a place held by a
      closure that was lost with its worker; admission.py); longer than any step.
    num_ps: parameter servers of the local cluster.
    cost_tick: a checkpoint is kept each time total compute crosses a multiple of it
      (same unit as the tasks' cost_per_step; the paper used ~2.4K GPU-hours).
    checkpoint_every_seconds: time-based checkpoints besides the ticks.
    log_every_seconds: console progress and scalar summaries.
    world_preset: synthetic world used for tasks whose data source is empty.
    world_dir: where that world lives (empty: ~/.cache/mtssl_tf/world_<preset>).
    export: write a SavedModel of the trunk at the end.
  """

  mode: str = 'hybrid'
  accumulate: str = 'parameter_server'
  total_steps: int = 600
  optimizer: str = optim.DEFAULT_OPTIMIZER
  learning_rate: float = 1e-3
  rmsprop_variant: str = rmsprop.DEFAULT_VARIANT
  rmsprop_decay: float = rmsprop.DEFAULT_DECAY
  rmsprop_momentum: float = rmsprop.DEFAULT_MOMENTUM
  rmsprop_epsilon: float = rmsprop.DEFAULT_EPSILON
  sgd_momentum: float = optim.DEFAULT_MOMENTUM
  sgd_weight_decay: float = optim.DEFAULT_WEIGHT_DECAY
  sgd_lr_policy: str = optim.DEFAULT_LR_POLICY
  sgd_lr_gamma: float = optim.DEFAULT_LR_GAMMA
  sgd_lr_stepsize: int = optim.DEFAULT_LR_STEPSIZE
  sgd_bias_lr_mult: float = optim.DEFAULT_BIAS_LR_MULT
  sgd_bias_decay_mult: float = optim.DEFAULT_BIAS_DECAY_MULT
  closures_per_worker: int = 1
  wait_for_update: bool = True
  wait_timeout_seconds: float = 120.0
  num_ps: int = 1
  cost_tick: float = 100.0
  checkpoint_every_seconds: float = 600.0
  log_every_seconds: float = 10.0
  world_preset: str = 'small'
  world_dir: str = ''
  export: bool = True

  def validate(self) -> None:
    if self.mode not in TRAIN_MODES:
      raise ConfigError(f'train.mode: must be one of {TRAIN_MODES}, got {self.mode!r}')
    if self.accumulate not in ACCUMULATE:
      raise ConfigError(f'train.accumulate: must be one of {ACCUMULATE}, got {self.accumulate!r}')
    if self.total_steps < 1 or self.num_ps < 1:
      raise ConfigError('train.total_steps and train.num_ps: must be positive')
    if self.closures_per_worker < 1:
      raise ConfigError(f'train.closures_per_worker: must be >= 1, got {self.closures_per_worker}')
    if not self.wait_timeout_seconds > 0:
      raise ConfigError(f'train.wait_timeout_seconds: must be positive, got {self.wait_timeout_seconds}')
    if self.rmsprop_variant not in rmsprop.VARIANTS:
      raise ConfigError(f'train.rmsprop_variant: must be one of {rmsprop.VARIANTS}, got {self.rmsprop_variant!r}')
    if not 0.0 <= self.rmsprop_decay < 1.0:
      raise ConfigError(f'train.rmsprop_decay: must be in [0, 1), got {self.rmsprop_decay}')
    if not 0.0 <= self.rmsprop_momentum < 1.0:
      raise ConfigError(f'train.rmsprop_momentum: must be in [0, 1), got {self.rmsprop_momentum}')
    if not self.rmsprop_epsilon > 0:
      raise ConfigError(f'train.rmsprop_epsilon: must be positive (inside the square root), got {self.rmsprop_epsilon}')
    if self.learning_rate <= 0 or self.cost_tick <= 0:
      raise ConfigError('train.learning_rate and train.cost_tick: must be positive')
    optim.check_config(self)


@dataclasses.dataclass
class ExperimentConfig(Config):
  """The root config every binary loads."""

  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  lasso: LassoConfig = dataclasses.field(default_factory=LassoConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
  demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
  tasks: TasksConfig = dataclasses.field(default_factory=TasksConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  # The kNN monitor run at compute ticks (train/knn.py).
  knn: KnnMonitorConfig = dataclasses.field(default_factory=KnnMonitorConfig)

  def validate(self) -> None:
    if self.lasso.enabled and not registry.SUPPORTS_LASSO.get(self.trunk.kind, True):
      # Lasso mixes ResNet-v2 block-3 units (Doersch §3.2); AlexNet / VGG16 have no such units.
      # (An unknown kind is reported by `TrunkConfig.validate`.)
      raise ConfigError(
        f'lasso.enabled: lasso mixes ResNet-v2 block-3 units, which trunk.kind {self.trunk.kind!r} does not have; '
        "set lasso.enabled: false or trunk.kind: 'resnet_v2'"
      )
    if self.trunk.kind in registry.TRUNKS:  # Else `TrunkConfig.validate` has said so.
      check_trunk(self.tasks, self.trunk)
      if self.knn.enabled:
        try:
          registry.final_size(self.trunk, self.knn.image_size)
        except ValueError as e:
          raise ConfigError(f'knn.image_size: too small for trunk.kind {self.trunk.kind!r}: {e}') from None
    if self.lasso.enabled and self.trunk.output_stride == 32:
      raise ConfigError(
        'trunk.output_stride: lasso.enabled needs every block-3 unit at one resolution, '
        'so the output stride must be 8 or 16, not 32'
      )
