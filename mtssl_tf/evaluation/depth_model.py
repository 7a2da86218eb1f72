"""The NYU depth evaluation's network, loss and metrics (Laina et al. 2016, "FCRN").

Network (Doersch & Zisserman 2017 §5 put FCRN's decoder on their block-3 trunk):
block-3 features (`final`, or a lasso mix of every block-3 unit) -> 1x1 conv to 1024
+ BN (FCRN's `layer1`) -> up-projections with 512, 256, 128 filters -> 3x3 conv to one
channel, the depth in metres. FCRN's ResNet-50 has output stride 32 and four
up-projections; the trunk here has stride 16, so three (Doersch). Each up-projection
doubles the resolution, so with stride 16 the prediction is at stride 16 / 2^3 = 2: half
the input resolution, rounded up as the trunk rounds (ceil(228 / 16) * 8 = 120 by
ceil(304 / 16) * 8 = 152 for FCRN's 228 x 304 input; see `resize_prediction`). Loss and
metrics compare it bilinearly upsampled to the ground truth's size.

An up-projection (FCRN Fig. 2): 2x unpooling (each value to the top-left of a 2x2 block
of zeros), then branch A = 5x5 conv, ReLU, 3x3 conv and branch B = 5x5 conv, summed, ReLU.
FCRN's released code puts a BatchNorm after every conv; so does this one. The 5x5 conv
of the zero-interleaved map runs in FCRN's fast form: four small convs of the low
resolution map (3x3, 3x2, 2x3, 2x2 sub-kernels of the 5x5 one), interleaved, exactly
equal and 4x cheaper.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.trunk import lasso as lasso_lib
from mtssl_tf.trunk.lasso import LassoMix
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

# FCRN: c = 1/5 of the largest absolute residual of the batch.
BERHU_FRACTION = 0.2
METRIC_NAMES = ('delta1', 'delta2', 'delta3', 'abs_rel', 'rms', 'log10')


def unpool(x: tf.Tensor) -> tf.Tensor:
  """FCRN's 2x unpooling: each value to the top-left of a 2x2 block, zeros elsewhere."""
  zeros = tf.zeros_like(x)
  # depth_to_space takes channel group (dy * 2 + dx) to offset (dy, dx): x lands at (0, 0).
  return tf.nn.depth_to_space(tf.concat([x, zeros, zeros, zeros], axis=-1), 2)


