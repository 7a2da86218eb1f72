"""Procedural scenes: textured room, objects of K shape classes, boxes and true depth.

The synthetic world lets tests and the default run go through the real readers with
data whose labels are known exactly. A scene is a pinhole view of a room: a floor
plane below the horizon and a back wall, both textured, with fronto-parallel objects
standing on the floor. Depth follows the geometry (floor depth grows towards the
horizon, objects are at their own distance and occlude what is behind them), so the
depth task has a learnable signal; each object's class is its shape, with a class
colour, so classification and detection do too.

Everything is numpy and seeded: the same `rng` state gives the same scene.
Box convention: [ymin, xmin, ymax, xmax] in pixels, ymax/xmax exclusive.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

CLASS_NAMES = (
  'circle',
  'square',
  'triangle',
  'ring',
  'cross',
  'diamond',
  'star',
  'ellipse',
  'bar',
  'corner',
)
# One hue per class (degrees), spaced so neighbouring classes differ in colour too.
_CLASS_HUES = np.linspace(0, 360, len(CLASS_NAMES), endpoint=False)
WALL_DEPTH = 8.0  # Metres; NYU rooms are 1-10 m deep.
CAMERA_HEIGHT = 1.2
FOCAL_FRACTION = 0.9  # Focal length as a fraction of the image width.


@dataclasses.dataclass
class Scene:
  """One rendered view.

  Attributes:
    image: uint8 [H, W, 3] RGB.
    depth: float32 [H, W] metres along the optical axis.
    boxes: float32 [N, 4] pixel boxes [ymin, xmin, ymax, xmax].
    classes: int32 [N] class ids in [0, K).
    masks: bool [N, H, W] visible pixels of each object.
    label: the class of the largest visible object (image-level label).
  """

  image: np.ndarray
  depth: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  masks: np.ndarray
  label: int


def shape_mask(class_id: int, size: int) -> np.ndarray:
  """Boolean [size, size] silhouette of a class's shape, centred."""
  c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
  y, x = np.meshgrid(c, c, indexing='ij')
  r = np.sqrt(x * x + y * y)
  theta = np.arctan2(y, x)
  name = CLASS_NAMES[class_id % len(CLASS_NAMES)]
  if name == 'circle':
    m = r < 0.95
  elif name == 'square':
    m = np.maximum(abs(x), abs(y)) < 0.8
  elif name == 'triangle':
    m = (y < 0.85) & (abs(x) < (y + 0.95) * 0.5)
  elif name == 'ring':
    m = (r < 0.95) & (r > 0.55)
  elif name == 'cross':
    m = ((abs(x) < 0.3) & (abs(y) < 0.95)) | ((abs(y) < 0.3) & (abs(x) < 0.95))
  elif name == 'diamond':
    m = abs(x) + abs(y) < 0.95
  elif name == 'star':
    m = r < 0.55 + 0.4 * np.cos(5 * theta)
  elif name == 'ellipse':
    m = (x / 0.95) ** 2 + (y / 0.5) ** 2 < 1
  elif name == 'bar':
    m = (abs(y) < 0.3) & (abs(x) < 0.95)
  else:  # corner
    m = ((abs(x + 0.55) < 0.35) & (abs(y) < 0.9)) | ((abs(y - 0.55) < 0.35) & (abs(x) < 0.9))
  return m


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """HSV (h in degrees, s and v in [0, 1]) to float RGB in [0, 1], elementwise."""
  h = np.asarray(h, np.float32) % 360.0 / 60.0
  c = v * s
  x = c * (1 - abs(h % 2 - 1))
  m = v - c
  i = np.floor(h).astype(np.int32) % 6
  zero = np.zeros_like(c)
  r = np.choose(i, [c, x, zero, zero, x, c])
  g = np.choose(i, [x, c, c, x, zero, zero])
  b = np.choose(i, [zero, zero, x, c, c, x])
  return np.stack([r + m, g + m, b + m], axis=-1)


