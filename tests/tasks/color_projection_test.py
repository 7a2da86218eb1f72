"""Relative position's colour projection (Doersch et al. 2015 §3.1): values, what it removes, the task with it on."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override, validate_all
from mtssl_tf.data import images
from mtssl_tf.tasks.relative_position import (
  GREEN_MAGENTA_AXIS,
  RelativePositionConfig,
  RelativePositionTask,
  project_colors,
)

AXIS = np.array(GREEN_MAGENTA_AXIS)
# The paper's matrix, in float64: B = I - a^T a / (a a^T).
B = np.eye(3) - np.outer(AXIS, AXIS) / AXIS.dot(AXIS)
# float32 error of one projected value of colours in [0, 1]: a . c (exact x2 / x-1, two additions of
# partial sums <= 4: <= 7 u), / 6, x a (exact) and one subtraction (<= 2 u) with u = 2^-24 ~ 6e-8, plus
# the inputs' own float32 rounding (<= u each, through rows of B whose |.| sums to <= 4/3): < 5e-7.
PROJECTION_ATOL = 1e-6
# A sum of three such values (a . c, grey, red - blue: |weights| sum <= 4): < 2e-6.
COMPONENT_ATOL = 4 * 5e-7


def _config(**changes):
  cfg = RelativePositionConfig()
  base = dict(patch_size=16, gap=4, jitter=2, min_area=64 * 64, max_area=80 * 80, min_downsample=4, hidden_units=32,
              batch_size=4, color_dropping=False, color_projection=True)  # fmt: skip
  base.update(changes)
  override(cfg, base)
  validate_all(cfg)
  return cfg


def _example(image: np.ndarray):
  return {'image': tf.constant(image), 'label': tf.constant(0, tf.int64)}


@pytest.mark.numerics
def test_projection_matches_hand_computed_values():
  # c - (a . c / 6) a: green and magenta become grey, grey stays, red loses its green-magenta part.
  colours = [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (0.2, 0.7, 0.4)]
  expected = [
    (1 / 3, 1 / 3, 1 / 3),
    (2 / 3, 2 / 3, 2 / 3),
    (0.5, 0.5, 0.5),
    (5 / 6, 1 / 3, -1 / 6),
    (1 / 3, 13 / 30, 8 / 15),
  ]
  out = project_colors(tf.constant([colours], tf.float32)).numpy()[0]
  np.testing.assert_allclose(out, expected, rtol=0, atol=PROJECTION_ATOL)
  # The same as the paper's matrix on any image (B is symmetric: row or column vectors alike).
  image = np.random.default_rng(0).uniform(0.0, 1.0, (8, 9, 3)).astype(np.float32)
  np.testing.assert_allclose(project_colors(tf.constant(image)).numpy(), image @ B, rtol=0, atol=PROJECTION_ATOL)
  assert project_colors(tf.constant(image, tf.float64)).dtype == tf.float64


@pytest.mark.numerics
def test_projection_removes_the_green_magenta_axis_and_keeps_the_rest():
  image = np.random.default_rng(1).uniform(0.0, 1.0, (16, 16, 3)).astype(np.float32)
  out = project_colors(tf.constant(image)).numpy().astype(np.float64)
  # Nothing left along a; the grey [1, 1, 1] and red-blue [1, 0, -1] components (both orthogonal to a) unchanged.
  np.testing.assert_allclose(out @ AXIS, 0.0, atol=COMPONENT_ATOL)
  for kept in ([1.0, 1.0, 1.0], [1.0, 0.0, -1.0]):
    np.testing.assert_allclose(out @ kept, image.astype(np.float64) @ kept, atol=COMPONENT_ATOL)
  # A projection: applying it twice changes nothing (outputs lie in [-1/6, 7/6]: the bound x 7/6, and a . out
  # itself is rounding, <= 2e-6, of which a / 3 comes back).
  np.testing.assert_allclose(project_colors(tf.constant(out, tf.float32)).numpy(), out, atol=2 * PROJECTION_ATOL)


@pytest.mark.numerics
def test_projection_commutes_with_the_downsampling():
  # The task projects after the downsampling, the paper before: both linear, so equal up to rounding.
  image = tf.constant(np.random.default_rng(2).uniform(0.0, 1.0, (32, 32, 3)).astype(np.float32))

  def down_up(x):
    return tf.image.resize(tf.image.resize(x, [10, 10], antialias=True), [32, 32])

  # Each resize sums ~7 taps per axis in two passes of values <= 4/3 (~1e-6 each); with the
  # projection's 5e-7, both orders stay within ~5e-6 of the exact value.
  np.testing.assert_allclose(
    project_colors(down_up(image)).numpy(), down_up(project_colors(image)).numpy(), rtol=0, atol=1e-5
  )


@pytest.mark.numerics
def test_task_patches_are_projected_normalised_and_keep_colour():
  task = RelativePositionTask(_config(downsample_prob=0.0))
  image = np.random.default_rng(3).integers(0, 256, (72, 72, 3), dtype=np.uint8)
  for i in range(4):
    patches = task.preprocess(_example(image), tf.constant([4, i], tf.int64))['patches'].numpy()
    assert patches.shape == (2, 16, 16, 3)
    for patch in patches:
      assert abs(patch.mean()) < 1e-4 and np.sqrt((patch**2).mean()) == pytest.approx(1.0, rel=1e-3)
      # a sums to 0, so normalize_patch's mean removal keeps a . p = 0; dividing by the patch's RMS
      # (~0.2 for random pixels) scales the 2e-6 projection error to ~1e-5.
      np.testing.assert_allclose(patch.astype(np.float64) @ AXIS, 0.0, atol=1e-4)
      # Unlike colour dropping (two channels at 1/100), every channel stays strong: for independent
      # channels of equal variance the normalised stds are sqrt(5/4), sqrt(1/2), sqrt(5/4) (diag B / (2/3)).
      assert patch.std(axis=(0, 1)).min() > 0.4


@pytest.mark.numerics
def test_an_image_varying_only_along_green_magenta_gives_flat_patches():
  # Grey 128 plus k (-1, 2, -1) grey levels, k in [-40, 40]: all its variation lies on the axis.
  k = np.random.default_rng(4).integers(-40, 41, (72, 72, 1))
  image = (128 + k * AXIS.astype(np.int64)).astype(np.uint8)
  seed = tf.constant([5, 6], tf.int64)
  projected = RelativePositionTask(_config()).preprocess(_example(image), seed)['patches'].numpy()
  plain = RelativePositionTask(_config(color_projection=False)).preprocess(_example(image), seed)['patches'].numpy()
  # Without a colour transform the patch is that variation, normalised to RMS 1, all along a.
  assert np.sqrt((plain**2).mean()) == pytest.approx(1.0, rel=1e-3)
  # Projected, a constant grey is left: rounding (~1e-6 of [0, 1]) over normalize_patch's RMS floor 1e-3.
  assert np.abs(projected).max() < 1e-2


@pytest.mark.numerics
def test_dataset_yields_projected_batches(tiny_world):
  task = RelativePositionTask(_config())
  ds = task.dataset(images.ReadOptions(), tiny_world['sources']['images_train'], seed=1)
  for batch in ds.take(2):
    patches, labels = batch['patches'].numpy(), batch['label'].numpy()
    assert patches.shape == (4, 2, 16, 16, 3) and labels.shape == (4,)
    assert np.all((labels >= 0) & (labels < 8)) and np.all(np.isfinite(patches))
    # Worst case: the 2e-6 projection error over normalize_patch's RMS floor 1e-3 (a flat patch).
    np.testing.assert_allclose(patches.astype(np.float64) @ AXIS, 0.0, atol=1e-2)


@pytest.mark.parametrize(
  'changes, match',
  [
    ({'color_dropping': True}, 'relative_position.color_projection: exclusive with color_dropping'),
    ({'harmonize': True}, 'relative_position.color_projection: exclusive with harmonize'),
  ],
)
def test_inconsistent_colour_settings_are_named(changes, match):
  with pytest.raises(ConfigError, match=match):
    _config(**changes)


def test_defaults_keep_colour_dropping():
  cfg = RelativePositionConfig()
  validate_all(cfg)
  assert cfg.color_dropping and not cfg.color_projection
  assert not _config(color_projection=False).color_projection  # Neither: plain colour, valid.
  with pytest.raises(ValueError, match='relative_position.color_projection: needs RGB'):
    project_colors(tf.zeros([2, 2, 4]))
