"""NYU depth evaluation: berHu, metrics, up-projection, model shapes and end-to-end runs."""

import glob
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override, validate_all
from mtssl_tf.evaluation import backbone, depth, depth_model
from mtssl_tf.evaluation.depth import DepthEvalConfig, run_depth
from mtssl_tf.evaluation.depth_model import (
  DepthMetrics,
  DepthModel,
  UnpoolConv,
  UpProjection,
  berhu_loss,
  metric_sums,
  metrics_from_sums,
  prediction_size,
  reverse_huber,
)

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

METRICS = ('delta1', 'delta2', 'delta3', 'abs_rel', 'rms', 'log10')


def test_reverse_huber_below_at_and_above_its_threshold():
  c = tf.constant(0.2)
  x = tf.constant([0.1, -0.2, 0.2, 0.3, -0.5])
  # |x| up to c; above: (x^2 + c^2) / 2c, e.g. (0.09 + 0.04) / 0.4 = 0.325.
  np.testing.assert_allclose(reverse_huber(x, c).numpy(), [0.1, 0.2, 0.2, 0.325, 0.725], rtol=1e-6)


def test_berhu_loss_uses_valid_pixels_for_threshold_and_mean():
  depth_map = tf.constant([[[1.0, 2.0], [3.0, 4.0]]])
  mask = tf.constant([[[True, True], [True, False]]])
  pred = depth_map + tf.constant([[[0.1, 0.5], [-1.0, 100.0]]])
  # Valid residuals 0.1, 0.5, -1: c = 0.2, terms 0.1, (0.25 + 0.04) / 0.4, (1 + 0.04) / 0.4.
  expected = (0.1 + 0.725 + 2.6) / 3
  assert berhu_loss(pred, depth_map, mask).numpy() == pytest.approx(expected, rel=1e-6)
  other = tf.tensor_scatter_nd_update(pred, [[0, 1, 1]], [-7.0])
  assert berhu_loss(other, depth_map, mask).numpy() == pytest.approx(expected, rel=1e-6)
  # A perfect prediction has c = 0: loss and gradient 0, not NaN.
  exact = tf.Variable(depth_map)
  with tf.GradientTape() as tape:
    loss = berhu_loss(exact, depth_map, mask)
  assert loss.numpy() == 0 and np.all(tape.gradient(loss, exact).numpy() == 0)
  assert berhu_loss(pred, depth_map, tf.zeros_like(mask)).numpy() == 0


def test_every_metric_on_a_hand_made_case():
  gt = tf.constant([[1.0, 1.0, 2.0, 5.0, 3.0]])
  pred = tf.constant([[1.0, 1.9, 1.5, 4.0, 0.0]])
  mask = tf.constant([[True, True, True, True, False]])
  m = metrics_from_sums(metric_sums(pred, gt, mask))
  # Ratios 1, 1.9, 4/3, 1.25 (not < 1.25); 1.25^2 = 1.5625, 1.25^3 = 1.953.
  assert m['delta1'] == pytest.approx(0.25)
  assert m['delta2'] == pytest.approx(0.75)
  assert m['delta3'] == pytest.approx(1.0)
  assert m['abs_rel'] == pytest.approx((0 + 0.9 + 0.25 + 0.2) / 4, rel=1e-6)
  assert m['rms'] == pytest.approx(math.sqrt((0 + 0.81 + 0.25 + 1.0) / 4), rel=1e-6)
  assert m['log10'] == pytest.approx((math.log10(1.9) + math.log10(4 / 3) + math.log10(5 / 4)) / 4, rel=1e-6)
  # A prediction of 0 is clipped to min_depth, so every metric stays finite.
  zero = metrics_from_sums(metric_sums(tf.zeros_like(gt), gt, mask, min_depth=0.01))
  # |log10 0.01 - log10 d*| = 2 + log10 d*: (8 + log10 2 + log10 5) / 4 = 2.25.
  assert zero['delta3'] == 0 and zero['log10'] == pytest.approx(2.25, rel=1e-6)
  with pytest.raises(ValueError, match='no valid'):
    DepthMetrics().result()


def test_metrics_accumulated_over_batches_equal_metrics_of_the_concatenation():
  rng = np.random.default_rng(0)
  batches = []
  for n in (3, 2):
    gt = rng.uniform(0.5, 9, (n, 6, 8)).astype(np.float32)
    pred = (gt * rng.uniform(0.6, 1.6, gt.shape)).astype(np.float32)
    batches.append((pred, gt, rng.random(gt.shape) < 0.3 * n))  # Different valid fractions.
  accumulated = DepthMetrics()
  for batch in batches:
    accumulated.update(*batch)
  whole = metrics_from_sums(metric_sums(*(np.concatenate([b[i] for b in batches]) for i in range(3))))
  assert accumulated.pixels == sum(int(b[2].sum()) for b in batches)
  for key in METRICS:
    assert accumulated.result()[key] == pytest.approx(whole[key], rel=1e-9)