class UnpoolConv(tf.keras.layers.Layer):
  """`conv5x5(unpool(x))` ('SAME', no bias) computed in FCRN's fast interleaved form."""

  def __init__(self, filters: int, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters

  def build(self, input_shape):
    self.kernel = self.add_weight(
      'kernel', shape=(5, 5, int(input_shape[-1]), self.filters), initializer='glorot_uniform', trainable=True
    )
    super().build(input_shape)

  def call(self, x):
    # Output row 2i + dy only meets non-zero unpooled rows through kernel rows dy, dy + 2,
    # ...: input rows i-1..i+1 for dy = 0 (3 taps), i..i+1 for dy = 1 (2 taps); same for
    # columns. With one pixel of padding, the window of offset dy starts at padded row dy.
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    outputs = []
    for dy in (0, 1):
      for dx in (0, 1):
        window = padded[:, dy : height + 2, dx : width + 2]
        outputs.append(tf.nn.conv2d(window, self.kernel[dy::2, dx::2], strides=1, padding='VALID'))
    return tf.nn.depth_to_space(tf.concat(outputs, axis=-1), 2)

  def slow(self, x):
    """The same map computed literally (unpool, then a 5x5 conv): for tests."""
    return tf.nn.conv2d(unpool(x), self.kernel, strides=1, padding='SAME')


class UpProjection(tf.keras.layers.Layer):
  """FCRN's up-projection block: output [B, 2H, 2W, filters]."""

  def __init__(self, filters: int, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    # Both branches start with a 5x5 conv of the same unpooled input: one conv with
    # 2 x filters and one (per-channel, so equivalent) BN serve both.
    self.unpool_conv = UnpoolConv(2 * filters, name='unpool_conv')
    self.unpool_bn = tf.keras.layers.BatchNormalization(name='unpool_bn')
    self.conv = tf.keras.layers.Conv2D(filters, 3, padding='same', use_bias=False, name='conv')
    self.bn = tf.keras.layers.BatchNormalization(name='bn')

  def call(self, x, training=None):
    both = self.unpool_bn(self.unpool_conv(x), training=training)
    branch_a, branch_b = both[..., : self.filters], both[..., self.filters :]
    branch_a = self.bn(self.conv(tf.nn.relu(branch_a)), training=training)
    return tf.nn.relu(branch_a + branch_b)


def resize_prediction(prediction: tf.Tensor, input_size, output_size, stride: int) -> tf.Tensor:
  """Bilinearly resizes a [B, h, w] prediction of an input of `input_size` to `output_size`.

  The trunk rounds sizes up (ceil(H / 16) rows), so the prediction covers
  `h * stride` >= H input rows. It is first brought to that padded extent, cropped to the
  input, then resized to the ground truth, so a pixel lands where its input pixel was.
  """
  size = tf.shape(prediction)[1:3] * stride
  x = tf.image.resize(prediction[..., None], size, method='bilinear')[:, : input_size[0], : input_size[1]]
  known_in, known_out = tf.get_static_value(input_size), tf.get_static_value(output_size)
  # Skipped only when provably the same size (training); otherwise a same-size bilinear
  # resize is an exact copy anyway.
  if known_in is None or known_out is None or tuple(known_in) != tuple(known_out):
    x = tf.image.resize(x, output_size, method='bilinear')
  return x[..., 0]


class DepthModel(tf.keras.Model):
  """Trunk + FCRN decoder; `call` returns depth [B, h, w] at `prediction_stride`."""

  def __init__(
    self,
    trunk: ResNetV2Trunk,
    projection_filters: int = 1024,
    upproject_filters: Sequence[int] = (512, 256, 128),
    fine_tune_trunk: bool = True,
    use_lasso: bool = False,
    lasso_l1_weight: float = 1e-3,
    lasso_init: str = 'last',
    lasso_mix_norm: str = 'trunk',
    name: str = 'depth_model',
    **kwargs,
  ):
    """Creates the decoder around a built trunk.

    Args:
      trunk: the (pre-trained) trunk; frozen in place (`trainable = False`) unless fine-tuned.
      projection_filters: channels of the 1x1 conv after the trunk (FCRN: 1024).
      upproject_filters: filters of each up-projection (Doersch: 512, 256, 128).
      fine_tune_trunk: train the trunk too (its BatchNorms then use batch statistics).
      use_lasso: read a learned lasso mix of every block-3 unit instead of `final`.
      lasso_l1_weight: L1 weight on the evaluation's alpha row.
      lasso_init: 'last' or 'uniform' (see `lasso.initial_alpha`).
      lasso_mix_norm: 'trunk' (the mix, in block 3's place, goes through the trunk's
        closing BN-ReLU) or 'per_consumer' (a new BN-ReLU); see `LassoConfig.mix_norm`.
      name: model name.
      **kwargs: passed to `tf.keras.Model`.

    Raises:
      ValueError: more up-projections than the trunk's stride allows, or lasso on a
        stride-32 trunk (its block-3 units differ in size).
    """
    super().__init__(name=name, **kwargs)
    output_stride = trunk.config.output_stride
    if 2 ** len(upproject_filters) > output_stride:
      raise ValueError(f'{len(upproject_filters)} up-projections exceed the trunk output stride {output_stride}')
    if use_lasso and output_stride == 32:
      raise ValueError('lasso needs block-3 units of one size: use a trunk output stride of 8 or 16')
    self.trunk = trunk
    self.fine_tune_trunk = fine_tune_trunk
    trunk.trainable = fine_tune_trunk
    self.prediction_stride = output_stride // 2 ** len(upproject_filters)
    self.lasso = None
    self.lasso_norm = None
    if use_lasso:
      self.lasso = LassoMix(1, trunk.num_units, lasso_l1_weight, lasso_init, consumer_names=['depth'], name='lasso')
      self.lasso_norm = lasso_lib.consumer_norm(lasso_mix_norm, 'lasso_bn')
    self.projection = tf.keras.layers.Conv2D(projection_filters, 1, name='projection')
    self.projection_bn = tf.keras.layers.BatchNormalization(name='projection_bn')
    self.up_projections = [UpProjection(f, name=f'up_projection_{i + 1}') for i, f in enumerate(upproject_filters)]
    self.predict_conv = tf.keras.layers.Conv2D(1, 3, padding='same', name='prediction')

  def features(self, images: tf.Tensor, training=None) -> tf.Tensor:
    """Block-3 features (float32) the decoder reads."""
    trunk_training = bool(training) and self.fine_tune_trunk
    # A 'trunk' lasso mix takes block 3's place before the closing BN-ReLU, which then sees only it.
    final = self.lasso is None or self.lasso_norm is not None
    endpoints = self.trunk(images, training=trunk_training, final=final)
    if self.lasso is None:
      return tf.cast(endpoints['final'], tf.float32)
    mixed = self.lasso(self.trunk.block3_units(endpoints), consumer=0)
    if self.lasso_norm is not None:
      return tf.nn.relu(self.lasso_norm(tf.cast(mixed, tf.float32), training=training))
    return tf.cast(lasso_lib.final_activation(self.trunk, mixed, trunk_training), tf.float32)

  def call(self, images, training=None):
    x = self.projection_bn(self.projection(self.features(images, training)), training=training)
    for block in self.up_projections:
      x = block(x, training=training)
    return self.predict_conv(x)[..., 0]

  def predict_at(self, images: tf.Tensor, output_size, training=None) -> tf.Tensor:
    """Depth [B, *output_size] for trunk-ready images, upsampled from the prediction."""
    # The static size when known, so resize_prediction can skip a same-size resize.
    input_size = tuple(images.shape[1:3]) if images.shape[1:3].is_fully_defined() else tf.shape(images)[1:3]
    return resize_prediction(self(images, training=training), input_size, output_size, self.prediction_stride)

  def penalty(self) -> tf.Tensor:
    """The lasso L1 penalty of this evaluation's alpha row (0 without lasso)."""
    return self.lasso.penalty(0) if self.lasso is not None else tf.constant(0.0)


def reverse_huber(x: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
  """berHu, elementwise: |x| if |x| <= c, else (x^2 + c^2) / (2c)."""
  abs_x = tf.abs(x)
  # The quadratic branch is only taken where |x| > c >= 0, so c > 0 there; the floor keeps
  # the untaken branch finite (no NaN gradient through tf.where) when c is 0.
  quadratic = (tf.square(x) + tf.square(c)) / (2.0 * tf.maximum(c, 1e-12))
  return tf.where(abs_x <= c, abs_x, quadratic)


def valid_mask(depth: tf.Tensor, valid: Optional[tf.Tensor] = None, max_depth: float = 10.0) -> tf.Tensor:
  """Pixels with ground truth: depth in (0, max_depth] (and `valid`, if given)."""
  mask = (depth > 0) & (depth <= max_depth)
  return mask & tf.cast(valid, tf.bool) if valid is not None else mask


def berhu_loss(prediction: tf.Tensor, depth: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
  """Mean berHu over the valid pixels of a batch, c = 0.2 max |residual| over them (FCRN).

  Args:
    prediction: [B, H, W] depth.
    depth: [B, H, W] ground truth, same size.
    mask: [B, H, W] bool, the pixels that count.

  Returns:
    Scalar loss; 0 for a batch without valid pixels.
  """
  mask = tf.cast(mask, tf.bool)
  residual = tf.where(mask, tf.cast(prediction, tf.float32) - depth, 0.0)
  # c is a batch statistic, not a path for gradients (FCRN treats it as a constant).
  c = tf.stop_gradient(BERHU_FRACTION * tf.reduce_max(tf.abs(residual)))
  per_pixel = tf.where(mask, reverse_huber(residual, c), 0.0)
  return tf.math.divide_no_nan(tf.reduce_sum(per_pixel), tf.reduce_sum(tf.cast(mask, tf.float32)))


def metric_sums(
  prediction: tf.Tensor, depth: tf.Tensor, mask: tf.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0
) -> Dict[str, tf.Tensor]:
  """Per-batch sums (float64) from which every metric of the test set follows.

  Predictions are clipped to [min_depth, max_depth] first, so ratios and logs are defined.

  Returns:
    {'pixels', 'delta1', 'delta2', 'delta3' (pixel counts), 'abs_rel', 'squared_error',
    'log10' (sums over the masked pixels)}.
  """
  mask = tf.cast(mask, tf.bool)
  pred = tf.cast(tf.boolean_mask(tf.clip_by_value(prediction, min_depth, max_depth), mask), tf.float64)
  gt = tf.cast(tf.boolean_mask(depth, mask), tf.float64)
  ratio = tf.maximum(pred / gt, gt / pred)
  log10 = tf.abs(tf.math.log(pred) - tf.math.log(gt)) / np.log(10.0)
  sums = {'pixels': tf.cast(tf.size(gt), tf.float64)}
  for k in (1, 2, 3):
    sums[f'delta{k}'] = tf.reduce_sum(tf.cast(ratio < 1.25**k, tf.float64))
  sums['abs_rel'] = tf.reduce_sum(tf.abs(pred - gt) / gt)
  sums['squared_error'] = tf.reduce_sum(tf.square(pred - gt))
  sums['log10'] = tf.reduce_sum(log10)
  return sums


def metrics_from_sums(sums: Dict[str, float]) -> Dict[str, float]:
  """delta1-3 (fractions), abs_rel, rms (metres), log10 from accumulated `metric_sums`."""
  n = float(sums['pixels'])
  if n <= 0:
    raise ValueError('depth metrics: no valid ground-truth pixels were evaluated')
  out = {f'delta{k}': float(sums[f'delta{k}']) / n for k in (1, 2, 3)}
  out['abs_rel'] = float(sums['abs_rel']) / n
  out['rms'] = float(np.sqrt(float(sums['squared_error']) / n))
  out['log10'] = float(sums['log10']) / n
  return out


class DepthMetrics:
  """Accumulates `metric_sums` over batches (float64 on the host): exact test-set metrics."""

  def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0):
    self.min_depth = min_depth
    self.max_depth = max_depth
    self.sums: Dict[str, float] = {}

  def add(self, sums: Dict[str, tf.Tensor]) -> None:
    """Adds one batch's `metric_sums`."""
    for key, value in sums.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)

  def update(self, prediction, depth, mask) -> None:
    """Adds a batch given as prediction, ground truth and mask."""
    self.add(metric_sums(prediction, depth, mask, self.min_depth, self.max_depth))

  @property
  def pixels(self) -> int:
    """Pixels evaluated so far."""
    return int(self.sums.get('pixels', 0))

  def result(self) -> Dict[str, float]:
    """The metrics over everything added (see `metrics_from_sums`)."""
    return metrics_from_sums(self.sums or {'pixels': 0})


def prediction_size(input_size: Tuple[int, int], output_stride: int, num_upprojections: int) -> Tuple[int, int]:
  """The prediction's (h, w) for an input size: ceil(size / stride) * 2^num_upprojections."""
  return tuple(-(-s // output_stride) * 2**num_upprojections for s in input_size)
