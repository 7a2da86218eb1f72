"""FCN-32s networks for `voc12_seg`: an AlexNet student's or a ResNet-v2 trunk's layers under an FCN head.

The AlexNet network is voc-fcn-alexnet of shelhamer/fcn.berkeleyvision.org (`net.py`,
`surgery.py`), the FCN-AlexNet of Long et al. 2015:

* conv1 sees the image zero-padded by 100 pixels (`conv_relu(n.data, 11, 96, stride=4,
  pad=100)`; zero is the mean colour after the input convention), so that any image
  leaves a score map; conv1 itself is unpadded, conv2..conv5 keep their symmetric pads
  (2, 1, 1, 1), and the 3x3/2 max pools round their output size up as Caffe's do (their
  input is >= 0 after ReLU, so padding the far edge with zeros is exact).
* fc6 is a 6x6 convolution on pool5 and fc7 a 1x1 one ("fully conv"), ReLU and dropout
  0.5 after each; score_fr is a 1x1 convolution to 21 classes, zero-initialised (Caffe's
  default filler; Long et al. §4.3: "zero-initialize the class scoring layer").
* upscore is a 63x63 / stride-32 transposed convolution without bias, set to bilinear
  interpolation (`surgery.interp`) and never trained (lr_mult 0); `crop` takes the
  H x W window at the offset where upscore's pixels line up with the input's (18 for
  this network, from the layers' coordinate maps, `crop_offset`).

The conv layers (and their BatchNorms, if the student has them) are copied from the
student; fc6/fc7 are drawn afresh like voc07_cls's (Noroozi §5: fully connected layers
randomly initialised) or, with `copy_fc`, copied from the student's fc layers reshaped
into convolutions (`surgery.transplant`'s coercion), which needs fc6_kernel = the
student's pool5 side. For the ResNet-v2 trunk (blocks 1-3) the head is our documented
choice: score_fr on `final`, a bilinear 2s x 2s / stride-s upsampling (s the trunk's
output stride) and a crop at s / 2, the centre alignment of 'same'-padded layers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.trunk.alexnet import LRN_AFTER, POOLED

# (kernel, stride, pad) of each layer from the input to score_fr in voc-fcn-alexnet/net.py; fc6's kernel is a config.
ALEXNET_GEOMETRY = ((11, 4, 100), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0))
ALEXNET_STRIDE = 32
CONV_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
  """float32 [size, size, channels, channels]: bilinear upsampling per channel (surgery.upsample_filt, diagonal)."""
  factor = (size + 1) // 2
  centre = factor - 1 if size % 2 == 1 else factor - 0.5
  grid = np.arange(size, dtype=np.float64)
  profile = 1 - np.abs(grid - centre) / factor
  kernel = np.zeros((size, size, channels, channels), np.float32)
  for c in range(channels):
    kernel[:, :, c, c] = np.outer(profile, profile)
  return kernel


def crop_offset(layers: Sequence[Tuple[int, int, int]], up_kernel: int, up_stride: int) -> int:
  """Where the upsampled score map's pixel 0 sits in the input (Caffe's coord_map for `crop`).

  A layer (kernel k, stride s, pad p) maps output x to input s x + (k - 1) / 2 - p; the
  chain gives input = a x + b with a = the product of strides, and the transposed
  convolution maps its output y to score map (y - (up_kernel - 1) / 2) / up_stride.

  Raises:
    ValueError: the strides do not multiply to `up_stride` or the offset is not a whole pixel.
  """
  scale, shift = 1.0, 0.0
  for kernel, stride, pad in layers:
    shift += scale * ((kernel - 1) / 2 - pad)
    scale *= stride
  offset = (up_kernel - 1) / 2 - shift
  if scale != up_stride or offset != int(offset):
    raise ValueError(f'FCN crop: layers of total stride {scale} and offset {offset} do not fit a stride-{up_stride} '
                     f'{up_kernel}-pixel upsampling')  # fmt: skip
  return int(offset)


def _max_pool_ceil(x: tf.Tensor) -> tf.Tensor:
  """3x3/2 max pool with Caffe's output size ceil((n - 3) / 2) + 1; `x` >= 0, so zero padding is exact."""
  shape = tf.shape(x)
  pad_h, pad_w = (shape[1] - 3) % 2, (shape[2] - 3) % 2
  x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
  return tf.nn.max_pool2d(x, 3, 2, 'VALID')