def test_up_projection_doubles_resolution_and_fast_unpool_conv_is_exact():
  x = tf.random.stateless_normal([2, 3, 4, 5], seed=[1, 2])
  assert UpProjection(4)(x, training=False).shape == (2, 6, 8, 4)
  layer = UnpoolConv(6)
  fast = layer(x)
  layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[3, 4]))
  np.testing.assert_allclose(layer(x).numpy(), layer.slow(x).numpy(), atol=1e-5)
  assert fast.shape == (2, 6, 8, 6)


@pytest.mark.parametrize('use_lasso', [False, True])
def test_model_output_shape_and_frozen_trunk(pretrained, use_lasso):
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  model = DepthModel(trunk, 8, (8, 4, 4), fine_tune_trunk=False, use_lasso=use_lasso)
  images = tf.zeros([2, 40, 56, 3])
  # Stride 16 and three up-projections: ceil(40 / 16) * 8 = 24 by ceil(56 / 16) * 8 = 32.
  assert model.prediction_stride == 2 and prediction_size((40, 56), 16, 3) == (24, 32)
  assert model(images, training=True).shape == (2, 24, 32)
  assert model.predict_at(images, (40, 56)).shape == (2, 40, 56)
  assert model.predict_at(images, (80, 112)).shape == (2, 80, 112)
  trainable = {v.name for v in model.trainable_variables}
  assert not trainable & {v.name for v in trunk.variables}
  lasso = {v.name for v in model.lasso.trainable_variables} if use_lasso else set()
  assert bool(lasso) == use_lasso and lasso <= trainable
  assert float(model.penalty()) == pytest.approx(1e-3 if use_lasso else 0.0)


def test_augmentation_divides_depth_by_scale_and_rotation_leaves_holes():
  cfg = DepthEvalConfig()
  override(cfg, {'frame_size': [24, 32], 'crop_size': [24, 32], 'scale_range': [1.5, 1.5], 'rotation_degrees': 0.0})
  override(cfg, {'color_range': [1.0, 1.0]})
  image, depth_map = tf.fill([24, 32, 3], 100.0), tf.fill([24, 32], 3.0)
  out = depth.augment(image, depth_map, tf.constant([0, 1], tf.int64), cfg)
  assert out['image'].dtype == tf.uint8 and out['image'].shape == (24, 32, 3)
  np.testing.assert_allclose(out['depth'].numpy(), 2.0)
  override(cfg, {'scale_range': [1.0, 1.0], 'rotation_degrees': 30.0})
  found_hole = False
  for i in range(4):
    rotated = depth.augment(image, depth_map, tf.constant([0, i], tf.int64), cfg)['depth'].numpy()
    assert set(np.unique(rotated)) <= {0.0, 3.0}
    found_hole |= rotated.min() == 0
  assert found_hole  # Some angle of 4 draws in [-30, 30] rotates a corner out.


def test_config_errors_name_the_key():
  for values, key in [
    ({'crop_size': [300, 400]}, 'depth.crop_size'),
    ({'optimizer': 'rmsprop'}, 'depth.optimizer'),
    ({'scale_range': [0.5, 1.0]}, 'depth.scale_range'),
    ({'eval_crop': 'center'}, 'depth.eval_crop'),
    ({'upproject_filters': []}, 'depth.upproject_filters'),
    ({'decay_fractions': [0.7, 0.3]}, 'depth.decay_fractions'),
  ]:
    cfg = override(DepthEvalConfig(), values)
    with pytest.raises(ConfigError, match=key):
      validate_all(cfg, 'depth')
  with pytest.raises(ConfigError, match='depth.train_source'):
    run_depth(DepthEvalConfig(), None, '/nonexistent')


def tiny_config(**values) -> DepthEvalConfig:
  cfg = DepthEvalConfig()
  base = {
    'frame_size': [48, 64],
    'crop_size': [40, 56],
    'steps': 4,
    'batch_size': 2,
    'eval_batch_size': 2,
    'projection_filters': 16,
    'upproject_filters': [16, 8, 8],
    'shuffle_buffer': 8,
    'log_every_steps': 2,
    'summary_every_steps': 2,
    'checkpoint_every_steps': 2,
  }
  return override(cfg, dict(base, **values))


