"""Relative position: geometry of labels, preprocessing eager == tf.data, head, training step."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.data import images
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.tasks.relative_position import (
  DEEPCONTEXT_NOISE_SCALE,
  OFFSETS,
  PAPER_NOISE_FRACTION,
  RelativePositionConfig,
  RelativePositionHead,
  RelativePositionTask,
  drop_colors,
  normalize_patch,
)

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _config(**changes):
  cfg = RelativePositionConfig()
  override(cfg, dict(patch_size=16, gap=4, jitter=2, min_area=64 * 64, max_area=80 * 80, min_downsample=4,
                     hidden_units=32, batch_size=4, **changes))  # fmt: skip
  validate_all(cfg)
  return cfg


def _image(size=72, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_defaults_are_deepcontexts():
  cfg = RelativePositionConfig()
  assert (cfg.patch_size, cfg.gap, cfg.jitter) == (96, 48, 7)
  assert (cfg.min_area, cfg.max_area) == (150_000, 450_000)
  assert cfg.downsample_prob == pytest.approx(1 / 3) and cfg.color_dropping
  # Doersch et al. 2015's Gaussian colour-drop noise; deepcontext's head layout and fc widths.
  assert (cfg.color_drop_noise, cfg.head_layout, cfg.hidden_units) == ('gaussian_paper', 'spatial', 4096)


def test_labels_agree_with_patch_geometry():
  task = RelativePositionTask(_config())
  cell = 16 + 4
  seen = set()
  for i in range(200):
    label, first, second = task.sample_positions(tf.constant([80, 90, 3]), tf.constant([7, i]))
    delta = (second - first).numpy()
    # Undo the jitter (|jitter| <= 2 each, so |delta - offset * cell| <= 4 < cell / 2).
    recovered = tuple(int(v) for v in np.round(delta / cell))
    assert recovered == OFFSETS[int(label)]
    assert np.all(first.numpy() >= 0) and np.all(second.numpy() + 16 <= [80, 90])
    seen.add(int(label))
  assert seen == set(range(8))


def test_preprocess_same_eagerly_and_in_tf_data():
  task = RelativePositionTask(_config())
  example = {'image': _image(), 'label': tf.constant(0, tf.int64)}
  eager = task.preprocess(example, tf.constant([1, 2], tf.int64))
  ds = tf.data.Dataset.from_tensors(example).map(lambda e: task.preprocess(e, tf.constant([1, 2], tf.int64)))
  graph = next(iter(ds))
  np.testing.assert_allclose(eager['patches'].numpy(), graph['patches'].numpy(), atol=1e-5)
  assert int(eager['label']) == int(graph['label'])
  assert eager['patches'].shape == (2, 16, 16, 3)


def test_patches_are_normalised_and_colour_dropped():
  task = RelativePositionTask(_config(downsample_prob=0.0))
  patches = task.preprocess({'image': _image(), 'label': tf.constant(0, tf.int64)}, tf.constant([3, 4]))['patches']
  for patch in patches.numpy():
    assert abs(patch.mean()) < 1e-4 and np.sqrt((patch**2).mean()) == pytest.approx(1.0, rel=1e-3)
  np.testing.assert_allclose(normalize_patch(tf.constant([[1.0, 3.0]])).numpy(), [[-1.0, 1.0]])


def _noise_ratios(patch: np.ndarray, kept: int) -> list:
  """Std of each dropped channel over the kept channel's."""
  return [patch[..., c].std() / patch[..., kept].std() for c in range(3) if c != kept]


def _std_tolerance(n: int) -> float:
  # The sample std of n i.i.d. Gaussian draws has relative standard error ~1/sqrt(2n)
  # (uniform draws: less); 6 standard errors keep a false failure below 1e-8.
  return 6.0 / np.sqrt(2.0 * n)