def texture(rng: np.random.Generator, height: int, width: int, scale: float = 1.0) -> np.ndarray:
  """A random colour texture in [0, 1]: a few oriented gratings plus fine noise."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  value = np.zeros((height, width), np.float32)
  for _ in range(3):
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.02, 0.15) / scale
    value += np.sin((x * np.cos(angle) + y * np.sin(angle)) * freq * 2 * np.pi + rng.uniform(0, 6.3))
  value = 0.5 + value / 6.0 + rng.normal(0, 0.04, (height, width))
  hue = rng.uniform(0, 360)
  sat = rng.uniform(0.1, 0.5)
  rgb = hsv_to_rgb(np.full_like(value, hue), np.full_like(value, sat), np.clip(value, 0.05, 1.0))
  return rgb.astype(np.float32)


def room_depth(height: int, width: int, horizon: float) -> np.ndarray:
  """Depth of the empty room: floor below the horizon row, the back wall elsewhere."""
  focal = FOCAL_FRACTION * width
  rows = np.arange(height, dtype=np.float32) + 0.5
  below = rows - horizon
  floor = np.where(below > 0, CAMERA_HEIGHT * focal / np.maximum(below, 1e-3), np.inf)
  column = np.minimum(floor, WALL_DEPTH).astype(np.float32)
  return np.repeat(column[:, None], width, axis=1)


def render_scene(
  rng: np.random.Generator,
  height: int = 128,
  width: int = 128,
  num_classes: int = len(CLASS_NAMES),
  max_objects: int = 4,
  label: Optional[int] = None,
) -> Scene:
  """Renders one scene.

  Args:
    rng: numpy random generator (the only source of randomness).
    height: image height.
    width: image width.
    num_classes: K, classes drawn from the first K shapes (at most 10).
    max_objects: objects per scene are uniform in [1, max_objects].
    label: if given, the nearest (largest) object has this class, for
      classification datasets with a chosen label.

  Returns:
    A `Scene`.
  """
  if not 1 <= num_classes <= len(CLASS_NAMES):
    raise ValueError(f'num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}')
  horizon = height * rng.uniform(0.35, 0.55)
  depth = room_depth(height, width, horizon)
  image = np.where((depth >= WALL_DEPTH)[..., None], texture(rng, height, width), texture(rng, height, width, 0.5))
  image *= np.clip(1.3 - depth / WALL_DEPTH * 0.5, 0.5, 1.0)[..., None]  # Far things are darker.
  focal = FOCAL_FRACTION * width
  count = int(rng.integers(1, max_objects + 1))
  distances = np.sort(rng.uniform(1.5, WALL_DEPTH * 0.8, count))[::-1]  # Far first: painter's order.
  classes = rng.integers(0, num_classes, count).astype(np.int32)
  if label is not None:
    classes[-1] = label
  boxes: List[Tuple[float, float, float, float]] = []
  masks = np.zeros((count, height, width), bool)
  for i, (dist, cls) in enumerate(zip(distances, classes)):
    size = int(np.clip(rng.uniform(0.5, 0.9) * focal / dist, 8, min(height, width) * 0.9))
    foot = horizon + CAMERA_HEIGHT * focal / dist  # Row where the object touches the floor.
    top = int(np.clip(foot - size, 0, height - size))
    left = int(rng.integers(0, width - size + 1))
    silhouette = shape_mask(int(cls), size)
    color = hsv_to_rgb(_CLASS_HUES[cls] + rng.uniform(-12, 12), rng.uniform(0.6, 0.95), rng.uniform(0.6, 1.0))
    stripes = 0.85 + 0.15 * np.sin(np.arange(size)[:, None] * (0.3 + 0.1 * (cls % 3)) + np.zeros((1, size)))
    region = (slice(top, top + size), slice(left, left + size))
    image[region] = np.where(silhouette[..., None], color * stripes[..., None], image[region])
    depth[region] = np.where(silhouette, dist, depth[region])
    masks[:, top : top + size, left : left + size] &= ~silhouette  # Nearer objects occlude.
    masks[i, top : top + size, left : left + size] = silhouette
  kept = [i for i in range(count) if masks[i].any()]
  for i in kept:
    ys, xs = np.nonzero(masks[i])
    boxes.append((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
  areas = [masks[i].sum() for i in kept]
  image_label = int(label) if label is not None else int(classes[kept[int(np.argmax(areas))]])
  image = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1)
  return Scene(
    image=(image * 255 + 0.5).astype(np.uint8),
    depth=depth.astype(np.float32),
    boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
    classes=classes[kept].astype(np.int32),
    masks=masks[kept],
    label=image_label,
  )