def check_results(results, out_dir):
  stored = json.load(open(os.path.join(out_dir, 'results.json')))
  assert set(stored) == set(results)
  for key in ('delta1', 'delta2', 'delta3'):
    assert 0 <= results[key] <= 1
  assert results['delta1'] <= results['delta2'] <= results['delta3']
  for key in ('abs_rel', 'rms', 'log10'):
    assert 0 <= results[key] < 1e3 and stored[key] == pytest.approx(results[key])
  assert results['num_images'] >= 1 and results['num_pixels'] > 0
  tags = {tag for scalars in read_events(out_dir) for tag, _ in scalars}
  assert {'depth/loss', 'depth/steps_per_second', *(f'depth/{k}' for k in METRICS)} <= tags


def read_events(out_dir):
  """Per event file (one per run_depth call): {(tag, step): value}."""
  files = glob.glob(os.path.join(out_dir, 'events.out.tfevents.*'))
  assert files
  return [
    {
      (v.tag, e.step): float(tf.make_ndarray(v.tensor))
      for e in tf.compat.v1.train.summary_iterator(path)
      for v in e.summary.value
    }
    for path in files
  ]


def test_run_depth_from_checkpoint_then_resumes(pretrained, tiny_world, tmp_path):
  cfg = tiny_config()
  sources = tiny_world['sources']
  trunk = backbone.load_trunk(pretrained['checkpoint'], pretrained['trunk_config'])
  results = run_depth(cfg, trunk, str(tmp_path), sources['depth_train'], sources['depth_test'], progress=False)
  out_dir = str(tmp_path / 'eval' / 'depth')
  check_results(results, out_dir)
  assert results['steps'] == 4 and results['eval_crop'] == 'eigen' and 'init' not in results
  # 4 synthetic test images of 64 x 85; Eigen's crop scaled to them keeps rows 6:63, cols 5:80.
  assert results['num_images'] == 4 and results['num_pixels'] <= 4 * 57 * 75
  assert tf.train.latest_checkpoint(os.path.join(out_dir, 'checkpoints')).endswith('ckpt-4')
  # Step decay at 35% and 70% of 4 steps (after iterations 1 and 2): step 2 used 1e-2, step 4 1e-4.
  (scalars,) = read_events(out_dir)
  assert scalars[('depth/learning_rate', 2)] == pytest.approx(1e-2)
  assert scalars[('depth/learning_rate', 4)] == pytest.approx(1e-4)
  # A rerun restores the finished model and only evaluates: the same numbers.
  fresh = backbone.load_trunk('random', pretrained['trunk_config'])
  again = run_depth(cfg, fresh, str(tmp_path), sources['depth_train'], sources['depth_test'], progress=False)
  for key in METRICS:
    assert again[key] == pytest.approx(results[key], rel=1e-5)
  # More steps continue from step 4: the new run logs the loss of step 6 only.
  more = run_depth(tiny_config(steps=6), fresh, str(tmp_path), sources['depth_train'], sources['depth_test'])
  assert more['steps'] == 6
  loss_steps = [{step for tag, step in scalars if tag == 'depth/loss'} for scalars in read_events(out_dir)]
  assert sorted(loss_steps, key=len) == [set(), {6}, {2, 4}]


def test_run_depth_from_saved_model_with_lasso_and_frozen_trunk(pretrained, tiny_world, tmp_path):
  tf.keras.utils.set_random_seed(0)
  cfg = tiny_config(
    steps=30, use_lasso=True, fine_tune_trunk=False, eval_crop='none', optimizer='adam', learning_rate=3e-3
  )
  override(cfg, {'summary_every_steps': 1, 'log_every_steps': 10})
  sources = tiny_world['sources']
  trunk = backbone.load_trunk(pretrained['saved_model'], pretrained['trunk_config'])
  before = {v.name: v.numpy() for v in trunk.variables}
  results = run_depth(
    cfg, trunk, str(tmp_path), sources['depth_train'], sources['depth_test'], init_source=pretrained['saved_model']
  )
  check_results(results, str(tmp_path / 'eval' / 'depth'))
  assert results['init'] == pretrained['saved_model'] and results['eval_crop_bounds'] is None
  assert len(results['lasso_alpha']) == pretrained['trunk_config'].units_per_block[2]
  for v in trunk.variables:
    np.testing.assert_array_equal(v.numpy(), before[v.name], err_msg=v.name)
  # Batches of 2 make single steps noisy, but the loss of the last 8 steps is well below
  # that of the first 8 (about 2-3x in trial runs).
  (scalars,) = read_events(str(tmp_path / 'eval' / 'depth'))
  losses = [scalars[('depth/loss', step)] for step in range(1, 31)]
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_nan_loss_names_the_step(pretrained, tiny_world, tmp_path, monkeypatch):
  monkeypatch.setattr(depth, 'berhu_loss', lambda *args: depth_model.berhu_loss(*args) * np.nan)
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  sources = tiny_world['sources']
  with pytest.raises(FloatingPointError, match='at step 1'):
    run_depth(tiny_config(), trunk, str(tmp_path), sources['depth_train'], sources['depth_test'], progress=False)
