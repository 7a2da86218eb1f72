"""Config classes for the trunk, lasso mixing, the runtime and the whole experiment.

Defaults follow Doersch & Zisserman 2017 (§3.1, §3.2): ResNet-101 v2 kept to the end
of block 3 (units 3, 4, 23), every block-3 unit at one resolution so that lasso can mix
them (output stride 16, or 8 with atrous convolution).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.tasks import TasksConfig
from mtssl_tf.train import rmsprop

OUTPUT_STRIDES = (8, 16, 32)
# 'auto': mixed_bfloat16 where the hardware computes bfloat16 natively, else float32 (hardware.py).
PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16')
LASSO_INITS = ('last', 'uniform')
# What follows a lasso mix before the head (`LassoConfig.mix_norm`, trunk/lasso.py).
LASSO_MIX_NORMS = ('trunk', 'per_consumer')


@dataclasses.dataclass
class TrunkConfig(Config):
  """ResNet-v2 (pre-activation bottleneck) trunk, blocks 1-3.

  Attributes:
    units_per_block: residual units in blocks 1, 2, 3. (3, 4, 23) is ResNet-101;
      (1, 1, 2) is the tiny trunk used by tests.
    width: bottleneck width of block 1 (64 in ResNet-101; blocks 2 and 3 double it
      each time, outputs are 4x the bottleneck). Tests shrink it.
    output_stride: 32 strides in the last unit of block 3 (tf.keras.applications
      layout, so block-3 units differ in size); 16 keeps all block-3 units at 1/16;
      8 also drops block 2's stride and dilates block 3 by 2 (atrous).
    final_activation: apply a BatchNorm + ReLU to the block-3 output to make the
      `final` endpoint. Pre-activation units leave their output un-normalised, so a
      head reading it directly would see unbounded activations.
    batch_norm_momentum: moving-average momentum (Keras convention).
    batch_norm_epsilon: 1.001e-5 as in tf.keras.applications' ResNetV2.
  """

  units_per_block: Tuple[int, ...] = (3, 4, 23)
  width: int = 64
  output_stride: int = 16
  final_activation: bool = True
  batch_norm_momentum: float = 0.99
  batch_norm_epsilon: float = 1.001e-5

  def validate(self) -> None:
    if len(self.units_per_block) != 3 or any(u < 1 for u in self.units_per_block):
      raise ConfigError(
        f'trunk.units_per_block: need three positive unit counts (blocks 1-3), got {list(self.units_per_block)}'
      )
    if self.output_stride not in OUTPUT_STRIDES:
      raise ConfigError(f'trunk.output_stride: must be one of {OUTPUT_STRIDES}, got {self.output_stride}')
    if self.width < 1:
      raise ConfigError(f'trunk.width: must be positive, got {self.width}')
    if not 0.0 <= self.batch_norm_momentum < 1.0:
      raise ConfigError(f'trunk.batch_norm_momentum: must be in [0, 1), got {self.batch_norm_momentum}')
    if self.batch_norm_epsilon <= 0:
      raise ConfigError(f'trunk.batch_norm_epsilon: must be positive, got {self.batch_norm_epsilon}')


@dataclasses.dataclass
class LassoConfig(Config):
  """Lasso mixing of block-3 units (Doersch §3.2).

  Attributes:
    enabled: heads read a learned mix of all block-3 units instead of the final one.
    l1_weight: weight of the L1 penalty on alpha added to each consumer's loss.
    init: 'last' starts each row on the final unit (the no-lasso network);
      'uniform' spreads it evenly over all units.
    mix_norm: what a head reads from its mix. 'trunk' (default): the mix takes block 3's
      place in front of the trunk's own closing BatchNorm + ReLU (`TrunkConfig.
      final_activation`; nothing when that is off), so lasso adds only alpha, as §3.2
      describes, and init 'last' is exactly the no-lasso network. 'per_consumer': every
      consumer gets its own new BatchNorm + ReLU on its mix (this project's earlier
      choice: separate statistics per task, 2 x channels more parameters each).
  """

  enabled: bool = False
  l1_weight: float = 1e-3
  init: str = 'last'
  mix_norm: str = 'trunk'

  def validate(self) -> None:
    if self.l1_weight < 0:
      raise ConfigError(f'lasso.l1_weight: must be >= 0, got {self.l1_weight}')
    if self.init not in LASSO_INITS:
      raise ConfigError(f'lasso.init: must be one of {LASSO_INITS}, got {self.init!r}')
    if self.mix_norm not in LASSO_MIX_NORMS:
      raise ConfigError(f'lasso.mix_norm: must be one of {LASSO_MIX_NORMS}, got {self.mix_norm!r}')


@dataclasses.dataclass
class RuntimeConfig(Config):
  """Numerics and determinism.

  Attributes:
    precision: Keras dtype policy of the trunk and heads; variables stay float32. 'auto'
      (default) resolves per machine (`mtssl_tf.hardware.resolve_precision`): mixed_bfloat16
      on a CPU with AVX512_BF16 or AMX or on GPUs of compute capability >= 8.0, else float32
      (emulated bf16 is 7.7x slower than float32 on an AVX2-only CPU, issue 20); the trainer
      logs the choice. Tests and miniature configs whose figures were measured in float32 set
      float32.
    seed: global seed for initialisers and data order.
  """

  precision: str = 'auto'
  seed: int = 0

  def validate(self) -> None:
    if self.precision not in PRECISIONS:
      raise ConfigError(f'runtime.precision: must be one of {PRECISIONS}, got {self.precision!r}')


@dataclasses.dataclass
class DemoConfig(Config):
  """The generated input of the `mtssl-summary` forward pass.

  Attributes:
    batch_size: images per forward pass.
    image_size: square side of the generated images, in pixels.
  """

  batch_size: int = 2
  image_size: int = 224

  def validate(self) -> None:
    if self.batch_size < 1:
      raise ConfigError(f'demo.batch_size: must be positive, got {self.batch_size}')
    if self.image_size < 32:
      raise ConfigError(f'demo.image_size: must be at least 32 pixels, got {self.image_size}')


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
    learning_rate: RMSProp learning rate.
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
  learning_rate: float = 1e-3
  rmsprop_variant: str = rmsprop.DEFAULT_VARIANT
  rmsprop_decay: float = rmsprop.DEFAULT_DECAY
  rmsprop_momentum: float = rmsprop.DEFAULT_MOMENTUM
  rmsprop_epsilon: float = rmsprop.DEFAULT_EPSILON
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


@dataclasses.dataclass
class ExperimentConfig(Config):
  """The root config every binary loads."""

  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  lasso: LassoConfig = dataclasses.field(default_factory=LassoConfig)
  runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
  demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
  tasks: TasksConfig = dataclasses.field(default_factory=TasksConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def validate(self) -> None:
    if self.lasso.enabled and self.trunk.output_stride == 32:
      raise ConfigError(
        'trunk.output_stride: lasso.enabled needs every block-3 unit at one resolution, '
        'so the output stride must be 8 or 16, not 32'
      )
