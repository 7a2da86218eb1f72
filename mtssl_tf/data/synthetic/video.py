"""Synthetic video clips with the true motion mask of every frame.

A clip looks down on a textured plane through a camera that pans (and slightly
zooms); 1-3 textured objects of the scene shapes slide over it, each with its own
velocity, bouncing off the frame borders. Every object moves relative to the
background by at least `MIN_RELATIVE_SPEED` px/frame whichever way it bounces, so
the true mask of a frame (pixels that will move relative to the background within
the horizon) is exactly the union of the object silhouettes. Camera motion alone
must give an empty mask.

Clips are written as the real inputs of `tools/make_motion_masks.py`: MJPG `.avi`
(mp4v `.mp4` also works with OpenCV headless) or a folder of JPEG frames, with the
true masks next to them as `<name>.mask.npy` (bool [T, H, W]) for evaluation.
Everything is numpy + OpenCV and seeded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import cv2
import numpy as np

from mtssl_tf.data.synthetic.scenes import CLASS_NAMES, hsv_to_rgb, shape_mask, texture

if TYPE_CHECKING:
  from mtssl_tf.data.synthetic.world import Preset

MIN_RELATIVE_SPEED = 1.0  # px/frame: 10 px over the default horizon, far above flow noise.
MASK_SUFFIX = '.mask.npy'
FORMATS = ('avi', 'mp4', 'frames')
_FOURCC = {'avi': 'MJPG', 'mp4': 'mp4v'}


@dataclasses.dataclass
class Clip:
  """One rendered clip.

  Attributes:
    frames: uint8 [T, H, W, 3] RGB.
    masks: bool [T, H, W] true motion masks (object pixels).
    camera_speed: camera pan speed in px/frame (0 = static camera).
    num_objects: independently moving objects.
  """

  frames: np.ndarray
  masks: np.ndarray
  camera_speed: float
  num_objects: int


def _bounce(start: float, velocity: float, low: float, high: float, t: np.ndarray) -> np.ndarray:
  """Positions of a point moving at `velocity` that reflects off [low, high]."""
  span = max(high - low, 1e-6)
  p = np.mod(start - low + velocity * t, 2 * span)
  return low + np.where(p > span, 2 * span - p, p)


def _object_velocity(rng: np.random.Generator, background: np.ndarray, speed: Tuple[float, float]) -> np.ndarray:
  """A screen velocity that differs from the background's by enough after any bounce."""
  for _ in range(100):
    angle = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(*speed) * np.array([np.cos(angle), np.sin(angle)])
    # A bounce flips a component, so check all four sign combinations.
    if all(np.hypot(sx * v[0] - background[0], sy * v[1] - background[1]) >= MIN_RELATIVE_SPEED
           for sx in (-1, 1) for sy in (-1, 1)):  # fmt: skip
      return v
  return v + background + MIN_RELATIVE_SPEED  # Unreachable for sane speed ranges; keep moving.


def _noise(rng: np.random.Generator, height: int, width: int, cells: Tuple[int, ...] = (3, 6, 12, 24)) -> np.ndarray:
  """Isotropic multi-scale noise in [0, 1]: smooth random fields of several cell sizes.

  Unlike a sum of gratings it has texture in every direction, so optical flow is
  defined everywhere (a grating only tells motion across its stripes).
  """
  value = np.zeros((height, width), np.float32)
  for cell in cells:
    coarse = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    value += cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)[
      cell : cell + height, cell : cell + width
    ]
  value -= value.min()
  return value / max(float(value.max()), 1e-6)


def _plane(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """The background: a scene texture (colour, gratings) modulated by isotropic noise."""
  return texture(rng, height, width) * (0.35 + 0.9 * _noise(rng, height, width))[..., None]


def _object_sprite(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
  """A textured, saturated object of a random scene shape: (rgb [s, s, 3], alpha [s, s])."""
  silhouette = shape_mask(int(rng.integers(0, len(CLASS_NAMES))), size)
  color = hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.6, 0.95), rng.uniform(0.7, 1.0))
  detail = _noise(rng, size, size, (2, 4, 8))[..., None]
  rgb = np.clip(color * (0.35 + 0.9 * detail), 0, 1).astype(np.float32)
  return rgb, silhouette.astype(np.float32)


