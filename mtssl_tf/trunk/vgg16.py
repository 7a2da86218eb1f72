"""VGG16 trunk with named endpoints (Simonyan & Zisserman 2015, configuration D).

Noroozi et al. 2018 (§5, Table 3 "CC+vgg-") pre-train their pretext tasks on VGG16 and
transfer the knowledge into AlexNet by clustering its conv4 features. The network
(Simonyan & Zisserman 2015, Table 1 column D; Caffe's VGG_ILSVRC_16_layers):

* five blocks of 3x3 convolutions, stride 1, padding 1, with 64, 128, 256, 512, 512
  channels and 2, 2, 3, 3, 3 convolutions; ReLU after each;
* a 2x2/2 max pool after each block (pool1..pool5; 224 px -> 7x7 at pool5);
* fc6 4096, fc7 4096 with ReLU and dropout 0.5 (§3.1 of the paper), optional here.

`call` returns conv1_1..conv5_3 (after ReLU), pool1..pool5 and, when built with fully
connected layers, fc6 and fc7. `width` scales every channel count for tiny tests;
`batch_norm` adds BatchNorm after every conv and fc (not in the paper; for small-world
training from scratch, which the paper did by stage-wise initialisation instead).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from mtssl_tf.trunk.alexnet import caffe_max_pool, caffe_pool_size, scaled

# (filters, convolutions) per block: Simonyan & Zisserman 2015, Table 1, configuration D.
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
KERNEL = 3  # §2.1: 3x3 receptive fields, stride 1, padding 1 ('same').
POOL_KERNEL, POOL_STRIDE = 2, 2  # §2.1: max-pooling over a 2x2 window with stride 2.
FC_UNITS = (4096, 4096)  # §2.1: the first two FC layers have 4096 channels each.
DROPOUT = 0.5  # §3.1: dropout ratio 0.5 on the first two fully connected layers.
INPUT_SIZE = 224  # §2.1: a fixed-size 224x224 RGB image.


def conv_names() -> Tuple[str, ...]:
  """conv1_1, conv1_2, conv2_1, ..., conv5_3."""
  return tuple(f'conv{b + 1}_{i + 1}' for b, (_, n) in enumerate(BLOCKS) for i in range(n))


def endpoint_sizes(input_size: int = INPUT_SIZE) -> Dict[str, int]:
  """Spatial size of every conv and pool endpoint for a square input (224 -> conv1_* 224 ... pool5 7)."""
  sizes, size = {}, input_size
  for b, (_, n) in enumerate(BLOCKS):
    for i in range(n):
      sizes[f'conv{b + 1}_{i + 1}'] = size
    size = caffe_pool_size(size, POOL_KERNEL, POOL_STRIDE)
    sizes[f'pool{b + 1}'] = size
  return sizes


def parameter_count(
  width: float = 1.0, batch_norm: bool = False, fc_units: Sequence[int] = FC_UNITS, input_size: int = INPUT_SIZE
) -> int:
  """Parameters `VGG16(...)` creates, computed from the layer specs without building it.

  Args:
    width: channel multiplier, as `VGG16`.
    batch_norm: as `VGG16` (BatchNorm: no biases, 4 values per channel).
    fc_units: as `VGG16`.
    input_size: square input side (fc6's fan-in depends on it).

  Returns:
    The count; `VGG16(...).count_params()` equals it once built.
  """
  total, channels = 0, 3
  for filters, n in BLOCKS:
    out = scaled(filters, width)
    for _ in range(n):
      total += KERNEL * KERNEL * channels * out + (4 * out if batch_norm else out)
      channels = out
  fan_in = endpoint_sizes(input_size)['pool5'] ** 2 * channels
  for units in fc_units:
    out = scaled(units, width)
    total += fan_in * out + (4 * out if batch_norm else out)
    fan_in = out
  return total


class VGG16(tf.keras.Model):
  """VGG16 conv1_1..conv5_3, pool1..pool5 (+ fc6, fc7) returning named endpoints."""

  def __init__(
    self,
    width: float = 1.0,
    batch_norm: bool = False,
    fc_units: Sequence[int] = FC_UNITS,
    dropout: float = DROPOUT,
    name: str = 'vgg16',
    dtype: str = 'float32',
  ):
    """Creates the layers.

    Args:
      width: multiplier of every conv's channels and the fc units (1/16 for tests).
      batch_norm: BatchNorm after every conv and fc (biases dropped).
      fc_units: fully connected layers after pool5 before `width` (the paper's 4096, 4096);
        () for a convolutional trunk.
      dropout: dropout rate after each fc layer.
      name: model name.
      dtype: Keras dtype policy of every layer (e.g. 'mixed_bfloat16').

    Raises:
      ValueError: non-positive width.
    """
    super().__init__(name=name, dtype=dtype)
    policy = self.dtype_policy
    if width <= 0:
      raise ValueError(f'VGG16 width must be positive, got {width}')
    self.width = width
    self.batch_norm = batch_norm
    self.convs, self.norms, self.fcs = {}, {}, {}
    for b, (filters, n) in enumerate(BLOCKS):
      for i in range(n):
        conv = f'conv{b + 1}_{i + 1}'
        self.convs[conv] = tf.keras.layers.Conv2D(
          scaled(filters, width), KERNEL, padding='same', use_bias=not batch_norm, dtype=policy, name=conv
        )
        if batch_norm:
          self.norms[conv] = tf.keras.layers.BatchNormalization(name=f'{conv}_bn', dtype=policy)
    self.fc_names = tuple(f'fc{6 + i}' for i in range(len(fc_units)))
    for fc, units in zip(self.fc_names, fc_units):
      self.fcs[fc] = tf.keras.layers.Dense(scaled(units, width), use_bias=not batch_norm, dtype=policy, name=fc)
      if batch_norm:
        self.norms[fc] = tf.keras.layers.BatchNormalization(name=f'{fc}_bn', dtype=policy)
    self.dropout = tf.keras.layers.Dropout(dropout, dtype=policy)

  @property
  def endpoint_names(self) -> Tuple[str, ...]:
    """Names `call` returns, in network order."""
    names = []
    for b, (_, n) in enumerate(BLOCKS):
      names += [f'conv{b + 1}_{i + 1}' for i in range(n)] + [f'pool{b + 1}']
    return tuple(names) + self.fc_names

  def _relu(self, name: str, x: tf.Tensor, training: Optional[bool]) -> tf.Tensor:
    return tf.nn.relu(self.norms[name](x, training=training) if self.batch_norm else x)

  def call(self, images: tf.Tensor, training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
    """Runs the trunk.

    Args:
      images: [B, H, W, 3] float images with static H and W.
      training: BatchNorm / dropout mode.

    Returns:
      Endpoints conv1_1..conv5_3, pool1..pool5 and the fc layers (`endpoint_names`).
    """
    endpoints = {}
    x = images
    for b, (_, n) in enumerate(BLOCKS):
      for i in range(n):
        conv = f'conv{b + 1}_{i + 1}'
        x = self._relu(conv, self.convs[conv](x), training)
        endpoints[conv] = x
      x = caffe_max_pool(x, POOL_KERNEL, POOL_STRIDE)
      endpoints[f'pool{b + 1}'] = x
    if self.fc_names:
      x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
    for fc in self.fc_names:
      x = self._relu(fc, self.fcs[fc](x), training)
      endpoints[fc] = x
      x = self.dropout(x, training=training)
    return endpoints
