"""The ResNet-v2 trunk: endpoint shapes per output stride, Keras weight equivalence,
atrous correctness, mixed precision."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import TrunkConfig
from mtssl_tf.trunk.resnet_v2 import (
  ResNetV2Trunk,
  build_trunk,
  copy_keras_weights,
  unit_endpoint_name,
  unit_schedule,
)

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _images(n=2, size=64, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32))


def _randomize_batch_norms(model, seed=0):
  """Non-trivial BN statistics, so a weight-copy test cannot pass on defaults alone."""
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if isinstance(layer, tf.keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, gamma.shape),
          rng.normal(0, 0.2, beta.shape),
          rng.normal(0, 0.2, mean.shape),
          rng.uniform(0.5, 1.5, var.shape),
        ]
      )


def test_unit_schedule_places_strides_and_dilations():
  assert unit_schedule((2, 2, 3), 32) == [[(1, 1), (2, 1)], [(1, 1), (2, 1)], [(1, 1), (1, 1), (2, 1)]]
  assert unit_schedule((2, 2, 3), 16) == [[(1, 1), (2, 1)], [(1, 1), (2, 1)], [(1, 1), (1, 1), (1, 1)]]
  assert unit_schedule((2, 2, 3), 8) == [[(1, 1), (2, 1)], [(1, 1), (1, 1)], [(1, 2), (1, 2), (1, 2)]]
  with pytest.raises(ValueError, match='output_stride'):
    unit_schedule((1, 1, 1), 12)


@pytest.mark.parametrize('full', [False, True], ids=['tiny', 'resnet101'])
def test_endpoint_shapes_for_each_output_stride(full, tiny_trunk_config):
  cfg = TrunkConfig() if full else tiny_trunk_config
  trunk = build_trunk(cfg, image_size=64)
  channels = 4 * cfg.width * 4
  units = cfg.units_per_block[2]
  size = 64
  for output_stride in (8, 16, 32):
    ep = trunk(_images(size=size), output_stride=output_stride)
    assert ep['stem'].shape == (2, size // 4, size // 4, cfg.width)
    assert ep['block1'].shape == (2, size // 8, size // 8, 4 * cfg.width)
    block2_stride = 8 if output_stride == 8 else 16
    assert ep['block2'].shape == (2, size // block2_stride, size // block2_stride, 8 * cfg.width)
    assert ep['block3'].shape == (2, size // output_stride, size // output_stride, channels)
    assert ep['final'].shape == ep['block3'].shape
    unit_shapes = [ep[unit_endpoint_name(i + 1)].shape for i in range(units)]
    assert len([k for k in ep if k.startswith('block3/unit_')]) == units
    inner = (2, size // min(output_stride, 16), size // min(output_stride, 16), channels)
    if output_stride == 32:  # Keras layout: only the last unit strides to 1/32.
      assert unit_shapes[:-1] == [inner] * (units - 1) and unit_shapes[-1] == ep['block3'].shape
    else:  # Lasso needs every unit at one size.
      assert unit_shapes == [inner] * units
  if full:
    assert units == 23 and channels == 1024
    # Keras' ResNet101V2 to conv4_block23_out has 27,635,200; we add the final BN (4 x 1024).
    assert trunk.count_params() == 27_635_200 + 4 * 1024


def test_matches_keras_resnet101v2_conv4_block23_out():
  cfg = TrunkConfig()
  cfg.output_stride = 32
  cfg.final_activation = False
  trunk = build_trunk(cfg, image_size=64)
  keras_full = tf.keras.applications.ResNet101V2(weights=None, include_top=False, input_shape=(None, None, 3))
  keras_cut = tf.keras.Model(keras_full.input, keras_full.get_layer('conv4_block23_out').output)
  _randomize_batch_norms(keras_cut)
  assert keras_cut.count_params() == trunk.count_params()
  # Stem conv + 30 units x (3 convs + 3 BNs) + 3 projection shortcuts.
  assert copy_keras_weights(trunk, keras_full) == 1 + 30 * 6 + 3
  images = _images(n=2, size=160)
  expected = keras_cut(images, training=False).numpy()
  got = trunk(images, training=False)['block3'].numpy()
  assert got.shape == expected.shape == (2, 5, 5, 1024)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  # The same weights at output stride 16 agree with Keras' conv4_block22_out too.
  keras_22 = tf.keras.Model(keras_full.input, keras_full.get_layer('conv4_block22_out').output)
  np.testing.assert_allclose(
    trunk(images, output_stride=16)[unit_endpoint_name(22)].numpy(), keras_22(images).numpy(), atol=1e-4, rtol=1e-4
  )


def test_copy_keras_weights_rejects_a_smaller_model(tiny_trunk_config):
  cfg = TrunkConfig()
  cfg.units_per_block = (3, 4, 7)  # More block-3 units than ResNet50V2's 6.
  trunk = build_trunk(cfg, image_size=32)
  keras50 = tf.keras.applications.ResNet50V2(weights=None, include_top=False, input_shape=(None, None, 3))
  with pytest.raises(ValueError, match="no layer 'conv4_block7"):
    copy_keras_weights(trunk, keras50)
  tiny = build_trunk(tiny_trunk_config, image_size=32)
  with pytest.raises(ValueError, match='shapes'):
    copy_keras_weights(tiny, keras50)


def test_atrous_output_is_the_strided_output_densified(tiny_trunk_config):
  """In inference mode, dilation must reproduce the strided network at every other pixel."""
  trunk = build_trunk(tiny_trunk_config, image_size=64)
  _randomize_batch_norms(trunk)
  images = _images(size=96)
  ep8, ep16, ep32 = (trunk(images, training=False, output_stride=s) for s in (8, 16, 32))
  for name in ('block3', unit_endpoint_name(1), 'final'):
    np.testing.assert_allclose(ep8[name].numpy()[:, ::2, ::2], ep16[name].numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ep16['block3'].numpy()[:, ::2, ::2], ep32['block3'].numpy(), atol=1e-4, rtol=1e-4)


def test_one_set_of_variables_serves_every_output_stride(tiny_trunk_config):
  trunk = build_trunk(tiny_trunk_config, image_size=64)
  before = len(trunk.variables)
  trunk(_images(), output_stride=8)
  trunk(_images(), output_stride=32)
  assert len(trunk.variables) == before


def test_gradients_reach_every_trainable_variable(tiny_trunk_config):
  trunk = build_trunk(tiny_trunk_config, image_size=64)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(trunk(_images(), training=True)['final']))
  grads = tape.gradient(loss, trunk.trainable_variables)
  assert all(g is not None for g in grads)
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_mixed_bfloat16_outputs_and_float32_variables(tiny_trunk_config):
  fp32 = build_trunk(tiny_trunk_config, image_size=64)
  bf16 = build_trunk(tiny_trunk_config, precision='mixed_bfloat16', image_size=64)
  bf16.set_weights(fp32.get_weights())
  ep16 = bf16(_images(), training=False)
  assert all(v.dtype == tf.bfloat16 for v in ep16.values())
  assert all(v.dtype == tf.float32 for v in bf16.variables)
  ep32 = fp32(_images(), training=False)
  scale = float(tf.reduce_max(tf.abs(ep32['final'])))
  err = float(tf.reduce_max(tf.abs(tf.cast(ep16['final'], tf.float32) - ep32['final'])))
  assert err < 0.05 * scale


def test_runs_inside_tf_function_with_unknown_spatial_size(tiny_trunk_config):
  trunk = ResNetV2Trunk(tiny_trunk_config)
  fn = tf.function(
    lambda x: trunk(x, training=False)['final'], input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
  )
  assert fn(_images(size=64)).shape == (2, 4, 4, 256)
  assert fn(_images(n=1, size=96)).shape == (1, 6, 6, 256)
