"""Synthetic scenes: seeded, labels and boxes consistent with pixels, depth from geometry."""

import numpy as np
import pytest

from mtssl_tf.data.synthetic import scenes


def test_seeded_and_deterministic():
  a = scenes.render_scene(np.random.default_rng(3), 64, 80)
  b = scenes.render_scene(np.random.default_rng(3), 64, 80)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.boxes, b.boxes)
  assert a.image.shape == (64, 80, 3) and a.depth.shape == (64, 80)


def test_boxes_are_the_extent_of_visible_masks():
  rng = np.random.default_rng(0)
  for _ in range(10):
    s = scenes.render_scene(rng, 96, 96, max_objects=5)
    assert len(s.boxes) == len(s.classes) == len(s.masks) >= 1
    for box, mask in zip(s.boxes, s.masks):
      ys, xs = np.nonzero(mask)
      np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    assert not np.any(s.masks.sum(0) > 1)  # Occlusion leaves one owner per pixel.


def test_depth_follows_the_geometry():
  rng = np.random.default_rng(1)
  s = scenes.render_scene(rng, 128, 128)
  background = ~s.masks.any(0)
  column = np.where(background, s.depth, np.nan)
  # Floor depth shrinks towards the bottom of the image; the wall is at WALL_DEPTH.
  assert np.nanmax(column[0]) == pytest.approx(scenes.WALL_DEPTH)
  assert np.nanmean(column[-1]) < np.nanmean(column[len(column) // 2 + 20])
  assert np.all(s.depth > 0)


def test_requested_label_is_the_nearest_object():
  rng = np.random.default_rng(2)
  for label in range(10):
    s = scenes.render_scene(rng, 64, 64, label=label)
    assert s.label == label and label in s.classes


def test_num_classes_is_validated():
  with pytest.raises(ValueError, match='num_classes'):
    scenes.render_scene(np.random.default_rng(0), num_classes=11)


def test_shapes_differ_between_classes():
  masks = [scenes.shape_mask(c, 32) for c in range(len(scenes.CLASS_NAMES))]
  for i in range(len(masks)):
    for j in range(i + 1, len(masks)):
      assert (masks[i] != masks[j]).mean() > 0.05


def test_class_cue_is_validated():
  with pytest.raises(ValueError, match="class_cue.*'hue'"):
    scenes.render_scene(np.random.default_rng(0), class_cue='hue')


def test_shape_cue_scenes_keep_the_geometry_and_labels():
  rng = np.random.default_rng(4)
  for label in range(10):
    s = scenes.render_scene(rng, 64, 64, label=label, class_cue='shape')
    assert s.label == label and label in s.classes and s.image.dtype == np.uint8
    for box, mask in zip(s.boxes, s.masks):
      ys, xs = np.nonzero(mask)
      np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])


def test_class_patterns_differ_between_classes():
  patterns = [scenes.class_pattern(c, 32) for c in range(len(scenes.CLASS_NAMES))]
  for i in range(len(patterns)):
    for j in range(i + 1, len(patterns)):
      assert np.abs(patterns[i] - patterns[j]).mean() > 0.1, (i, j)
