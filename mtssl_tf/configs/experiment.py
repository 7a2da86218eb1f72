"""Config sections every binary shares: the trunk, lasso mixing, the runtime and the demo input.

The root config of a pre-training run (`ExperimentConfig`, which nests every task's config)
and its `train` section live with the trainer, in `mtssl_tf.train.experiment`, so that this
layer imports no task.

Defaults follow Doersch & Zisserman 2017 (§3.1, §3.2): ResNet-101 v2 kept to the end of
block 3 (units 3, 4, 23), every block-3 unit at one resolution so that lasso can mix them
(output stride 16, or 8 with atrous convolution).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from mtssl_tf.configs.base import Config, ConfigError

OUTPUT_STRIDES = (8, 16, 32)
# Keras dtype policies.
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')
# `runtime.precision` may also be 'auto': mixed_bfloat16 where the hardware computes bfloat16
# natively, else float32 (`mtssl_tf.hardware.resolve_precision`).
RUNTIME_PRECISIONS = ('auto', *PRECISIONS)
# Trunk architectures (`TrunkConfig.kind`, built by `mtssl_tf.trunk.registry`).
TRUNK_KINDS = ('resnet_v2', 'alexnet', 'vgg16')
ALEXNET_VARIANTS = ('standard', 'jigsaw')
ALEXNET_ENDPOINTS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5')
VGG16_ENDPOINTS = tuple(f'conv{b}_{i}' for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)) + tuple(
  f'pool{b}' for b in range(1, 6)
)
LASSO_INITS = ('last', 'uniform')
# What follows a lasso mix before the head (`LassoConfig.mix_norm`, trunk/lasso.py).
LASSO_MIX_NORMS = ('trunk', 'per_consumer')


@dataclasses.dataclass
class ConvNetConfig(Config):
  """Fields the plain convolutional trunks (AlexNet, VGG16) share.

  Attributes:
    width: multiplier of every channel count (1.0 is the paper's network; tests shrink it).
    batch_norm: BatchNorm after every conv instead of CaffeNet's LRN (AlexNet) or nothing
      (VGG16). Not in Noroozi's networks, which train without it (VGG16 by stage-wise
      initialisation); small-world training from scratch needs it.
    final_endpoint: the endpoint heads read as `final` (pool5: the conv trunk's output, on
      which Jigsaw's per-tile fc6 and relative position's fc layers sit).
  """

  width: float = 1.0
  batch_norm: bool = False
  final_endpoint: str = 'pool5'

  def endpoints(self) -> Tuple[str, ...]:
    """The network's endpoint names (a method, not a field: it is not configurable).

    Each network's section overrides it; a bare `ConvNetConfig` names no network, so it has
    none and validation rejects any `final_endpoint`.
    """
    return ()

  def validate(self) -> None:
    if self.width <= 0:
      raise ConfigError(f'width: must be positive, got {self.width}')
    if self.final_endpoint not in self.endpoints():
      raise ConfigError(f'final_endpoint: must be one of {list(self.endpoints())}, got {self.final_endpoint!r}')


@dataclasses.dataclass
class AlexNetConfig(ConvNetConfig):
  """AlexNet conv1..conv5 (`mtssl_tf.trunk.alexnet`, CaffeNet layers as Noroozi et al. 2018 use them).

  Attributes:
    variant: 'standard' (conv1 stride 4, 227 px: the network Noroozi §5 transfers into and
      relative position's "Context" runs on) or 'jigsaw' (conv1 stride 2 on 64 px tiles: the
      context-free network of JigsawPuzzleSolver's train_val_cfn_jps++.prototxt).
    conv1_padding: zero padding of conv1 on each side: 0 (CaffeNet, JigsawPuzzleSolver) or 5
      (cdoersch/deepcontext's `caffenet_stack`, which makes a 96 px patch's pool5 3x3, not 2x2).
    groups: groups of conv2, conv4 and conv5: 2 (CaffeNet's two GPU towers) or 1 (deepcontext:
      no groups).
  """

  variant: str = 'standard'
  conv1_padding: int = 0
  groups: int = 2

  def endpoints(self) -> Tuple[str, ...]:
    return ALEXNET_ENDPOINTS

  def validate(self) -> None:
    super().validate()
    if self.variant not in ALEXNET_VARIANTS:
      raise ConfigError(f'variant: must be one of {ALEXNET_VARIANTS}, got {self.variant!r}')
    if self.conv1_padding < 0:
      raise ConfigError(f'conv1_padding: must be >= 0, got {self.conv1_padding}')
    if self.groups not in (1, 2):
      raise ConfigError(f'groups: must be 1 (deepcontext) or 2 (CaffeNet), got {self.groups}')


@dataclasses.dataclass
class VGG16Config(ConvNetConfig):
  """VGG16 conv1_1..pool5 (`mtssl_tf.trunk.vgg16`, Simonyan & Zisserman 2015 column D)."""

  def endpoints(self) -> Tuple[str, ...]:
    return VGG16_ENDPOINTS


@dataclasses.dataclass
class TrunkConfig(Config):
  """The shared trunk: ResNet-v2 (pre-activation bottleneck) blocks 1-3 by default, or AlexNet / VGG16.

  The ResNet-v2 fields sit at the top level (every existing run's config.yaml has them
  there); the other kinds read their own nested section, `alexnet:` or `vgg16:`.

  Attributes:
    kind: 'resnet_v2' (Doersch & Zisserman 2017), 'alexnet' or 'vgg16' (Noroozi et al.
      2018's Jigsaw++ / Context networks); one of `TRUNK_KINDS`.
    alexnet: AlexNet's settings (kind 'alexnet').
    vgg16: VGG16's settings (kind 'vgg16').
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

  kind: str = 'resnet_v2'
  alexnet: AlexNetConfig = dataclasses.field(default_factory=AlexNetConfig)
  vgg16: VGG16Config = dataclasses.field(default_factory=VGG16Config)
  units_per_block: Tuple[int, ...] = (3, 4, 23)
  width: int = 64
  output_stride: int = 16
  final_activation: bool = True
  batch_norm_momentum: float = 0.99
  batch_norm_epsilon: float = 1.001e-5

  def validate(self) -> None:
    if self.kind not in TRUNK_KINDS:
      raise ConfigError(f'trunk.kind: must be one of {TRUNK_KINDS}, got {self.kind!r}')
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
    seed: a fresh run's initial weights (the coordinator seeds TensorFlow, NumPy and Python
      with it before building the model, `train.distributed.build_model`) and the data order.
  """

  precision: str = 'auto'
  seed: int = 0

  def validate(self) -> None:
    if self.precision not in RUNTIME_PRECISIONS:
      raise ConfigError(f'runtime.precision: must be one of {RUNTIME_PRECISIONS}, got {self.precision!r}')


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
