"""ResNet-v2 (pre-activation bottleneck) trunk, kept to the end of block 3.

Doersch & Zisserman (2017, §3.1) share ResNet-101 v2 up to block 3 between all
self-supervised tasks. This module builds that trunk as a subclassed Keras model
whose call returns named endpoints:

* `stem`, `block1`, `block2`, `block3`: each stage's output;
* `block3/unit_01` ... `block3/unit_NN`: every block-3 unit, the candidates lasso mixes;
* `final`: block 3 after BatchNorm + ReLU (or `block3` itself when
  `final_activation` is off), the representation heads read.

Block 1-3 correspond to tf.keras.applications' `conv2`-`conv4` stages and the
variables are laid out the same way, so `copy_keras_weights` can load a
`tf.keras.applications.ResNet101V2`. Keras strides in the last unit of a stage;
we keep that placement, so at output stride 32 the trunk equals Keras's
`conv4_block23_out`. At output stride 16 the last unit of block 3 does not stride
and at 8 block 2's last unit does not either and block 3 is dilated by 2, so
every block-3 unit has the same shape, as lasso needs. Because stride and dilation
are applied at call time, one set of weights serves every output stride: a task
may call the shared trunk with `output_stride=8` (colorization) while others use 16.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from mtssl_tf.configs.experiment import OUTPUT_STRIDES, TrunkConfig

STEM_STRIDE = 4  # 7x7/2 convolution then 3x3/2 max-pool.


def unit_endpoint_name(index: int) -> str:
  """Endpoint name of block-3 unit `index` (1-based), zero-padded to sort."""
  return f'block3/unit_{index:02d}'


def unit_schedule(units_per_block: Tuple[int, ...], output_stride: int) -> List[List[Tuple[int, int]]]:
  """(stride, dilation rate) of every unit, per block, for an output stride.

  Each block would halve the resolution in its last unit. Once the accumulated
  stride reaches `output_stride` the unit keeps stride 1 and the following units
  dilate by the stride they skipped (atrous convolution), so the receptive field
  matches the strided network.

  Args:
    units_per_block: unit counts of blocks 1-3.
    output_stride: 8, 16 or 32.

  Returns:
    A list per block of (stride, rate) per unit.

  Raises:
    ValueError: `output_stride` is not one of 8, 16, 32.
  """
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}')
  current, rate = STEM_STRIDE, 1
  schedule = []
  for units in units_per_block:
    block = []
    for u in range(units):
      if u == units - 1 and current < output_stride:
        block.append((2, rate))
        current *= 2
      elif u == units - 1:
        block.append((1, rate))
        rate *= 2
      else:
        block.append((1, rate))
    schedule.append(block)
  return schedule


class AtrousConv2D(tf.keras.layers.Layer):
  """A bias-free KxK convolution whose stride and dilation are chosen per call.

  Padding is explicit and symmetric (`rate * (K - 1) / 2` per side, like Keras
  ResNetV2's ZeroPadding2D + 'valid'), so strided outputs match Keras exactly.
  """

  def __init__(self, filters: int, kernel_size: int = 3, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size

  def build(self, input_shape):
    self.kernel = self.add_weight(
      'kernel',
      shape=(self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters),
      initializer='glorot_uniform',
      trainable=True,
    )
    super().build(input_shape)

  def call(self, inputs, stride: int = 1, rate: int = 1):
    pad = rate * (self.kernel_size - 1) // 2
    x = tf.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    if rate > 1:
      # Dilated conv2d has no CPU gradient kernel ("dilation rates larger than 1" in
      # Conv2DBackpropInput); space-to-batch atrous convolution computes the same
      # values and differentiates everywhere. The schedule never strides and dilates
      # in one unit.
      return tf.nn.atrous_conv2d(x, self.kernel, rate, padding='VALID')
    return tf.nn.conv2d(x, self.kernel, strides=stride, padding='VALID')


def _subsample(x, stride: int):
  """Keeps every `stride`-th pixel, as Keras ResNetV2's 1x1 max-pool shortcut does.

  A 1x1 max-pool rather than a strided slice: the same values, and the training graph
  then matches Keras' op for op, which keeps benchmarks/trunk_step.py a fair comparison.
  """
  return tf.nn.max_pool2d(x, 1, strides=stride, padding='VALID') if stride > 1 else x


class PreactBottleneck(tf.keras.layers.Layer):
  """A ResNet-v2 bottleneck unit: BN-ReLU, 1x1, BN-ReLU, 3x3, BN-ReLU, 1x1, + shortcut.

  The projection shortcut (first unit of a block) reads the pre-activation, as in
  He et al. 2016 and Keras' `block2`; identity shortcuts subsample when strided.
  """

  def __init__(self, width: int, projection: bool, bn_momentum: float, bn_epsilon: float, **kwargs):
    super().__init__(**kwargs)
    self.width = width
    self.projection = projection
    policy = self.dtype_policy

    def bn(name):
      return tf.keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=name, dtype=policy)

    self.preact_bn = bn('preact_bn')
    self.shortcut_conv = tf.keras.layers.Conv2D(4 * width, 1, name='0_conv', dtype=policy) if projection else None
    self.conv1 = tf.keras.layers.Conv2D(width, 1, use_bias=False, name='1_conv', dtype=policy)
    self.bn1 = bn('1_bn')
    self.conv2 = AtrousConv2D(width, 3, name='2_conv', dtype=policy)
    self.bn2 = bn('2_bn')
    self.conv3 = tf.keras.layers.Conv2D(4 * width, 1, name='3_conv', dtype=policy)

  def call(self, inputs, training=None, stride: int = 1, rate: int = 1):
    preact = tf.nn.relu(self.preact_bn(inputs, training=training))
    if self.shortcut_conv is not None:
      shortcut = self.shortcut_conv(_subsample(preact, stride))
    else:
      shortcut = _subsample(inputs, stride)
    x = tf.nn.relu(self.bn1(self.conv1(preact), training=training))
    x = tf.nn.relu(self.bn2(self.conv2(x, stride=stride, rate=rate), training=training))
    return shortcut + self.conv3(x)


class ResNetV2Trunk(tf.keras.Model):
  """The shared trunk: ResNet-v2 stem and blocks 1-3, returning named endpoints."""

  # The trunk registry's interface (`mtssl_tf.trunk.registry`): the output stride is chosen
  # per call, and block-3 units can be lasso-mixed.
  kind = 'resnet_v2'
  fixed_stride = None
  supports_lasso = True

  def __init__(self, config: TrunkConfig, precision: str = 'float32', name: str = 'trunk', **kwargs):
    """Builds the layers (variables are created on first call).

    Args:
      config: a validated `TrunkConfig`.
      precision: Keras dtype policy name, e.g. 'float32' or 'mixed_bfloat16'.
      name: model name (prefix of variable names).
      **kwargs: passed to `tf.keras.Model`.
    """
    super().__init__(name=name, dtype=precision, **kwargs)
    self.config = config
    policy = self.dtype_policy
    self.stem_conv = tf.keras.layers.Conv2D(
      config.width, 7, strides=2, padding='valid', name='conv1_conv', dtype=policy
    )
    self.blocks: List[List[PreactBottleneck]] = []
    for b, units in enumerate(config.units_per_block):
      width = config.width * 2**b
      self.blocks.append(
        [
          PreactBottleneck(
            width,
            projection=(u == 0),
            bn_momentum=config.batch_norm_momentum,
            bn_epsilon=config.batch_norm_epsilon,
            name=f'conv{b + 2}_block{u + 1}',
            dtype=policy,
          )
          for u in range(units)
        ]
      )
    self.post_bn = None
    if config.final_activation:
      self.post_bn = tf.keras.layers.BatchNormalization(
        momentum=config.batch_norm_momentum, epsilon=config.batch_norm_epsilon, name='block3_post_bn', dtype=policy
      )

  @property
  def output_channels(self) -> int:
    """Channels of every block-3 endpoint (1024 for ResNet-101)."""
    return 4 * self.config.width * 4

  @property
  def first_conv(self) -> tf.keras.layers.Layer:
    """The stem's 7x7 convolution (the registry's interface)."""
    return self.stem_conv

  @property
  def first_norm(self):
    """None: a pre-activation stem has no BatchNorm of its own after conv1."""
    return None

  @property
  def endpoint_names(self) -> Tuple[str, ...]:
    """Names `call` returns: stem, block1..block3, every block-3 unit, final."""
    units = tuple(unit_endpoint_name(i + 1) for i in range(self.num_units))
    return ('stem', 'block1', 'block2', 'block3') + units + ('final',)

  @property
  def num_units(self) -> int:
    """Number of block-3 units, the M of lasso's N x M alpha."""
    return self.config.units_per_block[2]

  def call(
    self, images, training=None, output_stride: Optional[int] = None, final: bool = True
  ) -> Dict[str, tf.Tensor]:
    """Runs the trunk.

    Args:
      images: float [batch, height, width, 3], already normalised by the task.
      training: BatchNorm mode.
      output_stride: overrides the config's output stride for this call.
      final: compute the `final` endpoint. A lasso consumer whose mix takes block 3's
        place before the closing BatchNorm (`lasso.final_activation`) leaves it out, so
        that BatchNorm's statistics are those of the mixes alone.

    Returns:
      Dict of endpoint name -> tensor (see the module docstring).
    """
    schedule = unit_schedule(self.config.units_per_block, output_stride or self.config.output_stride)
    x = tf.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]])
    x = self.stem_conv(x)
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    x = tf.nn.max_pool2d(x, 3, strides=2, padding='VALID')
    endpoints = {'stem': x}
    for b, (block, strides) in enumerate(zip(self.blocks, schedule)):
      for u, (unit, (stride, rate)) in enumerate(zip(block, strides)):
        x = unit(x, training=training, stride=stride, rate=rate)
        if b == 2:
          endpoints[unit_endpoint_name(u + 1)] = x
      endpoints[f'block{b + 1}'] = x
    if final:
      endpoints['final'] = x if self.post_bn is None else tf.nn.relu(self.post_bn(x, training=training))
    return endpoints

  def block3_units(self, endpoints: Dict[str, tf.Tensor]) -> List[tf.Tensor]:
    """The block-3 unit outputs of `endpoints`, in order (lasso's inputs)."""
    return [endpoints[unit_endpoint_name(i + 1)] for i in range(self.num_units)]


