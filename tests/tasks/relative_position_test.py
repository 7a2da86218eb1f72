"""Relative position: geometry of labels, preprocessing eager == tf.data, head, training step."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.data import images
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.tasks.relative_position import (
  OFFSETS,
  RelativePositionConfig,
  RelativePositionTask,
  drop_colors,
  normalize_patch,
)


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
  dropped = drop_colors(tf.fill([8, 8, 3], 0.5), tf.constant([0, 1])).numpy()
  kept = [c for c in range(3) if np.allclose(dropped[..., c], 0.5)]
  assert len(kept) == 1  # One channel survives; the other two are noise.
  np.testing.assert_allclose(normalize_patch(tf.constant([[1.0, 3.0]])).numpy(), [[-1.0, 1.0]])


def test_harmonized_patches_are_gray():
  task = RelativePositionTask(_config(harmonize=True, downsample_prob=0.0))
  patches = task.preprocess({'image': _image(), 'label': tf.constant(0, tf.int64)}, tf.constant([5, 6]))['patches']
  np.testing.assert_allclose(patches[..., 0].numpy(), patches[..., 2].numpy(), atol=1e-6)


def test_bad_config_values_are_named():
  with pytest.raises(ConfigError, match='relative_position.min_area'):
    validate_all(override(RelativePositionConfig(), {'min_area': 10, 'max_area': 5}))


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
@pytest.mark.parametrize('lasso', [False, True])
def test_dataset_head_and_training_step(tiny_world, tiny_trunk, precision, lasso):
  task = RelativePositionTask(_config())
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
