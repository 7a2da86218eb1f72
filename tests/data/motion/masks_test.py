"""The motion-mask algorithm against the synthetic clips' true masks."""

import numpy as np
import pytest

from mtssl_tf.data.motion.masks import MotionMaskConfig, mask_iou, motion_masks
from mtssl_tf.data.synthetic.video import render_clip


def _masks(clip, **config):
  return [m for m in motion_masks(list(clip.frames), MotionMaskConfig(**config)) if m.mask is not None]


def test_camera_motion_alone_gives_an_empty_mask():
  rng = np.random.default_rng(3)
  for _ in range(2):
    clip = render_clip(rng, 96, 96, 14, num_objects=0, camera_speed=1.5)
    coverage = [m.mask.mean() for m in _masks(clip)]
    assert coverage and max(coverage) < 0.02, coverage


def test_moving_objects_are_found_under_a_panning_camera():
  # Measured over 8 clips: IoU 0.46 at 128 px, 0.36 at 64 px (issue 3 note); a mask
  # that ignored motion would score ~0.08 (empty) or ~0.08 (everything).
  rng = np.random.default_rng(0)
  ious = []
  for _ in range(3):
    clip = render_clip(rng, 96, 96, 14, num_objects=2)
    ious += [mask_iou(m.mask, clip.masks[m.index]) for m in _masks(clip)]
  assert np.mean(ious) > 0.3, np.mean(ious)


def test_static_camera_mask_covers_the_object_not_the_frame():
  clip = render_clip(np.random.default_rng(1), 96, 96, 14, num_objects=1, camera_speed=0.0)
  found = _masks(clip)
  precision = np.mean([(m.mask & clip.masks[m.index]).sum() / max(1, m.mask.sum()) for m in found])
  recall = np.mean([(m.mask & clip.masks[m.index]).sum() / max(1, clip.masks[m.index].sum()) for m in found])
  assert precision > 0.6 and recall > 0.4, (precision, recall)


def test_stride_and_end_of_clip():
  clip = render_clip(np.random.default_rng(2), 48, 48, 12)
  out = list(motion_masks(list(clip.frames), MotionMaskConfig(horizon=4, min_horizon=2), frame_stride=3))
  assert [m.index for m in out] == [0, 3, 6, 9]
  assert [m.horizon for m in out] == [4, 4, 4, 2]
  assert all(m.mask is not None and m.mask.shape == (48, 48) for m in out)
  last = list(motion_masks(list(clip.frames[:3]), MotionMaskConfig(horizon=4, min_horizon=3)))
  assert [m.mask is None for m in last] == [True, True, True]  # Fewer than 3 future frames each.


def test_bad_frames_and_config_are_errors():
  frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 20, 3), np.uint8)]
  with pytest.raises(ValueError, match='frame 1: size'):
    list(motion_masks(frames))
  with pytest.raises(ValueError, match='frame 0: expected uint8'):
    list(motion_masks([np.zeros((16, 16, 3), np.float32)]))
  with pytest.raises(ValueError, match='min_horizon'):
    MotionMaskConfig(horizon=3, min_horizon=5).validate()
