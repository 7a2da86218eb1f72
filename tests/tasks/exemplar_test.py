"""Exemplar: triplet loss formula, triplet construction, augmentation geometry, training."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.data import images
from mtssl_tf.tasks.exemplar import ExemplarConfig, ExemplarTask, cosine_distance, make_triplets, triplet_loss
from mtssl_tf.tasks.multitask import MultiTaskModel

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _config(**changes):
  cfg = ExemplarConfig()
  override(cfg, {**dict(patch_size=24, num_views=3, embedding_size=16, hidden_units=32, batch_size=4), **changes})
  validate_all(cfg)
  return cfg


def _image(size=64, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_defaults_follow_the_paper():
  cfg = ExemplarConfig()
  assert cfg.margin == 0.5 and cfg.grayscale_prob == 0.0 and cfg.num_views == 8 and cfg.embedding_size == 1000


def test_triplet_loss_equals_the_formula():
  a = tf.constant([[1.0, 0.0], [1.0, 0.0]])
  p = tf.constant([[1.0, 1.0], [1.0, 0.0]])  # D = 1 - 1/sqrt(2), then 0.
  n = tf.constant([[0.0, 1.0], [-1.0, 0.0]])  # D = 1, then 2.
  expected = np.mean([max(1 - 1 / np.sqrt(2) - 1 + 0.5, 0), max(0 - 2 + 0.5, 0)])
  assert float(triplet_loss(a, p, n, 0.5)) == pytest.approx(expected)
  np.testing.assert_allclose(cosine_distance(a, n).numpy(), [1.0, 2.0], atol=1e-6)


def test_triplets_pair_copies_of_one_image_against_the_next_image():
  # Embedding of (image i, copy v) = [i, v]: check who is paired with whom.
  b, v = 3, 3
  emb = tf.constant([[i, c] for i in range(b) for c in range(v)], tf.float32)
  anchor, positive, negative = (t.numpy() for t in make_triplets(emb, v))
  assert anchor.shape == (b * (v - 1), 2)
  assert np.all(anchor[:, 1] == 0) and np.all(anchor[:, 0] == positive[:, 0])
  assert np.all(positive[:, 1] >= 1) and np.all(negative[:, 1] == positive[:, 1])
  assert np.all(negative[:, 0] == (positive[:, 0] + 1) % b)


def test_without_augmentation_a_copy_is_the_region():
  cfg = _config(
    max_rotation=0.0, scale_range=[1.0, 1.0], max_shift=0.0, brightness=0.0, contrast_range=[1.0, 1.0],
    saturation_range=[1.0, 1.0], max_hue=0.0, region_fraction=0.375,
  )  # fmt: skip
  task = ExemplarTask(cfg)
  # A smooth image: the region's offset is fractional, so copies are interpolated.
  y, x = np.mgrid[0:64, 0:64]
  image = tf.constant(np.stack([x * 3, y * 3, (x + y) * 1.5], -1).astype(np.uint8))
  views = task.preprocess({'image': image}, tf.constant([1, 1]))['views'].numpy()
  region = (views[0] + 1.0) / 2.0 * 255.0
  # The region is 24 px (0.375 * 64) at a random offset: find it in the image.
  img = image.numpy().astype(np.float32)
  errors = [np.abs(img[y : y + 24, x : x + 24] - region).mean() for y in range(41) for x in range(41)]
  assert min(errors) < 1.0
  np.testing.assert_allclose(views[0], views[1], atol=1e-4)  # No augmentation: identical copies.


def test_augmented_copies_differ_and_preprocess_is_the_same_in_tf_data():
  task = ExemplarTask(_config())
  example = {'image': _image()}
  eager = task.preprocess(example, tf.constant([4, 2]))['views']
  graph = next(iter(tf.data.Dataset.from_tensors(example).map(lambda e: task.preprocess(e, tf.constant([4, 2])))))
  np.testing.assert_allclose(eager.numpy(), graph['views'].numpy(), atol=1e-4)
  assert eager.shape == (3, 24, 24, 3)
  assert np.abs(eager[0] - eager[1]).mean() > 0.05


def test_grayscale_option():
  task = ExemplarTask(_config(grayscale_prob=1.0))
  views = task.preprocess({'image': _image()}, tf.constant([0, 9]))['views'].numpy()
  np.testing.assert_allclose(views[..., 0], views[..., 1], atol=1e-5)


def test_validation_names_keys():
  with pytest.raises(ConfigError, match='exemplar.num_views'):
    _config(num_views=1)
  with pytest.raises(ConfigError, match='exemplar.scale_range'):
    _config(scale_range=[1.2, 0.8])


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_dataset_and_training_step(tiny_world, tiny_trunk, precision):
  task = ExemplarTask(_config())
  batch = next(iter(task.dataset(images.ReadOptions(), tiny_world['sources']['images_train'], seed=2)))
  assert batch['views'].shape == (4, 3, 24, 24, 3)
  model = MultiTaskModel(tiny_trunk, {task.name: task}, LassoConfig(), precision=precision)
  total, _, outputs, grads, variables = model.compute_gradients(task.name, batch)
  assert outputs.shape == (12, 16) and np.isfinite(float(total))
  assert not [v.name for g, v in zip(grads, variables) if g is None and 'post_bn' not in v.name]


def test_transforms_equal_one_matrix_per_copy():
  """The vectorised transforms against each copy's matrix built on its own (the formula step by step)."""
  import math

  from mtssl_tf.tasks import base

  task = ExemplarTask(_config(num_views=4))
  c = task.config
  seeds = base.stateless_seeds(tf.constant([5, 1], tf.int64), 4)
  region, offset = tf.constant(40.0), tf.constant([3.0, 7.0])
  got = task._transforms(region, offset, seeds).numpy()
  for view, seed in enumerate(seeds):
    s = base.stateless_seeds(seed, 3)
    angle = float(tf.random.stateless_uniform([1], s[0], -c.max_rotation, c.max_rotation)[0]) * math.pi / 180.0
    log_zoom = tf.random.stateless_uniform([1], s[1], math.log(c.scale_range[0]), math.log(c.scale_range[1]))
    shift = tf.random.stateless_uniform([2], s[2], -c.max_shift, c.max_shift).numpy() * 40.0
    scale = 40.0 / (c.patch_size * math.exp(float(log_zoom[0])))
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    centre = np.array([3.0, 7.0]) + 20.0 + shift  # (y, x)
    # Output pixel (x, y) maps to matrix @ ((x, y) - half) + centre (x, y).
    translation = np.array([centre[1], centre[0]]) - matrix @ np.full(2, c.patch_size / 2.0)
    expected = [matrix[0, 0], matrix[0, 1], translation[0], matrix[1, 0], matrix[1, 1], translation[1], 0.0, 0.0]
    # float32 products of values up to ~50 px: ~1e-5 absolute.
    np.testing.assert_allclose(got[view], expected, atol=1e-4)


def test_uniform_per_seed_equals_one_draw_per_seed():
  from mtssl_tf.tasks import base
  from mtssl_tf.tasks.exemplar import uniform_per_seed

  seeds = base.stateless_seeds(tf.constant([7, 3], tf.int64), 5)
  got = uniform_per_seed(seeds, -0.3, 1.2, [2]).numpy()
  expected = np.stack([tf.random.stateless_uniform([2], s, -0.3, 1.2).numpy() for s in seeds])
  # The same raw draws and the same float32 multiply-add: equal up to a rounding of values ~1.
  np.testing.assert_allclose(got, expected, atol=1e-6)
