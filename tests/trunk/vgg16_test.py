"""VGG16 trunk: endpoint shapes at 224 px, parameter counts against the published 138M."""

import pytest
import tensorflow as tf

from mtssl_tf.trunk import vgg16
from mtssl_tf.trunk.vgg16 import VGG16

# Simonyan & Zisserman 2015, Table 2: 138M parameters for configuration D; the exact count of
# VGG_ILSVRC_16_layers (fc8 1000-way) is 138,357,544.
VGG16_PARAMS = 138_357_544
FC8_PARAMS = 4096 * 1000 + 1000


def _shapes(model, size):
  endpoints = model(tf.keras.Input([size, size, 3]))
  return {name: tuple(t.shape[1:]) for name, t in endpoints.items()}


def test_full_width_conv_shapes_at_224():
  # Convolutions only at full width (14.7M parameters), traced symbolically: no image is computed.
  shapes = _shapes(VGG16(fc_units=()), 224)
  expected = {}
  for block, (side, channels, convs) in enumerate(
    [(224, 64, 2), (112, 128, 2), (56, 256, 3), (28, 512, 3), (14, 512, 3)], start=1
  ):
    for i in range(1, convs + 1):
      expected[f'conv{block}_{i}'] = (side, side, channels)
    expected[f'pool{block}'] = (side // 2, side // 2, channels)
  assert shapes == expected
  assert tuple(shapes) == VGG16(fc_units=()).endpoint_names
  assert vgg16.conv_names()[-1] == 'conv5_3' and len(vgg16.conv_names()) == 13


@pytest.mark.parametrize('size', [224, 64, 36])
def test_fc_endpoints_and_arithmetic_sizes_tiny(size):
  model = VGG16(width=1 / 16)
  shapes = _shapes(model, size)
  assert tuple(shapes) == model.endpoint_names
  for name, side in vgg16.endpoint_sizes(size).items():
    assert shapes[name][:2] == (side, side), name
  assert shapes['fc6'] == shapes['fc7'] == (256,)
  if size == 36:
    assert shapes['pool5'][:2] == (2, 2)  # 36 -> 18 -> 9 -> ceil-mode 5 -> 3 -> 2.


def test_parameter_counts_match_published_and_built():
  # Full width from the layer arithmetic (no 138M-parameter model is allocated), plus fc8's 1000 classes.
  assert vgg16.parameter_count() + FC8_PARAMS == VGG16_PARAMS
  model = VGG16(fc_units=())
  model(tf.keras.Input([224, 224, 3]))
  assert model.count_params() == vgg16.parameter_count(fc_units=())
  for batch_norm in (False, True):
    model = VGG16(width=1 / 16, batch_norm=batch_norm)
    model(tf.keras.Input([64, 64, 3]))
    assert model.count_params() == vgg16.parameter_count(1 / 16, batch_norm, input_size=64)


def test_train_step_updates_every_variable_tiny():
  model = VGG16(width=1 / 16, batch_norm=True, fc_units=(64,))
  images = tf.random.uniform([2, 32, 32, 3], -1, 1, seed=0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(images, training=True)['fc6'])
  grads = tape.gradient(loss, model.trainable_variables)
  assert len(grads) == len(model.trainable_variables) and all(g is not None for g in grads)


def test_bad_width_is_named():
  with pytest.raises(ValueError, match='width'):
    VGG16(width=-1)
