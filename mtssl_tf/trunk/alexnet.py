"""AlexNet trunk with named endpoints, as Noroozi et al. 2018 train and transfer it.

Two variants share the same layers and differ only in conv1's stride, the input size
and the fully connected layers (all from MehdiNoroozi/JigsawPuzzleSolver's
train_val_cfn_jps++.prototxt and Caffe's bvlc_reference_caffenet, the "CaffeNet" that
prototxt names itself after):

* 'standard': conv1 11x11 stride 4 on 227 px images, fc6 4096, fc7 4096 (Krizhevsky et
  al. 2012; the network Noroozi §5 transfers into and evaluates).
* 'jigsaw': conv1 11x11 stride 2 on 64 px tiles, fc6 1024 per tile (the Jigsaw(++)
  context-free network; its fc7 runs on the nine concatenated tiles, so it is the
  task's head, not part of this trunk).

Both: conv1 96 (no padding), 3x3/2 max pool, LRN; conv2 5x5 pad 2 256 in 2 groups,
3x3/2 max pool, LRN; conv3 3x3 pad 1 384; conv4 3x3 pad 1 384 in 2 groups; conv5 3x3
pad 1 256 in 2 groups; 3x3/2 max pool (pool5). ReLU after every conv/fc, dropout 0.5
after each fc. Caffe pools round the output size up (`caffe_pool_size`), which is why a
64 px tile gives a 3x3 pool5 (conv5 is 6x6).

Two named choices change the conv layers of either variant (`trunk.alexnet.conv1_padding`
and `trunk.alexnet.groups`), for the relative-position ("Context") network of
cdoersch/deepcontext (`train.py`, `caffenet_stack`): conv1 padded by 5 and no groups
(conv2/4/5 see all channels; deepcontext's README: "a caffenet with the groups removed").
The padding is what gives deepcontext's 96 px patch a 3x3 pool5 (24 -> 12 -> 6 -> 3)
where unpadded CaffeNet gives 2x2 (22 -> 11 -> 5 -> 2). Defaults: CaffeNet's 0 and 2.

`call` returns a dict of endpoints: conv1..conv5 (after ReLU, before pooling), pool5
and fc6 (and fc7) when the variant has fully connected layers. `width` scales every
channel count (for tiny tests); `batch_norm` swaps LRN for BatchNorm after every conv
and fc, as small-world training needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

# (name, filters, kernel, padding, groups, bias init); bvlc_reference_caffenet / the Jigsaw++ prototxt.
CONVS = (('conv1', 96, 11, 0, 1, 0.0), ('conv2', 256, 5, 2, 2, 1.0), ('conv3', 384, 3, 1, 1, 0.0),
         ('conv4', 384, 3, 1, 2, 1.0), ('conv5', 256, 3, 1, 2, 1.0))  # fmt: skip
POOLED = ('conv1', 'conv2', 'conv5')  # 3x3/2 max pool after these (prototxt pool1, pool2, pool5).
LRN_AFTER = ('conv1', 'conv2')  # CaffeNet order: ReLU, pool, then LRN (prototxt norm1, norm2).
POOL_KERNEL, POOL_STRIDE = 3, 2
CONV_STDDEV, FC_STDDEV = 0.01, 0.005  # Prototxt weight_filler gaussian std of convs and fcs.
FC_BIAS = 1.0  # Prototxt bias_filler of fc6/fc7.
DROPOUT = 0.5  # Prototxt drop6/drop7 dropout_ratio.
# conv1 padding and conv2/4/5 groups: CaffeNet / JigsawPuzzleSolver (0, 2); cdoersch/deepcontext train.py (5, 1).
CONV1_PADDING, GROUPS = 0, 2
DEEPCONTEXT_CONV1_PADDING, DEEPCONTEXT_GROUPS = 5, 1
GROUP_CHOICES = (1, 2)  # Ungrouped, or CaffeNet's two GPU towers.


@dataclasses.dataclass(frozen=True)
class Variant:
  """What distinguishes the two AlexNets: conv1 stride, the input size it expects, fc units."""

  conv1_stride: int
  input_size: int
  fc_units: Tuple[int, ...]


VARIANTS = {
  # Krizhevsky et al. 2012 / bvlc_reference_caffenet: 227 px crops, conv1 stride 4.
  'standard': Variant(conv1_stride=4, input_size=227, fc_units=(4096, 4096)),
  # JigsawPuzzleSolver train_val_cfn_jps++.prototxt: patch_size 64, conv1_s1 stride 2, fc6_s1 1024.
  'jigsaw': Variant(conv1_stride=2, input_size=64, fc_units=(1024,)),
}


def conv_specs(conv1_padding: int = CONV1_PADDING, groups: int = GROUPS) -> Tuple[Tuple, ...]:
  """`CONVS` with conv1's padding and the grouped layers' (conv2/4/5) group count replaced.

  Raises:
    ValueError: a negative padding or a group count outside `GROUP_CHOICES`.
  """
  if conv1_padding < 0:
    raise ValueError(f'AlexNet conv1_padding must be >= 0, got {conv1_padding}')
  if groups not in GROUP_CHOICES:
    raise ValueError(f'AlexNet groups must be one of {GROUP_CHOICES}, got {groups}')
  specs = []
  for name, filters, kernel, pad, g, bias in CONVS:
    specs.append((name, filters, kernel, conv1_padding if name == 'conv1' else pad, groups if g > 1 else 1, bias))
  return tuple(specs)


def channels(width: float = 1.0, groups: int = GROUPS) -> Dict[str, int]:
  """Channels of every conv endpoint and pool5 at `width` (grouped convs round to a multiple of their groups)."""
  out = {name: scaled(f, width, g) for name, f, _, _, g, _ in conv_specs(groups=groups)}
  out['pool5'] = out['conv5']
  return out


def scaled(units: int, width: float, multiple: int = 1) -> int:
  """`units * width` rounded to a positive multiple of `multiple` (grouped convs need even channels)."""
  return max(multiple, int(round(units * width / multiple)) * multiple)


def caffe_pool_size(size: int, kernel: int, stride: int) -> int:
  """Output size of a Caffe pooling layer without padding: ceil mode, last window starts inside."""
  out = int(math.ceil((size - kernel) / stride)) + 1
  if (out - 1) * stride >= size:
    out -= 1
  return out


def caffe_max_pool(x: tf.Tensor, kernel: int, stride: int) -> tf.Tensor:
  """Max pool with Caffe's output size: pads bottom/right with the dtype's lowest value when ceil mode needs it."""
  height, width = int(x.shape[1]), int(x.shape[2])
  if min(height, width) < kernel:
    raise ValueError(f'max pool {kernel}x{kernel}: input {height}x{width} is smaller than the window')
  pads = [(caffe_pool_size(s, kernel, stride) - 1) * stride + kernel - s for s in (height, width)]
  if any(pads):
    x = tf.pad(x, [[0, 0], [0, max(0, pads[0])], [0, max(0, pads[1])], [0, 0]], constant_values=x.dtype.min)
  return tf.nn.max_pool2d(x, kernel, stride, 'VALID')


def endpoint_sizes(
  variant: str = 'standard', input_size: Optional[int] = None, conv1_padding: int = CONV1_PADDING
) -> Dict[str, int]:
  """Spatial size of every conv endpoint and pool5 for a square input, by the layer arithmetic.

  Args:
    variant: 'standard' or 'jigsaw'.
    input_size: side in pixels; the variant's own (227 or 64) when None.
    conv1_padding: zero padding of conv1 on each side (deepcontext: 5).

  Returns:
    {'conv1': 55, 'conv2': 27, 'conv3': 13, 'conv4': 13, 'conv5': 13, 'pool5': 6} for 227 px.
  """
  spec = _variant(variant)
  size = spec.input_size if input_size is None else input_size
  sizes = {}
  for conv, _, kernel, pad, _, _ in conv_specs(conv1_padding):
    stride = spec.conv1_stride if conv == 'conv1' else 1
    size = (size + 2 * pad - kernel) // stride + 1
    sizes[conv] = size
    if conv in POOLED:
      size = caffe_pool_size(size, POOL_KERNEL, POOL_STRIDE)
  sizes['pool5'] = size
  return sizes


def parameter_count(
  variant: str = 'standard',
  width: float = 1.0,
  batch_norm: bool = False,
  fc_units: Optional[Sequence[int]] = None,
  input_size: Optional[int] = None,
  conv1_padding: int = CONV1_PADDING,
  groups: int = GROUPS,
) -> int:
  """Trainable + BatchNorm parameters `AlexNet(...)` creates, computed from the layer specs without building it.

  Args:
    variant: 'standard' or 'jigsaw'.
    width: channel multiplier, as `AlexNet`.
    batch_norm: as `AlexNet` (BatchNorm: no biases, 4 values per channel).
    fc_units: as `AlexNet`.
    input_size: as `endpoint_sizes` (fc6's fan-in depends on it).
    conv1_padding: as `AlexNet` (fc6's fan-in depends on it).
    groups: as `AlexNet`.

  Returns:
    The count; `AlexNet().count_params()` equals it once built.
  """
  spec = _variant(variant)
  fcs = spec.fc_units if fc_units is None else tuple(fc_units)
  total, channels = 0, 3
  for _, filters, kernel, _, g, _ in conv_specs(conv1_padding, groups):
    out = scaled(filters, width, g)
    total += kernel * kernel * (channels // g) * out + (4 * out if batch_norm else out)
    channels = out
  fan_in = endpoint_sizes(variant, input_size, conv1_padding)['pool5'] ** 2 * channels
  for units in fcs:
    out = scaled(units, width)
    total += fan_in * out + (4 * out if batch_norm else out)
    fan_in = out
  return total


def _variant(variant: str) -> Variant:
  if variant not in VARIANTS:
    raise ValueError(f'AlexNet variant must be one of {sorted(VARIANTS)}, got {variant!r}')
  return VARIANTS[variant]


class AlexNet(tf.keras.Model):
  """AlexNet conv1..conv5 (+ fc layers) returning named endpoints; see the module docstring."""

  def __init__(
    self,
    variant: str = 'standard',
    width: float = 1.0,
    batch_norm: bool = False,
    fc_units: Optional[Sequence[int]] = None,
    dropout: float = DROPOUT,
    name: str = 'alexnet',
    dtype: str = 'float32',
    conv1_padding: int = CONV1_PADDING,
    groups: int = GROUPS,
  ):
    """Creates the layers.

    Args:
      variant: 'standard' (conv1 stride 4, 227 px) or 'jigsaw' (conv1 stride 2, 64 px tiles).
      width: multiplier of every conv's channels and the fc units (1/16 for tests); grouped
        convs keep an even channel count.
      batch_norm: BatchNorm after every conv and fc (no biases, no LRN) instead of CaffeNet's LRN.
      fc_units: fully connected layers after pool5, before `width`; the variant's own when None,
        () for a convolutional trunk (endpoints stop at pool5).
      dropout: dropout rate after each fc layer.
      name: model name.
      dtype: Keras dtype policy of every layer (e.g. 'mixed_bfloat16').
      conv1_padding: zero padding of conv1 on each side (CaffeNet 0; deepcontext 5).
      groups: groups of conv2, conv4 and conv5 (CaffeNet 2; deepcontext 1).

    Raises:
      ValueError: unknown variant, non-positive width, negative padding or groups not 1 or 2.
    """
    super().__init__(name=name, dtype=dtype)
    policy = self.dtype_policy
    if width <= 0:
      raise ValueError(f'AlexNet width must be positive, got {width}')
    self.variant = variant
    self.spec = _variant(variant)
    self.width = width
    self.batch_norm = batch_norm
    self.conv_specs = conv_specs(conv1_padding, groups)
    self.conv1_padding, self.groups = conv1_padding, groups
    self.fc_names = tuple(f'fc{6 + i}' for i in range(len(self.spec.fc_units if fc_units is None else fc_units)))
    units = self.spec.fc_units if fc_units is None else tuple(fc_units)
    self.convs, self.norms, self.fcs = {}, {}, {}
    for conv, filters, kernel, pad, g, bias in self.conv_specs:
      # Symmetric Caffe padding of an odd kernel at stride 1 is Keras 'same'; conv1's (strided) is explicit in `call`.
      self.convs[conv] = tf.keras.layers.Conv2D(
        scaled(filters, width, g),
        kernel,
        self.spec.conv1_stride if conv == 'conv1' else 1,
        padding='same' if pad and conv != 'conv1' else 'valid',
        groups=g,
        use_bias=not batch_norm,
        kernel_initializer=tf.keras.initializers.RandomNormal(stddev=CONV_STDDEV),
        bias_initializer=tf.keras.initializers.Constant(bias),
        dtype=policy,
        name=conv,
      )
      if batch_norm:
        self.norms[conv] = tf.keras.layers.BatchNormalization(name=f'{conv}_bn', dtype=policy)
    for fc, n in zip(self.fc_names, units):
      self.fcs[fc] = tf.keras.layers.Dense(
        scaled(n, width),
        use_bias=not batch_norm,
        kernel_initializer=tf.keras.initializers.RandomNormal(stddev=FC_STDDEV),
        bias_initializer=tf.keras.initializers.Constant(FC_BIAS),
        dtype=policy,
        name=fc,
      )
      if batch_norm:
        self.norms[fc] = tf.keras.layers.BatchNormalization(name=f'{fc}_bn', dtype=policy)
    self.dropout = tf.keras.layers.Dropout(dropout, dtype=policy)

  @property
  def endpoint_names(self) -> Tuple[str, ...]:
    """Names `call` returns, in network order."""
    return tuple(c[0] for c in CONVS) + ('pool5',) + self.fc_names

  def call(self, images: tf.Tensor, training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
    """Runs the trunk.

    Args:
      images: [B, H, W, 3] float images with static H and W (fc6 and Caffe pooling need them).
      training: BatchNorm / dropout mode.

    Returns:
      Endpoints conv1..conv5, pool5 and the fc layers (`endpoint_names`).
    """
    return self.forward(images, training)

  def forward(
    self, images: tf.Tensor, training: Optional[bool] = None, taps: Optional[Dict] = None
  ) -> Dict[str, tf.Tensor]:
    """`call`'s computation; with `taps`, also records every conv/fc layer's input and output.

    Args:
      images: as `call`.
      training: as `call`.
      taps: a dict to fill with {layer name: (input, output before BatchNorm and ReLU)}, the
        statistics a data-dependent initialisation (`trunk.data_init`) reads; None in `call`.

    Returns:
      The endpoints, as `call`.
    """
    endpoints = {}
    x = images
    if self.conv1_padding:  # Caffe pads with zeros on every side (deepcontext conv1 pad 5).
      p = self.conv1_padding
      x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
    for conv, *_ in CONVS:
      y = self.convs[conv](x)
      if taps is not None:
        taps[conv] = (x, y)
      x = tf.nn.relu(self.norms[conv](y, training=training) if self.batch_norm else y)
      endpoints[conv] = x
      if conv in POOLED:
        x = caffe_max_pool(x, POOL_KERNEL, POOL_STRIDE)
        if conv in LRN_AFTER and not self.batch_norm:
          # Caffe LRN local_size 5, alpha 1e-4, beta 0.75; TF's alpha is not divided by the window size.
          # In float32 whatever the policy: CPU kernels of LRN exist for float32 (and half) only.
          normed = tf.nn.local_response_normalization(
            tf.cast(x, tf.float32), depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75
          )
          x = tf.cast(normed, x.dtype)
    endpoints['pool5'] = x
    if self.fc_names:
      x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
    for fc in self.fc_names:
      y = self.fcs[fc](x)
      if taps is not None:
        taps[fc] = (x, y)
      x = tf.nn.relu(self.norms[fc](y, training=training) if self.batch_norm else y)
      endpoints[fc] = x
      x = self.dropout(x, training=training)
    return endpoints

  def weight_layers(self) -> Dict[str, tf.keras.layers.Layer]:
    """Every conv and fc layer in network order ({name: layer}), as `forward`'s taps name them."""
    return {**self.convs, **self.fcs}


def copy_conv_layers(source: AlexNet, target: AlexNet) -> None:
  """Copies conv1..conv5 (kernels, biases, BatchNorm) of `source` into `target`, both built.

  The two may differ in variant, conv1 padding and fc layers (a Jigsaw tile trunk into the
  standard AlexNet, as the evaluations of Noroozi et al. 2018 read it); width, groups and
  the BatchNorm choice must match, or a kernel does not fit (Keras names the layer).
  """
  for conv, *_ in CONVS:
    target.convs[conv].set_weights(source.convs[conv].get_weights())
    if conv in target.norms:
      target.norms[conv].set_weights(source.norms[conv].get_weights())


def build_at(net: AlexNet, input_size: int, key: str) -> None:
  """Builds `net` on a zero batch of `input_size` px images.

  Raises:
    ConfigError: naming the config `key` of that size, when a Caffe pool of AlexNet does
      not fit (every pooled map must hold a 3x3 window: >= 55 px for the standard variant).
  """
  from mtssl_tf.configs.base import ConfigError  # Lazy: the trunk layer does not need configs otherwise.

  try:
    net(tf.zeros([1, input_size, input_size, 3]), training=False)
  except ValueError as e:
    raise ConfigError(f'{key}: {input_size} px is too small for AlexNet: {e}') from None


def standard_from(
  source: AlexNet, input_size: int, key: str, fc_units: Sequence[int] = (), dropout: float = DROPOUT
) -> AlexNet:
  """The standard AlexNet (conv1 stride 4, unpadded) holding `source`'s conv layers, as Noroozi §5 evaluates them.

  Any variant or conv1 padding of `source` (a Jigsaw tile trunk, deepcontext's padded conv1)
  becomes the standard network with its width, BatchNorm choice and groups, so every conv
  kernel (and BatchNorm) fits and is copied; fc layers (`fc_units`) are new.

  Args:
    source: the AlexNet whose conv1..conv5 are copied.
    input_size: the side the new network is built at.
    key: the config key of `input_size`, named when it is too small (`build_at`).
    fc_units: fc layers after pool5 (none: a convolutional network).
    dropout: their dropout rate.
  """
  net = AlexNet('standard', source.width, source.batch_norm, fc_units=fc_units, dropout=dropout,
                groups=source.groups, name='alexnet')  # fmt: skip
  build_at(net, input_size, key)
  copy_conv_layers(source, net)
  return net