def render_clip(
  rng: np.random.Generator,
  height: int = 64,
  width: int = 64,
  num_frames: int = 16,
  num_objects: Optional[int] = None,
  camera_speed: Optional[float] = None,
  zoom: Optional[float] = None,
  object_speed: Tuple[float, float] = (1.2, 2.5),
) -> Clip:
  """Renders one clip.

  Args:
    rng: numpy random generator (the only source of randomness).
    height: frame height.
    width: frame width.
    num_frames: T.
    num_objects: moving objects (None: uniform in [1, 3]; 0: camera motion only).
    camera_speed: pan speed in px/frame in a random direction (None: uniform in
      [0.5, 2]; 0: static camera).
    zoom: relative scale change per frame (None: uniform in [-0.003, 0.003] when the
      camera pans, else 0).
    object_speed: range of object speeds on screen, px/frame.

  Returns:
    A `Clip`.
  """
  num_objects = int(rng.integers(1, 4)) if num_objects is None else num_objects
  camera_speed = float(rng.uniform(0.5, 2.0)) if camera_speed is None else camera_speed
  zoom = (float(rng.uniform(-0.003, 0.003)) if camera_speed > 0 else 0.0) if zoom is None else zoom
  t = np.arange(num_frames, dtype=np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  direction = np.array([np.cos(angle), np.sin(angle)])
  scales = (1.0 + zoom) ** t
  # The plane is larger than the frame by the whole camera path plus the zoom-out.
  travel = camera_speed * num_frames
  margin = int(np.ceil(travel / 2 + max(height, width) * max(0.0, 1 / scales.min() - 1) / 2)) + 4
  plane = _plane(rng, height + 2 * margin, width + 2 * margin)
  centre = np.array([width / 2 + margin, height / 2 + margin]) - direction * travel / 2
  sprites = []
  for _ in range(num_objects):
    size = int(np.clip(rng.uniform(0.2, 0.35) * min(height, width), 6, min(height, width) - 2))
    rgb, alpha = _object_sprite(rng, size)
    velocity = _object_velocity(rng, -camera_speed * direction, object_speed)
    xs = _bounce(rng.uniform(0, width - size), velocity[0], 0, width - size, t)
    ys = _bounce(rng.uniform(0, height - size), velocity[1], 0, height - size, t)
    sprites.append((rgb, alpha, xs, ys))
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  masks = np.zeros((num_frames, height, width), bool)
  for i in range(num_frames):
    cx, cy = centre + direction * camera_speed * i
    inv = 1.0 / scales[i]
    # Output pixel (x, y) shows plane point centre + (x - W/2, y - H/2) / scale.
    warp = np.float32([[inv, 0, cx - width / 2 * inv], [0, inv, cy - height / 2 * inv]])
    frame = cv2.warpAffine(plane, warp, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    coverage = np.zeros((height, width), np.float32)
    for rgb, alpha, xs, ys in sprites:
      shift = np.float32([[1, 0, xs[i]], [0, 1, ys[i]]])
      a = cv2.warpAffine(alpha, shift, (width, height), flags=cv2.INTER_LINEAR)[..., None]
      colour = cv2.warpAffine(rgb, shift, (width, height), flags=cv2.INTER_LINEAR)
      frame = frame * (1 - a) + colour * a
      coverage = np.maximum(coverage, a[..., 0])
    frame = frame + rng.normal(0, 0.01, frame.shape)  # Sensor noise, new every frame.
    frames[i] = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
    masks[i] = coverage >= 0.5
  return Clip(frames=frames, masks=masks, camera_speed=camera_speed, num_objects=num_objects)


def write_video_file(path: str, frames: np.ndarray, fps: float = 10.0) -> str:
  """Writes RGB frames as a real video file: MJPG for `.avi`, mp4v for `.mp4`.

  Raises:
    ValueError: unsupported extension, or OpenCV cannot open a writer for it.
  """
  ext = os.path.splitext(path)[1].lower().lstrip('.')
  if ext not in _FOURCC:
    raise ValueError(f'video {path!r}: extension must be one of .avi, .mp4')
  height, width = frames.shape[1:3]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*_FOURCC[ext]), fps, (width, height))
  if not writer.isOpened():
    raise ValueError(f'OpenCV cannot write {_FOURCC[ext]} video {path!r}')
  try:
    for frame in frames:
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  finally:
    writer.release()
  return path


def write_frame_folder(folder: str, frames: np.ndarray, quality: int = 95) -> str:
  """Writes RGB frames as `folder/000000.jpg`, `000001.jpg`, ... (sorted by name = time)."""
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    with open(os.path.join(folder, f'{i:06d}.jpg'), 'wb') as f:
      f.write(data.tobytes())
  return folder


def write_clip(clip: Clip, directory: str, name: str, fmt: str = 'avi') -> str:
  """Writes a clip as `<name>.avi|.mp4` or folder `<name>/`, and `<name>.mask.npy`.

  Returns:
    The path of the video file or frame folder.
  """
  if fmt not in FORMATS:
    raise ValueError(f'clip format must be one of {FORMATS}, got {fmt!r}')
  os.makedirs(directory, exist_ok=True)
  base = os.path.join(directory, name)
  if fmt == 'frames':
    path = write_frame_folder(base, clip.frames)
  else:
    path = write_video_file(f'{base}.{fmt}', clip.frames)
  np.save(base + MASK_SUFFIX, clip.masks)
  return path


def write_clips(directory: str, num_videos: int, num_frames: int, size: int, seed: int = 0) -> List[str]:
  """Writes `num_videos` random clips, alternating `.avi` files and frame folders."""
  rng = np.random.default_rng(seed)
  return [
    write_clip(render_clip(rng, size, size, num_frames), directory, f'clip_{i:04d}', 'avi' if i % 2 == 0 else 'frames')
    for i in range(num_videos)
  ]


def write_video_part(root: str, preset: Preset, seed: int) -> Dict[str, str]:
  """The synthetic world's video part: clips, then motion masks made from them.

  Writes `root/videos/` (clips and true masks, see `write_clips`) and runs the real
  mask pipeline (`mtssl_tf.data.motion.writer.make_motion_masks`) on it into
  `root/motion/motion-*`, so the motion segmentation task trains on estimated masks
  exactly as it would on real video.

  Args:
    root: the world directory.
    preset: sizes (`videos`, `video_frames`, `image_size`, `num_shards`).
    seed: generation seed.

  Returns:
    Manifest source entries: 'videos' (the clip folder) and
    'motion_segmentation_train' (`tfrecord:<root>/motion/motion-*`).
  """
  from mtssl_tf.data.motion import writer  # Imported here: it is the consumer, not a dependency, of the clips.

  videos = os.path.join(root, 'videos')
  motion = os.path.join(root, 'motion')
  write_clips(videos, preset.videos, preset.video_frames, preset.image_size, seed=seed + 10)
  workers = 1 if preset.videos <= 4 else min(4, os.cpu_count() or 1)
  writer.make_motion_masks(videos, motion, num_shards=max(1, min(preset.num_shards, preset.videos)), workers=workers)
  return {'videos': videos, 'motion_segmentation_train': f'tfrecord:{motion}/{writer.SHARD_PREFIX}-*'}
