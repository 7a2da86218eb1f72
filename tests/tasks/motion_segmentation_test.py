"""Motion segmentation: label downsampling, aligned crops, shapes at stride 8/16, training."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.tasks.motion_segmentation import (
  MotionSegmentationConfig,
  MotionSegmentationTask,
  downsample_labels,
)
from mtssl_tf.tasks.multitask import MultiTaskModel

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _config(**changes):
  cfg = MotionSegmentationConfig()
  override(cfg, {**dict(crop_size=32, hidden_units=16, batch_size=2), **changes})
  validate_all(cfg)
  return cfg


def _example(size=48):
  rng = np.random.default_rng(0)
  mask = np.zeros((size, size, 1), np.uint8)
  mask[:, : size // 2] = 1  # Left half moves.
  return {'image': tf.constant(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), 'mask': tf.constant(mask)}


def test_downsample_by_majority():
  mask = np.zeros((16, 16, 1), np.uint8)
  mask[:8, :8] = 1  # A full cell.
  mask[8:12, 8:16] = 1  # Half of a cell: counts as moving (>= 0.5).
  mask[:3, 8:16] = 1  # 3/8 of a cell: static.
  np.testing.assert_array_equal(downsample_labels(tf.constant(mask)).numpy(), [[1, 0], [0, 1]])


def test_labels_stay_aligned_with_the_frame():
  task = MotionSegmentationTask(_config(min_scale=1.0, flip=False, crop_size=48))
  out = task.preprocess(_example(), tf.constant([1, 2]))
  np.testing.assert_array_equal(out['labels'].numpy(), np.repeat([[1, 1, 1, 0, 0, 0]], 6, axis=0))
  flipped = MotionSegmentationTask(_config(min_scale=1.0, crop_size=48))
  labels = [flipped.preprocess(_example(), tf.constant([s, 0]))['labels'].numpy()[0] for s in range(8)]
  assert any(np.array_equal(row, [0, 0, 0, 1, 1, 1]) for row in labels)  # A flip moves the mask too.


def test_preprocess_same_eagerly_and_in_tf_data():
  task = MotionSegmentationTask(_config())
  eager = task.preprocess(_example(), tf.constant([3, 4]))
  graph = next(iter(tf.data.Dataset.from_tensors(_example()).map(lambda e: task.preprocess(e, tf.constant([3, 4])))))
  np.testing.assert_allclose(eager['image'].numpy(), graph['image'].numpy(), atol=1e-5)
  np.testing.assert_array_equal(eager['labels'].numpy(), graph['labels'].numpy())
  assert eager['image'].shape == (32, 32, 3) and eager['labels'].shape == (4, 4)


def test_config_errors():
  with pytest.raises(ConfigError, match='motion_segmentation.crop_size'):
    _config(crop_size=30)


@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_logits_match_label_grid_and_train(tiny_trunk, output_stride, precision):
  task = MotionSegmentationTask(_config(output_stride=output_stride))
  examples = [task.preprocess(_example(), tf.constant([i, 0])) for i in range(2)]
  batch = {k: tf.stack([e[k] for e in examples]) for k in examples[0]}
  model = MultiTaskModel(tiny_trunk, {task.name: task}, LassoConfig(), precision=precision)
  total, _, outputs, grads, variables = model.compute_gradients(task.name, batch)
  assert outputs.shape == (2, 4, 4, 2) and np.isfinite(float(total))
  assert not [v.name for g, v in zip(grads, variables) if g is None and 'post_bn' not in v.name]
  metrics = task.metrics()
  task.update_metrics(metrics, outputs, batch, total)
  assert 0.0 <= float(metrics['foreground_iou'].result()) <= 1.0
  assert task.image_summaries(outputs, batch)['frame_prediction_truth'].shape == (2, 32, 96, 3)