class Upsample(tf.keras.layers.Layer):
  """Fixed bilinear transposed convolution (upscore) followed by the crop to the input's size."""

  def __init__(self, num_classes: int, kernel: int, stride: int, offset: int, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.kernel_size, self.stride, self.offset, self.num_classes = kernel, stride, offset, num_classes
    self.filters = tf.constant(bilinear_kernel(kernel, num_classes))

  def call(self, scores: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    scores = tf.cast(scores, tf.float32)
    shape = tf.shape(scores)
    out_h = (shape[1] - 1) * self.stride + self.kernel_size
    out_w = (shape[2] - 1) * self.stride + self.kernel_size
    up = tf.nn.conv2d_transpose(scores, self.filters, tf.stack([shape[0], out_h, out_w, self.num_classes]),
                                self.stride, 'VALID')  # fmt: skip
    enough = tf.logical_and(out_h >= self.offset + size[0], out_w >= self.offset + size[1])
    with tf.control_dependencies([tf.debugging.Assert(enough, ['FCN: the score map does not cover the image'])]):
      return up[:, self.offset : self.offset + size[0], self.offset : self.offset + size[1]]


def _fresh(layer: tf.keras.layers.Layer, stddev: float, bias: float, seed: int) -> None:
  layer.kernel.assign(tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed)(layer.kernel.shape))
  if layer.bias is not None:
    layer.bias.assign(tf.fill(layer.bias.shape, bias))


class AlexNetFCN(tf.keras.Model):
  """FCN-AlexNet (module docstring) on a student AlexNet's conv layers; images uint8 -> logits [B, H, W, C].

  `student` is a transfer student AlexNet or an AlexNet trunk (`trunk.alexnet.AlexNet`).
  The conv layers are clones of its (same filters, kernels, groups and padding, but conv1
  unpadded at stride 4: the 100-pixel pad replaces its padding) holding copies of its
  weights, run in CaffeNet's order (`trunk.alexnet`): conv, BatchNorm if the student has
  it, ReLU, the Caffe pool after conv1/conv2/conv5, then LRN after pool1/pool2 when the
  student has no BatchNorm.
  """

  def __init__(self, student, cfg):
    super().__init__(name='fcn_alexnet')
    self.batch_norm = bool(student.batch_norm)
    self.frozen_statistics = cfg.freeze_bn_statistics
    self.input_pad = cfg.input_pad
    self.convs, self.norms = {}, {}
    for name in CONV_NAMES:
      config = dict(student.convs[name].get_config(), name=name)
      if name == 'conv1':
        # Standard AlexNet's conv1 (stride 4) under the 100-px pad, also for a Jigsaw tile network's stride-2 conv1,
        # whose weights Noroozi §5 fine-tune in the standard network.
        config.update(padding='valid', strides=(ALEXNET_GEOMETRY[0][1],) * 2)
      self.convs[name] = tf.keras.layers.Conv2D.from_config(config)
      if name in student.norms:
        self.norms[name] = tf.keras.layers.BatchNormalization.from_config(student.norms[name].get_config())
    width = getattr(student, 'width', student.convs['conv1'].filters / 96)
    units = student.fcs['fc6'].units if cfg.copy_fc else max(1, round(cfg.fc_units * width))
    self.fcs = {'fc6': tf.keras.layers.Conv2D(units, cfg.fc6_kernel, padding='valid', use_bias=not self.batch_norm,
                                              name='fc6'),
                'fc7': tf.keras.layers.Conv2D(units, 1, use_bias=not self.batch_norm, name='fc7')}  # fmt: skip
    if self.batch_norm:
      for fc in self.fcs:
        self.norms[fc] = tf.keras.layers.BatchNormalization(name=f'{fc}_bn')
    self.dropout = tf.keras.layers.Dropout(cfg.dropout)
    self.score_fr = tf.keras.layers.Conv2D(cfg.num_classes, 1, kernel_initializer='zeros', name='score_fr')
    geometry = ((11, 4, cfg.input_pad),) + ALEXNET_GEOMETRY[1:] + ((cfg.fc6_kernel, 1, 0),)
    kernel = 2 * ALEXNET_STRIDE - 1  # net.py: kernel_size=63, stride=32.
    self.upscore = Upsample(cfg.num_classes, kernel, ALEXNET_STRIDE, crop_offset(geometry, kernel, ALEXNET_STRIDE))
    self(tf.zeros([1, 8, 8, 3], tf.uint8), training=False)
    self._copy(student, cfg)

  def _copy(self, student, cfg) -> None:
    for name in CONV_NAMES:  # Copied: the conv layers (and their BatchNorms) of the evaluated network.
      self.convs[name].set_weights(student.convs[name].get_weights())
      if name in self.norms:
        self.norms[name].set_weights(student.norms[name].get_weights())
    for fc, layer in self.fcs.items():
      if cfg.copy_fc:
        dense = student.fcs[fc].get_weights()
        try:
          layer.set_weights([dense[0].reshape(layer.kernel.shape)] + dense[1:])
        except ValueError as e:
          raise ValueError(f'voc12_seg.copy_fc: the student\'s {fc} {dense[0].shape} does not fit a '
                           f'{layer.kernel.shape} convolution (set fc6_kernel to its pool5 side): '
                           f'{e}') from None  # fmt: skip
        if fc in self.norms:
          self.norms[fc].set_weights(student.norms[fc].get_weights())
      else:
        _fresh(layer, cfg.init_stddev, cfg.init_bias, cfg.seed)

  def _layer(self, name: str, layer, x, training, taps=None):
    y = layer(x)
    if taps is not None:
      taps[name] = (x, y)
    if name in self.norms:
      y = self.norms[name](y, training=training and not self.frozen_statistics)
    return tf.nn.relu(y)

  def weight_layers(self) -> Dict[str, tf.keras.layers.Layer]:
    """conv1..conv5, fc6, fc7 in network order (score_fr starts at zero, as FCN's): `trunk.data_init`'s interface."""
    return {**{name: self.convs[name] for name in CONV_NAMES}, **self.fcs}

  def call(self, images, training=None):
    return self.forward(images, training)

  def forward(self, images, training=None, taps=None):
    """`call`; with `taps`, records {layer: (input, output before BatchNorm and ReLU)} (`trunk.data_init`)."""
    from mtssl_tf.trunk.inputs import preprocess

    size = tf.shape(images)[1:3]
    p = self.input_pad
    x = tf.pad(preprocess(images, 'rgb'), [[0, 0], [p, p], [p, p], [0, 0]])
    for name in CONV_NAMES:
      x = self._layer(name, self.convs[name], x, training, taps)
      if name in POOLED:
        x = _max_pool_ceil(x)
        if name in LRN_AFTER and not self.batch_norm:
          # As trunk.alexnet: Caffe's LRN (size 5, alpha 1e-4, beta 0.75; TF's alpha per element), in float32.
          normed = tf.nn.local_response_normalization(tf.cast(x, tf.float32), depth_radius=2, bias=1.0,
                                                      alpha=1e-4 / 5, beta=0.75)  # fmt: skip
          x = tf.cast(normed, x.dtype)
    for fc in ('fc6', 'fc7'):
      x = self.dropout(self._layer(fc, self.fcs[fc], x, training, taps), training=training)
    return self.upscore(self.score_fr(x), size)


class TrunkFCN(tf.keras.Model):
  """ResNet-v2 trunk -> score_fr on `final` -> bilinear x s upsampling and crop (module docstring)."""

  def __init__(self, trunk, cfg, to_input: Callable[[tf.Tensor], tf.Tensor]):
    super().__init__(name='fcn_trunk')
    self.trunk = trunk
    self._to_input = to_input
    self.frozen_statistics = cfg.freeze_bn_statistics
    probe = 64
    side = int(trunk(to_input(tf.zeros([1, probe, probe, 3], tf.uint8)), training=False)['final'].shape[1])
    self.stride = probe // side
    self.score_fr = tf.keras.layers.Conv2D(cfg.num_classes, 1, kernel_initializer='zeros', name='score_fr',
                                           dtype='float32')  # fmt: skip
    self.upscore = Upsample(cfg.num_classes, 2 * self.stride, self.stride, self.stride // 2)
    self(tf.zeros([1, 8, 8, 3], tf.uint8), training=False)

  def call(self, images, training=None):
    size = tf.shape(images)[1:3]
    s = self.stride
    pad = (s - size % s) % s  # Bottom and right, so the score map covers the image.
    x = tf.pad(self._to_input(images), [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])
    final = self.trunk(x, training=training and not self.frozen_statistics)['final']
    return self.upscore(self.score_fr(tf.cast(final, tf.float32)), size)


def layer_multipliers(model: tf.keras.Model, variables: List[tf.Variable], bias_lr: float) -> Dict[str, Any]:
  """Caffe's per-parameter lr and decay multipliers of net.py: score_fr's bias x`bias_lr`, undecayed; the rest 1, 1.

  Only kernels and biases are decayed (BatchNorm scales and offsets, which the reference
  does not have, are not).
  """
  bias = {id(model.score_fr.bias)}
  lr = [bias_lr if id(v) in bias else 1.0 for v in variables]
  decayed = [id(v) not in bias and ('kernel' in v.name or 'bias' in v.name) for v in variables]
  return {'lr': lr, 'decayed': decayed}
