"""Colorization: gamut bins, soft encoding, rebalancing, gray masking, decoding, training."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial import ConvexHull

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.data import color
from mtssl_tf.tasks import colorization
from mtssl_tf.tasks.colorization import ColorizationConfig, ColorizationTask
from mtssl_tf.tasks.multitask import MultiTaskModel

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _config(**changes):
  cfg = ColorizationConfig()
  override(cfg, {**dict(crop_size=32, hidden_units=16, batch_size=2), **changes})
  validate_all(cfg)
  return cfg


def _photo(size=48, seed=0):
  """A smooth colourful image (random pixels would average to gray in every cell)."""
  y, x = np.mgrid[0:size, 0:size] / size
  rgb = np.stack([x, y, 1.0 - x * y], axis=-1) + np.random.default_rng(seed).uniform(-0.05, 0.05, (size, size, 3))
  return tf.constant(np.clip(rgb * 255.0, 0, 255).astype(np.uint8))


def _bins():
  return tf.constant(colorization.load_bins(), tf.float32)


def test_shipped_bins_are_the_srgb_gamut():
  # The ab hull of all 8-bit sRGB colours is the hull of the RGB cube's faces (Lab is a
  # continuous bijection of the cube, so interior colours map inside).
  v = np.arange(256) / 255.0
  u, w = (g.ravel() for g in np.meshgrid(v, v, indexing='ij'))
  faces = [np.insert(np.stack([u, w], -1), axis, value, axis=1) for axis in range(3) for value in (0.0, 1.0)]
  ab = color.rgb_to_lab_np(np.concatenate(faces))[:, 1:]
  hull = ConvexHull(ab)
  axis = np.arange(-110, 111, 10)
  grid = np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  # Square [c - 10, c + 10]^2 vs convex polygon: disjoint iff some edge normal of either separates.
  corners = grid[:, None, :] + np.array([[-10, -10], [-10, 10], [10, -10], [10, 10]])
  by_hull_edge = ((corners @ hull.equations[:, :2].T + hull.equations[:, 2]).min(axis=1) > 0).any(axis=-1)
  by_square_edge = ((grid + 10 < ab.min(0)) | (grid - 10 > ab.max(0))).any(axis=-1)
  in_gamut = grid[~(by_hull_edge | by_square_edge)]
  shipped = colorization.load_bins()
  assert shipped.shape == (313, 2) and shipped.dtype == np.int64 and len(in_gamut) == 313
  assert set(map(tuple, shipped)) == set(map(tuple, in_gamut))
  np.testing.assert_array_equal(shipped, in_gamut)  # Same order too: by a, then b.
  assert tuple(shipped[0]) == (-90, 50)


@pytest.mark.parametrize('k', [5, 10])
def test_soft_encoding_spreads_over_k_nearest_bins(k):
  ab = np.random.default_rng(k).uniform(-60, 60, (50, 2)).astype(np.float32)
  indices, weights = colorization.soft_encode(tf.constant(ab), _bins(), num_neighbors=k, sigma=5.0)
  dense = colorization.dense_targets(indices, weights).numpy()
  np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-6)
  assert np.all((dense > 0).sum(-1) == k)
  distances = np.linalg.norm(ab[:, None] - colorization.load_bins()[None], axis=-1)
  np.testing.assert_array_equal(dense.argmax(-1), distances.argmin(-1))
  np.testing.assert_array_equal(indices[:, 0].numpy(), distances.argmin(-1))
  # Gaussian in the distance: the ratio of two weights is exp(-(d1^2 - d2^2) / 2 sigma^2).
  d = np.take_along_axis(distances, indices.numpy(), axis=1)
  np.testing.assert_allclose(weights[:, 1] / weights[:, 0], np.exp(-(d[:, 1] ** 2 - d[:, 0] ** 2) / 50.0), rtol=1e-4)


def test_rebalancing_weights_have_unit_expectation_under_the_prior():
  prior = colorization.load_prior()
  weights = colorization.rebalance_weights(prior, 0.5)
  assert prior.shape == (313,) and np.sum(prior) == pytest.approx(1.0)
  assert np.sum(prior * weights) == pytest.approx(1.0, abs=1e-12)
  assert weights.min() == pytest.approx(0.0965, abs=1e-3) and weights.max() == pytest.approx(6.175, abs=1e-3)
  assert tuple(colorization.load_bins()[weights.argmin()]) == (0, 0)  # Gray is the most common.
  np.testing.assert_allclose(colorization.rebalance_weights(prior, 1.0), 1.0)  # lambda 1: uniform.


def test_gray_images_contribute_no_loss():
  task = ColorizationTask(_config())
  rng = np.random.default_rng(0)
  gray = rng.uniform(-4.9, 4.9, (1, 4, 4, 2)).astype(np.float32)
  colourful = rng.uniform(-40, 40, (1, 4, 4, 2)).astype(np.float32)
  logits = tf.constant(rng.normal(size=(2, 4, 4, 313)).astype(np.float32))
  both = {'ab_target': tf.constant(np.concatenate([gray, colourful]))}
  assert float(task.loss(logits[:1], {'ab_target': tf.constant(gray)})) == 0.0
  colour_only = float(task.loss(logits[1:], {'ab_target': tf.constant(colourful)}))
  assert colour_only > 0.0 and float(task.loss(logits, both)) == pytest.approx(colour_only, rel=1e-6)
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = task.loss(logits, both)
  grads = tape.gradient(loss, logits).numpy()
  assert np.all(grads[0] == 0) and np.any(grads[1] != 0)


def test_rebalancing_weights_the_cross_entropy():
  rng = np.random.default_rng(1)
  ab = tf.constant(rng.uniform(-40, 40, (1, 4, 4, 2)).astype(np.float32))
  logits = tf.constant(rng.normal(size=(1, 4, 4, 313)).astype(np.float32))
  plain = ColorizationTask(_config(rebalance=False))
  indices, weights = plain.encode(ab)
  per_cell = -tf.reduce_sum(colorization.dense_targets(indices, weights) * tf.nn.log_softmax(logits), axis=-1).numpy()
  assert float(plain.loss(logits, {'ab_target': ab})) == pytest.approx(per_cell.mean(), rel=1e-5)
  task = ColorizationTask(_config())
  expected = (task.class_weights_np[indices[..., 0].numpy()] * per_cell).mean()
  assert float(task.loss(logits, {'ab_target': ab})) == pytest.approx(expected, rel=1e-5)


def test_annealed_mean_decoding():
  bins = _bins()
  rng = np.random.default_rng(2)
  logits = tf.constant(np.stack([rng.permutation(313) * 0.1 for _ in range(6)]).astype(np.float32))  # Gaps >= 0.1.
  np.testing.assert_allclose(
    colorization.annealed_mean(logits, bins, 1e-3).numpy(), tf.gather(bins, tf.argmax(logits, -1)).numpy(), atol=1e-3
  )
  one_hot = tf.one_hot([0, 150, 312], 313) * 50.0
  np.testing.assert_allclose(colorization.annealed_mean(one_hot, bins, 0.38).numpy(), bins.numpy()[[0, 150, 312]])
  uniform = colorization.annealed_mean(tf.zeros([1, 313]), bins, 0.38).numpy()
  np.testing.assert_allclose(uniform[0], bins.numpy().mean(0), atol=1e-4)


def test_preprocess_same_eagerly_and_in_tf_data():
  task = ColorizationTask(_config())
  example = {'image': _photo(), 'label': tf.constant(-1, tf.int64)}
  eager = task.preprocess(example, tf.constant([3, 4]))
  graph = next(iter(tf.data.Dataset.from_tensors(example).map(lambda e: task.preprocess(e, tf.constant([3, 4])))))
  for key in ('image', 'ab_target'):
    np.testing.assert_allclose(eager[key].numpy(), graph[key].numpy(), atol=1e-5)
  assert eager['image'].shape == (32, 32, 3) and eager['ab_target'].shape == (4, 4, 2)


@pytest.mark.numerics
@pytest.mark.parametrize('target', ['subsample', 'mean'])
def test_preprocess_gives_harmonized_input_and_cell_targets(target):
  task = ColorizationTask(_config(min_scale=1.0, flip=False, crop_size=48, target=target))
  image = _photo()
  out = task.preprocess({'image': image}, tf.constant([0, 0]))
  # No crop, no resize: the input is `color.harmonize`, each target the cell's top-left
  # pixel's ab (subsample) or its mean ab. 1e-2 on ab values of tens: float32 Lab
  # conversion in TF against float64 numpy.
  np.testing.assert_allclose(out['image'].numpy(), color.harmonize(image).numpy(), atol=1e-4)
  ab = color.rgb_to_lab_np(image.numpy() / 255.0)[..., 1:]
  cells = ab[::8, ::8] if target == 'subsample' else ab.reshape(6, 8, 6, 8, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(out['ab_target'].numpy(), cells, atol=1e-2)


@pytest.mark.numerics
def test_a_cell_of_two_colours_targets_one_of_them_by_default():
  # Every 8x8 cell: red left half, green right half. Zhang's subsampling picks a colour
  # of the image (the top-left pixel's red); the cell mean is a third colour, olive.
  image = np.zeros((16, 16, 3), np.uint8)
  image[:, :] = [200, 30, 30]
  image[:, 4:8] = image[:, 12:16] = [30, 160, 30]
  red, green = (color.rgb_to_lab_np(np.array(c, np.float64) / 255.0)[1:] for c in ([200, 30, 30], [30, 160, 30]))
  bins = _bins()

  def target(name):
    task = ColorizationTask(_config(min_scale=1.0, flip=False, crop_size=16, target=name))
    ab = task.preprocess({'image': tf.constant(image)}, tf.constant([0, 0]))['ab_target']
    nearest = colorization.soft_encode(ab, bins)[0][..., 0].numpy()
    return ab.numpy(), bins.numpy()[nearest]

  # Tolerance 0.05 on ab values of 40-70: float32 colour conversion, no resampling.
  ab, nearest_bin = target('subsample')
  np.testing.assert_allclose(ab, np.broadcast_to(red, (2, 2, 2)), atol=0.05)
  assert np.all(np.abs(nearest_bin - red) <= 5.0 + 1e-3)  # The red cell's own bin (grid step 10).
  ab, nearest_bin = target('mean')
  np.testing.assert_allclose(ab, np.broadcast_to((red + green) / 2, (2, 2, 2)), atol=0.05)
  for colour in (red, green):  # The mean's bin is far from both colours of the cell.
    assert np.all(np.linalg.norm(nearest_bin - colour, axis=-1) > 40.0)
  assert ColorizationConfig().target == 'subsample'


@pytest.mark.parametrize(
  'changes, key',
  [
    (dict(num_neighbors=0), 'colorization.num_neighbors'),
    (dict(crop_size=30), 'colorization.crop_size'),
    (dict(output_stride=4), 'colorization.output_stride'),
    (dict(rebalance_lambda=1.5), 'colorization.rebalance_lambda'),
    (dict(temperature=0.0), 'colorization.temperature'),
    (dict(target='median'), 'colorization.target'),
  ],
)
def test_config_errors_name_the_key(changes, key):
  with pytest.raises(ConfigError, match=key):
    _config(**changes)


def test_defaults_are_the_papers():
  cfg = ColorizationConfig()
  assert (cfg.num_neighbors, cfg.sigma, cfg.rebalance_lambda, cfg.temperature) == (5, 5.0, 0.5, 0.38)
  assert cfg.output_stride == 8 and cfg.rebalance and cfg.gray_threshold == 5.0


def test_prior_from_images(tmp_path):
  red = np.zeros((16, 16, 3), np.uint8)
  red[..., 0] = 255  # Lab (53, 80, 67): bin (80, 70).
  blue_half = red.copy()
  blue_half[8:] = [0, 0, 255]  # Lab (32, 79, -108): bin (80, -110).
  dataset = tf.data.Dataset.from_tensor_slices({'image': np.stack([red, blue_half, red])})
  bins = [tuple(b) for b in colorization.load_bins()]
  prior, count = colorization.compute_prior(dataset, stride=2, sigma=0.0)
  assert count == 3 and prior.shape == (313,) and prior.sum() == pytest.approx(1.0)
  assert prior[bins.index((80, 70))] == pytest.approx(5 / 6) and prior[bins.index((80, -110))] == pytest.approx(1 / 6)
  smoothed, _ = colorization.compute_prior(dataset, max_images=1, sigma=5.0)
  assert smoothed.sum() == pytest.approx(1.0) and np.argmax(smoothed) == bins.index((80, 70))
  assert 0.5 < smoothed.max() < 0.9 and smoothed[bins.index((90, 70))] > 0.05  # Spread to neighbours.
  path = tmp_path / 'prior.npy'
  np.save(path, prior)
  task = ColorizationTask(_config(prior_path=str(path)))
  np.testing.assert_allclose(task.prior, prior)


@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_logits_match_label_grid_and_train(tiny_trunk, output_stride, precision):
  task = ColorizationTask(_config(output_stride=output_stride))
  examples = [task.preprocess({'image': _photo(seed=i)}, tf.constant([i, 0])) for i in range(2)]
  batch = {k: tf.stack([e[k] for e in examples]) for k in examples[0]}
  model = MultiTaskModel(tiny_trunk, {task.name: task}, LassoConfig(), precision=precision)
  total, _, outputs, grads, variables = model.compute_gradients(task.name, batch)
  assert outputs.shape == (2, 4, 4, 313) and np.isfinite(float(total)) and float(total) > 0
  assert not [v.name for g, v in zip(grads, variables) if g is None and 'post_bn' not in v.name]
  assert all(g is not None for g in grads[-len(model.heads[task.name].trainable_variables) :])
  metrics = task.metrics()
  task.update_metrics(metrics, outputs, batch, total)
  assert 0.0 <= float(metrics['accuracy'].result()) <= float(metrics['top5_accuracy'].result()) <= 1.0
  batch_metrics = task.batch_metrics(outputs, batch)
  assert float(batch_metrics['top5_accuracy']) == pytest.approx(float(metrics['top5_accuracy'].result()), abs=1e-6)
  images = task.image_summaries(outputs, batch)['gray_prediction_truth']
  assert images.shape == (2, 32, 96, 3) and images.dtype == tf.uint8
  gray = images.numpy()[..., :32, :].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 1  # The input panel is gray.


@pytest.mark.parametrize('target', ['subsample', 'mean'])
def test_preprocess_equals_converting_the_whole_crop(target):
  """L at every pixel and ab at the label cells equal one full Lab conversion of the crop."""
  from mtssl_tf.tasks import base

  task = ColorizationTask(_config(target=target))
  image = _photo(60, seed=3)
  for i in range(3):
    seed = tf.constant([2, i], tf.int64)
    out = task.preprocess({'image': image}, seed)
    seeds = base.stateless_seeds(seed, 3)
    side = int(60 * float(tf.random.stateless_uniform([], seeds[0], task.config.min_scale, 1.0)))
    y, x = (tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, dtype=tf.int32) % (60 - side + 1)).numpy()
    crop = tf.image.resize(tf.cast(image[y : y + side, x : x + side], tf.float32) / 255.0, [32, 32])
    crop = tf.image.stateless_random_flip_left_right(crop, seeds[2])
    lab = color.rgb_to_lab(tf.clip_by_value(crop, 0.0, 1.0)).numpy()
    # Pointwise conversions of the same pixels; L / 50 and ab to float32 rounding (~1e-5 on these scales).
    np.testing.assert_allclose(out['image'].numpy(), np.repeat(lab[..., :1] / 50.0 - 1.0, 3, -1), atol=1e-5)
    expected = colorization.cell_targets(tf.constant(lab[..., 1:]), target).numpy()
    np.testing.assert_allclose(out['ab_target'].numpy(), expected, atol=1e-3)
