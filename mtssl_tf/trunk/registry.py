"""The trunk architectures, by `TrunkConfig.kind`: one registry entry per kind.

Everything that builds a trunk (the multi-task model, export, feature extraction, the
evaluations) calls `build_trunk(config, precision)` and reads it through one interface:

* `trunk(images, training=..., output_stride=None, final=True)` -> dict of named endpoints,
  always with 'final' (what task heads read) when `final` is set;
* `output_channels` (channels of 'final'), `endpoint_names`, `kind`;
* `fixed_stride`: None when `output_stride` can be chosen per call (ResNet-v2: 8, 16, 32),
  else the network's one stride at 'final' (AlexNet, VGG16 ignore `output_stride`);
* `first_conv` / `first_norm` (None without BatchNorm): the first convolution and its norm;
* `supports_lasso`, and for lasso (ResNet-v2 only) `num_units` / `block3_units(endpoints)`.

Kinds: 'resnet_v2' (Doersch & Zisserman 2017: ResNet-v2 blocks 1-3), 'alexnet' and 'vgg16'
(Noroozi et al. 2018: the Jigsaw++ / Context networks; `trunk.alexnet`, `trunk.vgg16`),
built as convolutional trunks (no fc layers: the fc layers are the tasks' heads, as in
JigsawPuzzleSolver's prototxt where fc7/fc8 see the nine tiles together). Adding a kind: its
module, a builder registered below, its config section in `configs.experiment`.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from mtssl_tf.configs.experiment import TRUNK_KINDS, ConvNetConfig, TrunkConfig
from mtssl_tf.trunk import alexnet, vgg16
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

# Endpoints in network order (a pool follows the convs in `POOLED` / each block's last conv).
ALEXNET_ORDER = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5')
VGG16_ORDER = tuple(
  name
  for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
  for name in [f'conv{b}_{i}' for i in range(1, n + 1)] + [f'pool{b}']
)

# Object name of the trunk in a `MultiTaskModel` (checkpoints hold it at `model/trunk`).
TRUNK_NAME = 'trunk'


class ConvNetTrunk(tf.keras.Model):
  """AlexNet or VGG16 conv layers as the shared trunk, with the registry's interface."""

  supports_lasso = False

  def __init__(self, kind: str, net: tf.keras.Model, config: ConvNetConfig, channels: int, stride: int,
               precision: str = 'float32', name: str = TRUNK_NAME):  # fmt: skip
    """Wraps `net` (its `call` returns named endpoints).

    Args:
      kind: the registry kind.
      net: the network (built without fc layers).
      config: its config section (`final_endpoint` names what 'final' is).
      channels: channels of the final endpoint.
      stride: the final endpoint's stride in input pixels.
      precision: Keras dtype policy.
      name: model name.
    """
    super().__init__(name=name, dtype=precision)
    self.kind = kind
    self.net = net
    self.config = config
    self.output_channels = channels
    self.fixed_stride = stride

  @property
  def endpoint_names(self) -> Tuple[str, ...]:
    return tuple(self.net.endpoint_names) + ('final',)

  @property
  def first_conv(self) -> tf.keras.layers.Layer:
    """The first convolution (conv1 / conv1_1): what `freeze_conv1` keeps and Figure 4 draws."""
    return self.net.convs[next(iter(self.net.convs))]

  @property
  def first_norm(self) -> Optional[tf.keras.layers.Layer]:
    """The first convolution's BatchNorm, if the network has BatchNorm."""
    return self.net.norms.get(next(iter(self.net.convs)))

  @property
  def num_units(self) -> int:
    raise ValueError(f'lasso mixes ResNet-v2 block-3 units; a {self.kind} trunk has none')

  def block3_units(self, endpoints: Dict[str, tf.Tensor]) -> List[tf.Tensor]:
    raise ValueError(f'lasso mixes ResNet-v2 block-3 units; a {self.kind} trunk has none')

  def call(self, images, training=None, output_stride: Optional[int] = None, final: bool = True):
    """Endpoints of the network (+ 'final'); `output_stride` is ignored (the network's is fixed)."""
    del output_stride
    endpoints = dict(self.net(images, training=training))
    if final:
      endpoints['final'] = endpoints[self.config.final_endpoint]
    return endpoints


def _resnet_v2(config: TrunkConfig, precision: str) -> tf.keras.Model:
  return ResNetV2Trunk(config, precision=precision, name=TRUNK_NAME)


def _alexnet(config: TrunkConfig, precision: str) -> tf.keras.Model:
  cfg = config.alexnet
  net = alexnet.AlexNet(cfg.variant, cfg.width, cfg.batch_norm, fc_units=(), dtype=precision,
                        conv1_padding=cfg.conv1_padding, groups=cfg.groups)  # fmt: skip
  channels = alexnet.channels(cfg.width, cfg.groups)
  return ConvNetTrunk('alexnet', net, cfg, channels[cfg.final_endpoint], fixed_stride(config), precision)