@pytest.mark.numerics
@pytest.mark.parametrize('noise', ['gaussian_paper', 'deepcontext'])
def test_dropped_channels_get_faint_noise_eagerly_and_in_tf_data(noise):
  size = 64
  image = np.random.default_rng(3).uniform(0.2, 0.9, (size, size, 3)).astype(np.float32)
  seeds = [tf.constant([s, 11], tf.int64) for s in range(6)]
  eager = [drop_colors(tf.constant(image), s, noise).numpy() for s in seeds]
  ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(lambda s: drop_colors(tf.constant(image), s, noise))
  graph = [x.numpy() for x in ds]
  tol = _std_tolerance(size * size)
  kept_seen = set()
  for e, g in zip(eager, graph):
    np.testing.assert_allclose(e, g, atol=1e-6)  # The same stateless draws in both.
    # The kept channel is the input's, centred; float32 rounding of a mean of values < 1: ~1e-7.
    (kept,) = [c for c in range(3) if np.allclose(e[..., c], image[..., c] - image[..., c].mean(), atol=1e-5)]
    kept_seen.add(kept)
    for x in (e, g):
      if noise == 'gaussian_paper':
        # Doersch et al. 2015: std ~1/100 of the kept channel's.
        np.testing.assert_allclose(_noise_ratios(x, kept), PAPER_NOISE_FRACTION, rtol=tol)
      else:
        # deepcontext: U(0, 1) - 0.5 grey levels, std 1 / sqrt(12) of a level.
        dropped = [x[..., c].std() for c in range(3) if c != kept]
        np.testing.assert_allclose(dropped, DEEPCONTEXT_NOISE_SCALE / np.sqrt(12.0), rtol=tol)
      assert abs(x.mean(axis=(0, 1))).max() < 1e-3 * x[..., kept].std()  # Every channel centred.
  assert len(kept_seen) > 1  # The kept channel is drawn, not fixed.


@pytest.mark.numerics
def test_preprocessed_patches_keep_the_papers_noise_ratio():
  task = RelativePositionTask(_config(downsample_prob=0.0))
  example = {'image': _image(), 'label': tf.constant(0, tf.int64)}
  ds = tf.data.Dataset.range(4).map(lambda i: task.preprocess(example, tf.stack([i, i + 100])))
  tol = _std_tolerance(16 * 16)
  for batch in ds:
    for patch in batch['patches'].numpy():
      # Normalisation is linear, so it keeps the ratio; the kept channel is the only strong one.
      kept = int(np.argmax(patch.std(axis=(0, 1))))
      np.testing.assert_allclose(_noise_ratios(patch, kept), PAPER_NOISE_FRACTION, rtol=tol)


def test_harmonized_patches_are_gray():
  task = RelativePositionTask(_config(harmonize=True, downsample_prob=0.0))
  patches = task.preprocess({'image': _image(), 'label': tf.constant(0, tf.int64)}, tf.constant([5, 6]))['patches']
  np.testing.assert_allclose(patches[..., 0].numpy(), patches[..., 2].numpy(), atol=1e-6)


@pytest.mark.parametrize(
  'changes, key',
  [
    ({'min_area': 10, 'max_area': 5}, 'min_area'),
    ({'color_drop_noise': 'uniform'}, 'color_drop_noise'),
    ({'head_layout': 'global'}, 'head_layout'),
  ],
)
def test_bad_config_values_are_named(changes, key):
  with pytest.raises(ConfigError, match=f'relative_position.{key}'):
    validate_all(override(RelativePositionConfig(), changes))


