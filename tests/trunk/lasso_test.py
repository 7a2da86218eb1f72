"""Lasso mixing: unit-norm rows, the L1 penalty, the mix itself, gradients, the figure."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.trunk.lasso import LassoMix, alpha_image, initial_alpha
from mtssl_tf.trunk.resnet_v2 import build_trunk

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _units(m=4, shape=(2, 3, 3, 5), seed=0, dtype=tf.float32):
  rng = np.random.default_rng(seed)
  return [tf.constant(rng.normal(size=shape).astype(np.float32), dtype=dtype) for _ in range(m)]


def _row_norms(layer):
  return tf.norm(layer.alpha(), axis=1).numpy()


def test_initialisations():
  np.testing.assert_array_equal(initial_alpha(2, 3, 'last'), [[0, 0, 1], [0, 0, 1]])
  np.testing.assert_allclose(np.linalg.norm(initial_alpha(2, 9, 'uniform'), axis=1), [1, 1], rtol=1e-6)
  with pytest.raises(ValueError, match='first'):
    initial_alpha(1, 3, 'first')


def test_last_init_reproduces_the_final_unit():
  units = _units()
  mixed = LassoMix(3, 4)(units, consumer=1)
  np.testing.assert_allclose(mixed.numpy(), units[-1].numpy(), rtol=1e-6)


def test_mix_is_the_alpha_weighted_sum_of_units():
  units = _units()
  layer = LassoMix(2, 4, consumer_names=['rp', 'col'])
  layer.raw_alpha.assign([[3.0, 0.0, 4.0, 0.0], [1.0, -1.0, 1.0, -1.0]])
  alpha = np.array([[0.6, 0.0, 0.8, 0.0], [0.5, -0.5, 0.5, -0.5]])
  np.testing.assert_allclose(layer.alpha().numpy(), alpha, rtol=1e-6)
  expected = [sum(alpha[n, m] * units[m].numpy() for m in range(4)) for n in range(2)]
  np.testing.assert_allclose(layer(units, consumer='col').numpy(), expected[1], rtol=1e-5, atol=1e-6)
  both = layer(units)
  assert len(both) == 2
  for got, want in zip(both, expected):
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_penalty_value_and_that_calls_add_it_per_row():
  layer = LassoMix(2, 4, l1_weight=0.1, consumer_names=['rp', 'col'])
  layer.raw_alpha.assign([[3.0, 0.0, 4.0, 0.0], [1.0, -1.0, 1.0, -1.0]])
  assert float(layer.penalty('rp')) == pytest.approx(0.1 * 1.4)
  assert float(layer.penalty('col')) == pytest.approx(0.1 * 2.0)
  assert float(layer.penalty()) == pytest.approx(0.1 * 3.4)
  layer(_units(), consumer='col')
  assert len(layer.losses) == 1 and float(layer.losses[0]) == pytest.approx(0.2)


def test_rows_stay_unit_norm_under_unconstrained_updates():
  units = _units()
  layer = LassoMix(3, 4, l1_weight=0.5, init='uniform')
  opt = tf.keras.optimizers.SGD(1.0)
  for step in range(5):
    with tf.GradientTape() as tape:
      out = layer(units, consumer=step % 3)
      loss = tf.reduce_mean(tf.square(out - 1.0)) + tf.add_n(layer.losses)
    opt.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))
  assert not np.allclose(layer.alpha().numpy(), initial_alpha(3, 4, 'uniform'))
  np.testing.assert_allclose(_row_norms(layer), [1.0, 1.0, 1.0], rtol=1e-6)


def test_gradients_flow_to_alpha_and_to_every_unit():
  units = [tf.Variable(u) for u in _units()]
  layer = LassoMix(1, 4, init='uniform')
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(units, consumer=0) * 2.0) + tf.add_n(layer.losses)
  grads = tape.gradient(loss, [layer.raw_alpha] + units)
  assert float(tf.reduce_max(tf.abs(grads[0]))) > 0
  for g in grads[1:]:  # d loss / d unit_m = 2 * alpha_m everywhere.
    np.testing.assert_allclose(g.numpy(), np.full(g.shape, 2.0 / np.sqrt(4)), rtol=1e-6)


def test_lasso_over_the_trunks_block3_units(tiny_trunk_config):
  trunk = build_trunk(tiny_trunk_config, image_size=64)
  layer = LassoMix(2, trunk.num_units, init='uniform')
  images = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=1)
  with tf.GradientTape() as tape:
    endpoints = trunk(images, training=True)
    mixed = layer(trunk.block3_units(endpoints), consumer=0)
    loss = tf.reduce_mean(tf.square(mixed)) + tf.add_n(layer.losses)
  assert mixed.shape == endpoints['block3'].shape
  # The lasso path bypasses only the final BN (the `final` endpoint's own layer).
  variables = [v for v in trunk.trainable_variables if 'post_bn' not in v.name] + layer.trainable_variables
  grads = tape.gradient(loss, variables)
  assert all(g is not None for g in grads)


def test_bfloat16_units_give_bfloat16_mix_with_float32_alpha():
  units = _units(dtype=tf.bfloat16)
  layer = LassoMix(1, 4)
  out = layer(units, consumer=0)
  assert out.dtype == tf.bfloat16 and layer.raw_alpha.dtype == tf.float32


def test_errors_name_what_is_wrong():
  layer = LassoMix(2, 4, consumer_names=['rp', 'col'])
  with pytest.raises(ValueError, match='expects 4 block-3 units, got 3'):
    layer(_units(m=3), consumer=0)
  with pytest.raises(KeyError, match="no consumer 'ex'"):
    layer(_units(), consumer='ex')
  with pytest.raises(IndexError, match='out of range'):
    layer.penalty(2)
  with pytest.raises(ValueError, match='consumer_names'):
    LassoMix(2, 4, consumer_names=['rp'])


def test_alpha_image_renders_abs_alpha():
  image = alpha_image([[0.0, -1.0], [0.5, 0.0]], cell=3)
  assert image.shape == (1, 6, 6, 3) and image.dtype == tf.uint8
  pixels = image.numpy()[0]
  np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])  # |alpha| = 0 is white.
  np.testing.assert_array_equal(pixels[0, 3], [140, 0, 13])  # The largest |alpha| is dark red.
  assert 140 < pixels[3, 0, 0] < 255 and pixels[3, 0, 1] == 128  # Halfway.


def _multitask(trunk_config, **lasso):
  tasks = TasksConfig()
  tasks.relative_position.enabled = tasks.colorization.enabled = True
  lasso_config = LassoConfig()
  override(lasso_config, {'enabled': True, **lasso})
  validate_all(lasso_config)
  model = MultiTaskModel(trunk_config, build_tasks(tasks, 16), lasso_config)
  return model, tf.random.uniform([4, 32, 32, 3], -1, 1, seed=3)


def test_default_mix_goes_through_the_trunks_closing_batch_norm():
  # §3.2 adds only alpha: no consumer gets a normalisation layer of its own by default.
  assert LassoConfig().mix_norm == 'trunk'
  with pytest.raises(ConfigError, match='lasso.mix_norm'):
    validate_all(override(LassoConfig(), {'mix_norm': 'none'}))


@pytest.mark.parametrize('training', [False, True])
def test_last_init_through_the_trunks_norm_is_the_no_lasso_network(tiny_trunk, training):
  model, images = _multitask(tiny_trunk)
  features, _ = model.features('relative_position', images, training=training)
  final = model.trunk(images, training=training, output_stride=16)['final']
  # alpha = e_M: the mix is 0 * u_1 + 1 * u_2 = u_2 exactly, then the same BN + ReLU on it.
  np.testing.assert_allclose(features.numpy(), final.numpy(), rtol=1e-6, atol=1e-6)
  assert not model.lasso_norms
  plain = {v.name for v in model.trunk.trainable_variables} | {
    v.name for v in model.heads['relative_position'].variables
  }
  assert {v.name for v in model.task_variables('relative_position')} == plain | {model.lasso.raw_alpha.name}


def test_the_trunks_closing_batch_norm_learns_the_mixes_statistics_only(tiny_trunk):
  model, images = _multitask(tiny_trunk, init='uniform')
  model.features('colorization', images[:1], training=False)  # Creates the variables.
  post_bn = model.trunk.post_bn
  before = post_bn.moving_mean.numpy()
  model.features('colorization', images, training=True)
  units = model.trunk.block3_units(model.trunk(images, training=True, output_stride=8, final=False))
  mixed = model.lasso(units, consumer='colorization').numpy()
  # One moving-average step towards the mix's batch mean, not towards block 3's (the
  # uniform mix differs from the last unit). Tolerance: float32 means of ~1e2 values.
  momentum = post_bn.momentum
  expected = momentum * before + (1 - momentum) * mixed.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(post_bn.moving_mean.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_without_final_activation_a_head_reads_the_bare_mix(tiny_trunk):
  tiny_trunk.final_activation = False
  model, images = _multitask(tiny_trunk, init='uniform')
  features, _ = model.features('relative_position', images, training=False)
  units = model.trunk.block3_units(model.trunk(images, training=False, output_stride=16))
  expected = sum(u.numpy() for u in units) / np.sqrt(len(units))  # The paper's sum_m alpha_m Unit_m.
  np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_per_consumer_choice_gives_each_task_its_own_batch_norm(tiny_trunk):
  model, images = _multitask(tiny_trunk, mix_norm='per_consumer')
  features, _ = model.features('relative_position', images, training=False)
  assert sorted(model.lasso_norms) == ['colorization', 'relative_position']
  norm = model.lasso_norms['relative_position']
  assert {v.name for v in norm.trainable_variables} <= {v.name for v in model.task_variables('relative_position')}
  endpoints = model.trunk(images, training=False, output_stride=16)
  mixed = model.lasso(model.trunk.block3_units(endpoints), consumer='relative_position')
  np.testing.assert_allclose(features.numpy(), tf.nn.relu(norm(mixed, training=False)).numpy(), rtol=1e-6)


def test_evaluation_lasso_rows_follow_the_same_choice(tiny_trunk):
  from mtssl_tf.evaluation.depth_model import DepthModel

  trunk = build_trunk(tiny_trunk, image_size=32)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1, seed=4)
  final = trunk(images, training=False)['final'].numpy()
  default = DepthModel(trunk, 8, (8,), fine_tune_trunk=False, use_lasso=True)
  assert default.lasso_norm is None
  # A new 'last' row through the frozen trunk's closing BN-ReLU reads exactly `final`.
  np.testing.assert_allclose(default.features(images, training=True).numpy(), final, rtol=1e-6, atol=1e-6)
  own = DepthModel(trunk, 8, (8,), fine_tune_trunk=False, use_lasso=True, lasso_mix_norm='per_consumer')
  own(images, training=False)
  assert own.lasso_norm is not None and {v.name for v in own.lasso_norm.trainable_variables} <= {
    v.name for v in own.trainable_variables
  }