def _vgg16(config: TrunkConfig, precision: str) -> tf.keras.Model:
  cfg = config.vgg16
  net = vgg16.VGG16(cfg.width, cfg.batch_norm, fc_units=(), dtype=precision)
  block = int(cfg.final_endpoint[4])  # conv<b>_<i> or pool<b>
  channels = vgg16.scaled(vgg16.BLOCKS[block - 1][0], cfg.width)
  return ConvNetTrunk('vgg16', net, cfg, channels, fixed_stride(config), precision)


def fixed_stride(config: TrunkConfig) -> Optional[int]:
  """The stride of `config`'s 'final' endpoint in input pixels, unbuilt; None for ResNet-v2 (chosen per call)."""
  if config.kind == 'alexnet':
    conv1 = alexnet.VARIANTS[config.alexnet.variant].conv1_stride
    strides = {'conv1': conv1, 'conv2': 2 * conv1, 'conv3': 4 * conv1, 'conv4': 4 * conv1, 'conv5': 4 * conv1,
               'pool5': 8 * conv1}  # fmt: skip
    return strides[config.alexnet.final_endpoint]
  if config.kind == 'vgg16':
    final = config.vgg16.final_endpoint
    block = int(final[4])
    return 2 ** (block if final.startswith('pool') else block - 1)
  return None


def final_endpoint(config: TrunkConfig) -> str:
  """What 'final' is: AlexNet / VGG16's `final_endpoint`; 'final' for ResNet-v2 (block 3, normalised)."""
  if config.kind in ('alexnet', 'vgg16'):
    return getattr(config, config.kind).final_endpoint
  return 'final'


def final_size(config: TrunkConfig, input_size: int) -> Optional[int]:
  """Side of the 'final' endpoint for a square `input_size` px input, by the layer arithmetic; None for ResNet-v2.

  Raises:
    ValueError: the input is too small: a layer's window would not fit (the message names the layer).
  """
  if config.kind == 'alexnet':
    order, final = ALEXNET_ORDER, config.alexnet.final_endpoint
    if input_size < alexnet.CONVS[0][2]:
      raise ValueError(f"alexnet: a {input_size} px input is smaller than conv1's {alexnet.CONVS[0][2]} px kernel")
    sizes = alexnet.endpoint_sizes(config.alexnet.variant, input_size, config.alexnet.conv1_padding)
    pooled, kernel = alexnet.POOLED, alexnet.POOL_KERNEL
  elif config.kind == 'vgg16':
    order, final = VGG16_ORDER, config.vgg16.final_endpoint
    sizes = vgg16.endpoint_sizes(input_size)
    pooled, kernel = tuple(f'conv{b}_{n}' for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))), vgg16.POOL_KERNEL
  else:
    return None
  for name in order[: order.index(final) + 1]:
    # A pool after `name` is on the way to `final` when a later endpoint is reached through it.
    needs_pool = name in pooled and order.index(name) < order.index(final)
    if sizes[name] < (kernel if needs_pool else 1):
      raise ValueError(
        f'{config.kind}: a {input_size} px input leaves {name} at {sizes[name]} px, too small for {final}'
      )
  return sizes[final]


def default_input_size(config: TrunkConfig) -> Optional[int]:
  """The input side the network was designed for (AlexNet 227 or 64 px by variant, VGG16 224); None for ResNet-v2."""
  if config.kind == 'alexnet':
    return alexnet.VARIANTS[config.alexnet.variant].input_size
  if config.kind == 'vgg16':
    return vgg16.INPUT_SIZE
  return None


def min_input_size(config: TrunkConfig, start: int = 32) -> int:
  """The smallest square input side >= `start` whose layers reach 'final' (`start` for ResNet-v2)."""
  size = start
  while True:
    try:
      final_size(config, size)
      return size
    except ValueError:
      size += 1


# Which kinds `LassoMix` can mix (their trunks' `supports_lasso`), for config validation before any build.
SUPPORTS_LASSO: Dict[str, bool] = {
  'resnet_v2': ResNetV2Trunk.supports_lasso,
  'alexnet': ConvNetTrunk.supports_lasso,
  'vgg16': ConvNetTrunk.supports_lasso,
}


TRUNKS: Dict[str, Callable[[TrunkConfig, str], tf.keras.Model]] = {
  'resnet_v2': _resnet_v2,
  'alexnet': _alexnet,
  'vgg16': _vgg16,
}
assert tuple(TRUNKS) == TRUNK_KINDS, 'configs.experiment.TRUNK_KINDS and TRUNKS must name the same kinds'


def build_trunk(config: TrunkConfig, precision: str = 'float32') -> tf.keras.Model:
  """The trunk of `config.kind` (variables are created on its first call).

  Raises:
    ValueError: an unknown kind.
  """
  if config.kind not in TRUNKS:
    raise ValueError(f'trunk.kind: must be one of {sorted(TRUNKS)}, got {config.kind!r}')
  return TRUNKS[config.kind](config, precision)