@pytest.mark.numerics
def test_spatial_head_sees_where_features_are_and_pooled_head_does_not():
  tf.keras.utils.set_random_seed(0)
  # 3 pairs of 6x6x8 maps (a 96 px patch at stride 16 is 6x6).
  features = tf.constant(np.random.default_rng(5).normal(size=(6, 6, 6, 8)).astype(np.float32))
  flipped = tf.reverse(features, axis=[2])
  spatial = RelativePositionHead(16, 'spatial')
  logits = spatial(features, training=False)
  assert logits.shape == (3, 8)
  # deepcontext's layout: pool5 6x6 -> 3x3, flattened into fc6; the pair's fc6 into fc7.
  assert spatial.fc6.kernel.shape == (3 * 3 * 8, 16) and spatial.fc7.kernel.shape == (2 * 16, 16)
  assert spatial(features, training=True).shape == (3, 8)
  # Mirroring each map moves features between fc6 inputs: logits of order 1 change by
  # order 1, far above float32 rounding (~1e-6).
  assert np.abs(spatial(flipped, training=False).numpy() - logits.numpy()).max() > 1e-2
  pooled = RelativePositionHead(16, 'pooled')
  # Global average pooling forgets positions: equal up to the summation order (~1e-6).
  np.testing.assert_allclose(pooled(flipped).numpy(), pooled(features).numpy(), atol=1e-5)


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
@pytest.mark.parametrize('lasso', [False, True])
@pytest.mark.parametrize('layout', ['spatial', 'pooled'])
def test_dataset_head_and_training_step(tiny_world, tiny_trunk, precision, lasso, layout):
  task = RelativePositionTask(_config(head_layout=layout))
  ds = task.dataset(images.ReadOptions(), tiny_world['sources']['images_train'], seed=1)
  batch = next(iter(ds))
  assert batch['patches'].shape == (4, 2, 16, 16, 3) and batch['label'].shape == (4,)
  lasso_cfg = LassoConfig()
  lasso_cfg.enabled = lasso
  model = MultiTaskModel(tiny_trunk, {task.name: task}, lasso_cfg, precision=precision)
  total, task_loss, outputs, grads, variables = model.compute_gradients(task.name, batch)
  assert outputs.shape == (4, 8)
  assert outputs.dtype == (tf.bfloat16 if precision == 'mixed_bfloat16' else tf.float32)
  assert task_loss.dtype == tf.float32 and np.isfinite(float(total))
  assert float(total) > float(task_loss) if lasso else float(total) == float(task_loss)
  missing = [v.name for g, v in zip(grads, variables) if g is None and 'post_bn' not in v.name]
  assert not missing


def _reference_preprocess(task, image, seed):
  """The straightforward pipeline: rescale the whole image, crop both patches, always compute the downsampling."""
  from mtssl_tf.tasks import base

  c = task.config
  seeds = base.stateless_seeds(seed, 4)
  rescaled = tf.image.resize(tf.cast(image, tf.float32) / 255.0, task._rescaled_size(tf.shape(image), seeds[0]),
                             antialias=True)  # fmt: skip
  label, first, second = task.sample_positions(tf.shape(rescaled), seeds[1])
  patches = []
  for (y, x), patch_seed in ((first, seeds[2]), (second, seeds[3])):
    patch = rescaled[y : y + c.patch_size, x : x + c.patch_size]
    finish_seeds = base.stateless_seeds(patch_seed, 2)
    down_seeds = base.stateless_seeds(finish_seeds[0], 2)
    side = tf.random.stateless_uniform([], down_seeds[0], c.min_downsample, c.patch_size + 1, dtype=tf.int32)
    shrunk = tf.image.resize(tf.image.resize(patch, [side, side], antialias=True), [c.patch_size] * 2)
    patch = tf.where(tf.random.stateless_uniform([], down_seeds[1]) < c.downsample_prob, shrunk, patch)
    patch = drop_colors(patch, finish_seeds[1], c.color_drop_noise)
    patches.append(normalize_patch(patch))
  return label, tf.stack(patches)


@pytest.mark.parametrize('shape', [(72, 72), (90, 70), (150, 200)])
def test_preprocess_equals_the_straightforward_pipeline(shape):
  task = RelativePositionTask(_config(downsample_prob=0.5))
  image = tf.constant(np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8))
  for i in range(6):
    seed = tf.constant([3, i], tf.int64)
    out = task.preprocess({'image': image}, seed)
    label, patches = _reference_preprocess(task, image, seed)
    assert int(out['label']) == int(label)
    # Resampled pixels agree to float32 rounding (~1e-6 of [0, 1]); normalising by a random
    # patch's RMS (>= 0.05 here) scales that by <= 20.
    np.testing.assert_allclose(out['patches'].numpy(), patches.numpy(), atol=1e-4)
