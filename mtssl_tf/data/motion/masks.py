"""Motion masks from video: pixels whose motion the camera does not explain.

Pathak et al. 2017 (the motion segmentation task of Doersch & Zisserman 2017) mark
as foreground the pixels of frame t that move over the next 10 frames
independently of the camera, using Improved Dense Trajectories. This module is the
practical stand-in, with OpenCV only:

1. dense optical flow (Farneback) between consecutive frames, forward and backward;
2. every pixel of frame t is tracked by chaining the forward flows over the horizon;
   a track stops when the backward flow does not bring it back (occlusion, as in
   Sundaram et al. 2010) or when it leaves the frame;
3. at each step k a RANSAC homography from the track starts to their positions at
   t + k models the camera (pan, zoom, rotation of a distant scene); the residual
   of each track is its distance from where the homography puts it;
4. a pixel is moving if its largest residual over the horizon exceeds
   `residual_threshold`; the mask is cleaned by morphological opening and closing
   and components smaller than `min_area` are dropped.

All of it is numpy + OpenCV (no TensorFlow), so `tools/make_motion_masks.py` workers
stay small. `motion_masks` streams: it keeps only horizon + 1 frames in memory.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import cv2
import numpy as np


@dataclasses.dataclass
class MotionMaskConfig:
  """Parameters of the mask algorithm. Pixel values are at the flow resolution.

  Attributes:
    horizon: future frames each frame is tracked over (10 in the paper).
    min_horizon: frames with fewer future frames (the end of a clip) get no mask.
    flow_max_side: flow runs on frames downscaled to at most this longer side
      (speed, and less noise); masks are returned at the frame's own size.
    pyr_scale: Farneback pyramid scale.
    levels: Farneback pyramid levels (large pans need several).
    winsize: Farneback averaging window; smaller keeps object borders sharper,
      larger is more robust on weak texture.
    iterations: Farneback iterations per level.
    poly_n: Farneback polynomial neighbourhood.
    poly_sigma: Farneback polynomial Gaussian sigma (1.1 for poly_n 5).
    consistency: stop tracks whose forward-backward flow disagrees (occlusions).
    consistency_tolerance: px of forward-backward error always tolerated; 5% of
      the squared flow magnitude is tolerated on top (fast motion is less exact).
    grid_step: homography correspondences are tracks on a grid of this spacing.
    ransac_threshold: RANSAC inlier distance in px for the camera homography.
    residual_threshold: px a track must depart from the camera-explained position
      (at any step of the horizon) to be moving. Above the chained-flow drift of
      static background (under 1 px over 10 steps), below what a slow object
      moving 0.5 px/frame accumulates.
    open_radius: radius of the opening that removes speckle (0 disables).
    close_radius: radius of the closing that fills small gaps (0 disables).
    min_area: connected components smaller than this fraction of the frame are
      dropped (flow noise, not objects).
  """

  horizon: int = 10
  min_horizon: int = 3
  flow_max_side: int = 320
  pyr_scale: float = 0.5
  levels: int = 4
  winsize: int = 9
  iterations: int = 3
  poly_n: int = 5
  poly_sigma: float = 1.1
  consistency: bool = True
  consistency_tolerance: float = 0.7
  grid_step: int = 4
  ransac_threshold: float = 1.0
  residual_threshold: float = 2.0
  relative_threshold: float = 0.5
  peak_radius: int = 12
  open_radius: int = 1
  close_radius: int = 2
  min_area: float = 0.002

  def validate(self) -> MotionMaskConfig:
    """Raises ValueError naming the first bad field; returns self."""
    if self.horizon < 1:
      raise ValueError(f'horizon must be >= 1, got {self.horizon}')
    if not 1 <= self.min_horizon <= self.horizon:
      raise ValueError(f'min_horizon must be in [1, horizon={self.horizon}], got {self.min_horizon}')
    if self.flow_max_side < 16:
      raise ValueError(f'flow_max_side must be >= 16, got {self.flow_max_side}')
    if self.grid_step < 1 or self.winsize < 3 or self.levels < 1 or self.iterations < 1:
      raise ValueError('grid_step, winsize, levels and iterations must be positive (winsize >= 3)')
    if self.residual_threshold <= 0 or self.ransac_threshold <= 0:
      raise ValueError('residual_threshold and ransac_threshold must be > 0')
    if not 0 <= self.min_area < 1:
      raise ValueError(f'min_area is a fraction of the frame in [0, 1), got {self.min_area}')
    return self


@dataclasses.dataclass
class MaskedFrame:
  """One frame of a video and its motion mask.

  Attributes:
    index: frame index in the video (0-based).
    frame: uint8 [H, W, 3] RGB, as given.
    mask: bool [H, W] moving pixels, or None when fewer than `min_horizon` future
      frames were left to track (the end of the clip).
    horizon: future frames actually tracked (< config.horizon near the end).
  """

  index: int
  frame: np.ndarray
  mask: Optional[np.ndarray]
  horizon: int


def optical_flow(first: np.ndarray, second: np.ndarray, config: MotionMaskConfig) -> np.ndarray:
  """Dense Farneback flow from gray `first` to `second`: float32 [h, w, 2] (dx, dy)."""
  c = config
  return cv2.calcOpticalFlowFarneback(
    first, second, None, c.pyr_scale, c.levels, c.winsize, c.iterations, c.poly_n, c.poly_sigma, 0
  )


def _sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Bilinear lookup of a [h, w, 2] field at float (x, y) points [h, w, 2]."""
  return cv2.remap(field, points[..., 0], points[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _project(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
  """Applies a 3x3 homography to (x, y) points [..., 2]."""
  h = homography
  x, y = points[..., 0], points[..., 1]
  w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
  w = np.where(np.abs(w) < 1e-8, 1e-8, w)
  return np.stack([(h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w], -1)


def camera_residual(
  forward: List[np.ndarray], backward: List[Optional[np.ndarray]], config: MotionMaskConfig
) -> np.ndarray:
  """Largest departure of each pixel's track from the camera model over the horizon.

  Args:
    forward: flows frame t+k -> t+k+1 for k = 0..K-1, each float32 [h, w, 2].
    backward: flows t+k+1 -> t+k (None entries disable the occlusion check).
    config: algorithm parameters.

  Returns:
    float32 [h, w] residual in px (0 where no step could be evaluated).
  """
  height, width = forward[0].shape[:2]
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  start = np.stack([xs, ys], -1)
  position = start.copy()
  alive = np.ones((height, width), bool)
  worst = np.zeros((height, width), np.float32)
  s = config.grid_step
  grid = (slice(s // 2, None, s), slice(s // 2, None, s))
  for fwd, bwd in zip(forward, backward):
    step = _sample(fwd, position)
    position = position + step
    alive &= (position[..., 0] >= 0) & (position[..., 0] <= width - 1)
    alive &= (position[..., 1] >= 0) & (position[..., 1] <= height - 1)
    if bwd is not None:
      back = _sample(bwd, position)
      error = np.sum((step + back) ** 2, -1)
      allowed = config.consistency_tolerance**2 + 0.05 * (np.sum(step**2, -1) + np.sum(back**2, -1))
      alive &= error <= allowed
    use = alive[grid]
    if use.sum() < 8:
      break  # Too few tracks left for a camera model: later steps say nothing.
    homography, _ = cv2.findHomography(start[grid][use], position[grid][use], cv2.RANSAC, config.ransac_threshold)
    if homography is None:
      break
    residual = np.linalg.norm(position - _project(start, homography), axis=-1)
    worst = np.where(alive, np.maximum(worst, residual), worst)
  return worst


def clean_mask(moving: np.ndarray, config: MotionMaskConfig) -> np.ndarray:
  """Opening, closing and removal of small components of a bool mask."""
  mask = moving.astype(np.uint8)
  for op, radius in ((cv2.MORPH_OPEN, config.open_radius), (cv2.MORPH_CLOSE, config.close_radius)):
    if radius > 0:
      kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
      mask = cv2.morphologyEx(mask, op, kernel)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  keep = stats[:, cv2.CC_STAT_AREA] >= config.min_area * mask.size
  keep[0] = False  # Label 0 is the background.
  return keep[labels] if count > 1 else np.zeros(mask.shape, bool)


def _to_flow_resolution(frame: np.ndarray, config: MotionMaskConfig) -> np.ndarray:
  gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  scale = config.flow_max_side / max(gray.shape)
  if scale < 1:
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
  return gray


def frame_mask(grays: List[np.ndarray], config: MotionMaskConfig, flows: Optional[Dict] = None) -> np.ndarray:
  """Motion mask of `grays[0]` at flow resolution, tracked over the following frames.

  Args:
    grays: uint8 gray frames t, t+1, ..., t+K at flow resolution.
    config: algorithm parameters.
    flows: optional cache {k: (forward, backward)} of flows between grays[k] and
      grays[k+1], filled as computed (consecutive frames share them).

  Returns:
    bool [h, w].
  """
  flows = {} if flows is None else flows
  for k in range(len(grays) - 1):
    if k not in flows:
      fwd = optical_flow(grays[k], grays[k + 1], config)
      bwd = optical_flow(grays[k + 1], grays[k], config) if config.consistency else None
      flows[k] = (fwd, bwd)
  forward = [flows[k][0] for k in range(len(grays) - 1)]
  backward = [flows[k][1] for k in range(len(grays) - 1)]
  residual = camera_residual(forward, backward, config)
  moving = residual > config.residual_threshold
  if config.relative_threshold > 0 and config.peak_radius > 0:
    r = config.peak_radius
    peak = cv2.dilate(residual, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    moving &= residual >= config.relative_threshold * peak
  return clean_mask(moving, config)


def motion_masks(
  frames: Iterable[np.ndarray], config: Optional[MotionMaskConfig] = None, frame_stride: int = 1
) -> Iterator[MaskedFrame]:
  """Streams motion masks for every `frame_stride`-th frame of a video.

  Tracking always uses every frame; only frames 0, stride, 2 * stride, ... are
  yielded. Frames too close to the end get `mask=None` (see `MaskedFrame`). The
  input is consumed lazily, so a caller that stops early stops the decoding too.

  Args:
    frames: uint8 [H, W, 3] RGB frames in order, all the same size.
    config: algorithm parameters (default `MotionMaskConfig()`).
    frame_stride: yield every n-th frame.

  Yields:
    `MaskedFrame`s in frame order.

  Raises:
    ValueError: a frame that is not uint8 RGB or differs in size from the first.
  """
  config = (config or MotionMaskConfig()).validate()
  if frame_stride < 1:
    raise ValueError(f'frame_stride must be >= 1, got {frame_stride}')
  window: Deque[Tuple[int, np.ndarray, np.ndarray]] = collections.deque()
  flows: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}  # Keyed by the earlier frame's index.
  size = None

  def emit(future: int) -> MaskedFrame:
    index, frame, _ = window[0]
    if future < config.min_horizon:
      return MaskedFrame(index, frame, None, future)
    grays = [g for _, _, g in list(window)[: future + 1]]
    local = {k: flows[index + k] for k in range(future) if index + k in flows}
    small = frame_mask(grays, config, local)
    flows.update({index + k: v for k, v in local.items()})
    mask = cv2.resize(small.astype(np.uint8) * 255, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    return MaskedFrame(index, frame, mask >= 128, future)

  def drop_head():
    index = window.popleft()[0]
    flows.pop(index, None)

  for index, frame in enumerate(frames):
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
      raise ValueError(f'frame {index}: expected uint8 [H, W, 3], got {frame.dtype} {frame.shape}')
    if size is None:
      size = frame.shape
    elif frame.shape != size:
      raise ValueError(f'frame {index}: size {frame.shape[:2]} differs from the first frame {size[:2]}')
    window.append((index, frame, _to_flow_resolution(frame, config)))
    while window:
      if window[0][0] % frame_stride:
        drop_head()  # Not a yielded frame; its successors are still in the window.
      elif len(window) > config.horizon:
        yield emit(config.horizon)
        drop_head()
      else:
        break
  while window:
    if window[0][0] % frame_stride == 0:
      yield emit(len(window) - 1)
    drop_head()


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
  """Intersection over union of two bool masks (1.0 when both are empty)."""
  union = np.logical_or(predicted, truth).sum()
  return 1.0 if union == 0 else float(np.logical_and(predicted, truth).sum() / union)