def build_trunk(config: TrunkConfig, precision: str = 'float32', image_size: int = 224) -> ResNetV2Trunk:
  """Creates the trunk and its variables by tracing one small symbolic call.

  Args:
    config: trunk config.
    precision: Keras dtype policy name.
    image_size: spatial size used for the build call (variables do not depend on it).

  Returns:
    A built `ResNetV2Trunk`.
  """
  trunk = ResNetV2Trunk(config, precision=precision)
  trunk(tf.zeros([1, image_size, image_size, 3]), training=False)
  return trunk


def copy_keras_weights(trunk: ResNetV2Trunk, keras_model: tf.keras.Model) -> int:
  """Copies weights of a tf.keras.applications ResNetV2 into `trunk`.

  Works for any Keras ResNet50V2/101V2/152V2 whose first three stages have at least
  as many units as the trunk; layer names are shared (`conv4_block3_2_conv`).
  Loading ImageNet weights from a local .h5 (no download) gives the "ImageNet
  labels" trunk: `ResNet101V2(weights='/path/to/file.h5', include_top=False)`.

  Args:
    trunk: a built trunk.
    keras_model: the Keras model to read.

  Returns:
    Number of layers copied.

  Raises:
    ValueError: a trunk layer has no counterpart or a different shape in `keras_model`.
  """
  copied = 0
  pairs = [(trunk.stem_conv, 'conv1_conv')]
  for block in trunk.blocks:
    for unit in block:
      for layer in (unit.preact_bn, unit.shortcut_conv, unit.conv1, unit.bn1, unit.conv2, unit.bn2, unit.conv3):
        if layer is not None:
          pairs.append((layer, f'{unit.name}_{layer.name}'))
  for layer, keras_name in pairs:
    try:
      source = keras_model.get_layer(keras_name)
    except ValueError:
      raise ValueError(f'Keras model {keras_model.name!r} has no layer {keras_name!r}') from None
    weights = source.get_weights()
    expected = [tuple(w.shape) for w in layer.get_weights()]
    if [tuple(w.shape) for w in weights] != expected:
      raise ValueError(f'layer {keras_name!r}: Keras shapes {[w.shape for w in weights]} != trunk shapes {expected}')
    layer.set_weights(weights)
    copied += 1
  return copied
