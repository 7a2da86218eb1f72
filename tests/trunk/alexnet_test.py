"""AlexNet trunk: endpoint shapes at the paper's input sizes, parameter counts, Caffe pooling."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.trunk import alexnet
from mtssl_tf.trunk.alexnet import AlexNet

# Published parameter count of bvlc_reference_caffenet (two-GPU groups, fc8 1000-way): 60,965,224.
CAFFENET_PARAMS = 60_965_224
FC8_PARAMS = 4096 * 1000 + 1000


def _shapes(model, size):
  endpoints = model(tf.keras.Input([size, size, 3]))
  return {name: tuple(t.shape[1:]) for name, t in endpoints.items()}


def test_standard_full_width_conv_shapes_at_227():
  # Convolutions only at full width (2.3M parameters), traced symbolically: no image is computed.
  shapes = _shapes(AlexNet('standard', fc_units=()), 227)
  assert shapes == {
    'conv1': (55, 55, 96),
    'conv2': (27, 27, 256),
    'conv3': (13, 13, 384),
    'conv4': (13, 13, 384),
    'conv5': (13, 13, 256),
    'pool5': (6, 6, 256),
  }


def test_jigsaw_tile_full_width_conv_shapes_at_64():
  # Stride-2 conv1 on 64 px tiles: 27 -> pool 13 -> 13 -> pool 6 -> conv5 6 -> Caffe's ceil-mode pool5 3.
  shapes = _shapes(AlexNet('jigsaw', fc_units=()), 64)
  assert shapes == {
    'conv1': (27, 27, 96),
    'conv2': (13, 13, 256),
    'conv3': (6, 6, 384),
    'conv4': (6, 6, 384),
    'conv5': (6, 6, 256),
    'pool5': (3, 3, 256),
  }


@pytest.mark.parametrize('variant,size', [('standard', 227), ('standard', 224), ('jigsaw', 64)])
def test_fc_endpoints_and_arithmetic_sizes_tiny(variant, size):
  model = AlexNet(variant, width=1 / 16)
  shapes = _shapes(model, size)
  assert tuple(shapes) == model.endpoint_names
  sizes = alexnet.endpoint_sizes(variant, size)
  for name, side in sizes.items():
    assert shapes[name][:2] == (side, side), name
  fc_units = alexnet.VARIANTS[variant].fc_units
  assert model.fc_names == tuple(f'fc{6 + i}' for i in range(len(fc_units)))
  for fc, units in zip(model.fc_names, fc_units):
    assert shapes[fc] == (alexnet.scaled(units, 1 / 16),)


def test_parameter_counts_match_published_and_built():
  # Full width from the layer arithmetic (no 61M-parameter model is allocated), plus fc8's 1000 classes.
  assert alexnet.parameter_count('standard') + FC8_PARAMS == CAFFENET_PARAMS
  # The arithmetic equals what Keras builds: full-width convolutions, and tiny nets with fc layers.
  model = AlexNet('standard', fc_units=())
  model(tf.keras.Input([227, 227, 3]))
  assert model.count_params() == alexnet.parameter_count('standard', fc_units=())
  for variant, size in (('standard', 227), ('jigsaw', 64)):
    for batch_norm in (False, True):
      model = AlexNet(variant, width=1 / 16, batch_norm=batch_norm)
      model(tf.keras.Input([size, size, 3]))
      assert model.count_params() == alexnet.parameter_count(variant, 1 / 16, batch_norm, input_size=size)


def test_caffe_pool_size_rounds_up():
  assert alexnet.caffe_pool_size(55, 3, 2) == 27
  assert alexnet.caffe_pool_size(6, 3, 2) == 3  # Floor mode would give 2.
  assert alexnet.caffe_pool_size(13, 3, 2) == 6
  assert alexnet.caffe_pool_size(7, 2, 2) == 4  # Last window starts inside the image (row 6).


def test_caffe_max_pool_takes_maxima_of_clipped_windows():
  x = tf.reshape(tf.range(36, dtype=tf.float32) - 100.0, [1, 6, 6, 1])  # All negative: padding must not win.
  out = alexnet.caffe_max_pool(x, 3, 2)[0, :, :, 0].numpy()
  rows = cols = [(0, 3), (2, 5), (4, 6)]
  expected = np.array([[x[0, r0:r1, c0:c1, 0].numpy().max() for c0, c1 in cols] for r0, r1 in rows])
  np.testing.assert_array_equal(out, expected)  # Max of exact small integers: exact on every path.


def test_train_step_updates_every_variable_tiny():
  model = AlexNet('jigsaw', width=1 / 16, batch_norm=True)
  tiles = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(tiles, training=True)['fc6'])
  grads = tape.gradient(loss, model.trainable_variables)
  assert len(grads) == len(model.trainable_variables) and all(g is not None for g in grads)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='variant'):
    AlexNet('caffenet')
  with pytest.raises(ValueError, match='width'):
    AlexNet(width=0)
  with pytest.raises(ValueError, match='smaller than the window'):
    AlexNet('standard', width=1 / 16, fc_units=())(tf.zeros([1, 24, 24, 3]))


def test_standard_from_copies_a_tile_networks_convs_and_names_a_too_small_crop():
  from mtssl_tf.configs import ConfigError

  tile = alexnet.AlexNet('jigsaw', width=1 / 16, fc_units=(), groups=1)
  tile(tf.zeros([1, 64, 64, 3]))
  for i, v in enumerate(tile.trainable_variables):
    v.assign(tf.fill(v.shape, float(i + 1)))
  net = alexnet.standard_from(tile, 67, 'probe.crop_size', fc_units=(32,))
  assert net.variant == 'standard' and net.groups == 1 and net.fc_names == ('fc6',)
  for conv in ('conv1', 'conv5'):
    for got, want in zip(net.convs[conv].get_weights(), tile.convs[conv].get_weights()):
      np.testing.assert_array_equal(got, want)  # Copied values: the same bytes.
  with pytest.raises(ConfigError, match=r'probe\.crop_size: 40 px is too small for AlexNet'):
    alexnet.standard_from(tile, 40, 'probe.crop_size')
