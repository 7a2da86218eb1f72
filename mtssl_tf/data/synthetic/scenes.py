"""Procedural scenes: textured room, objects of K shape classes, boxes and true depth.

The synthetic world lets tests and the default run go through the real readers with
data whose labels are known exactly. A scene is a pinhole view of a room: a floor
plane below the horizon and a back wall, both textured, with fronto-parallel objects
standing on the floor. Depth follows the geometry (floor depth grows towards the
horizon, objects are at their own distance and occlude what is behind them), so the
depth task has a learnable signal; each object's class decides how it looks, so
classification and detection do too. How a class looks is the world's class cue:

* 'colour' (the original world): the class's shape, painted in the class's own hue with
  faint class-specific stripes. Colour alone tells the classes apart.
* 'shape': the class's shape, filled with the class's texture pattern (stripes, checks or
  dots at a class-specific number of cycles and angle). Every surface, objects and room
  alike, draws its colour from one class-independent distribution, so a grey image
  carries all the class information and colour none (see `CLASS_PATTERNS`).

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
# One hue per class (degrees), spaced so neighbouring classes differ in colour too ('colour' cue).
_CLASS_HUES = np.linspace(0, 360, len(CLASS_NAMES), endpoint=False)
CLASS_CUES = ('colour', 'shape')
# The 'shape' cue's surface pattern per class: (kind, cycles across the object's side, wave angle in degrees).
# A named choice of this world, not from the papers: three kinds, angles spread over 180 degrees, and 3-5
# cycles, so that a typical classification object (12-40 px at 128 px) shows its pattern at 2.4 px per cycle or
# more; on the smallest objects (8 px) fine patterns blur and the silhouette is left. Cycles are relative to the
# object's size, so a class's pattern is scale-invariant like its silhouette.
CLASS_PATTERNS = (
  ('stripes', 3.0, 0.0),  # circle
  ('stripes', 3.0, 90.0),  # square
  ('stripes', 5.0, 45.0),  # triangle
  ('stripes', 5.0, 135.0),  # ring
  ('checks', 3.0, 0.0),  # cross
  ('checks', 4.0, 45.0),  # diamond
  ('dots', 3.0, 0.0),  # star
  ('dots', 4.0, 45.0),  # ellipse
  ('stripes', 4.0, 157.5),  # bar
  ('checks', 5.0, 22.5),  # corner
)
# 'shape' cue surfaces: base value (HSV V) uniform in this range; hue follows it round the hue wheel (plus
# jitter), so colour is predictable from grey appearance (colorization has a signal) but not from the class.
_SURFACE_VALUE = (0.3, 0.7)
_SURFACE_HUE_JITTER = 20.0  # Degrees (std).
_SURFACE_SATURATION = (0.2, 0.8)
# Pattern amplitudes around the base value: within [0, 1] for every base value, so nothing clips and a
# surface's mean value is its base value for objects and background alike.
_OBJECT_AMPLITUDE = 0.25
_ROOM_AMPLITUDE = 0.15
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


def _gratings(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
  """The sum of three random oriented sine gratings, float32 [H, W] in [-3, 3]."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  value = np.zeros((height, width), np.float32)
  for _ in range(3):
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.02, 0.15) / scale
    value += np.sin((x * np.cos(angle) + y * np.sin(angle)) * freq * 2 * np.pi + rng.uniform(0, 6.3))
  return value


def texture(rng: np.random.Generator, height: int, width: int, scale: float = 1.0) -> np.ndarray:
  """A random colour texture in [0, 1]: a few oriented gratings plus fine noise."""
  value = 0.5 + _gratings(rng, height, width, scale) / 6.0 + rng.normal(0, 0.04, (height, width))
  hue = rng.uniform(0, 360)
  sat = rng.uniform(0.1, 0.5)
  rgb = hsv_to_rgb(np.full_like(value, hue), np.full_like(value, sat), np.clip(value, 0.05, 1.0))
  return rgb.astype(np.float32)


def surface_colour(rng: np.random.Generator) -> Tuple[float, float, float]:
  """One 'shape'-cue surface's (hue in degrees, saturation, base value), the same law for every surface.

  The hue follows the base value round the hue wheel, plus jitter: a grey image shows the
  value, so colour can be predicted from appearance, yet it never depends on a class.
  """
  low, high = _SURFACE_VALUE
  value = rng.uniform(low, high)
  hue = (value - low) / (high - low) * 360.0 + rng.normal(0, _SURFACE_HUE_JITTER)
  return float(hue % 360.0), float(rng.uniform(*_SURFACE_SATURATION)), float(value)


def _paint(hue: float, saturation: float, value: np.ndarray) -> np.ndarray:
  return hsv_to_rgb(np.full_like(value, hue), np.full_like(value, saturation), value).astype(np.float32)


def room_surface(rng: np.random.Generator, height: int, width: int, scale: float = 1.0) -> np.ndarray:
  """A 'shape'-cue wall or floor: gratings (as `texture`) around a `surface_colour`, RGB in [0, 1]."""
  hue, saturation, base = surface_colour(rng)
  value = base + _ROOM_AMPLITUDE * _gratings(rng, height, width, scale) / 3.0
  value = np.clip(value + rng.normal(0, 0.02, (height, width)), 0.0, 1.0)
  return _paint(hue, saturation, value.astype(np.float32))


def class_pattern(class_id: int, size: int, phase: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """The 'shape' cue's texture of a class on a [size, size] object, float32 in [-1, 1] (`CLASS_PATTERNS`)."""
  kind, cycles, angle = CLASS_PATTERNS[class_id % len(CLASS_PATTERNS)]
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  y, x = np.meshgrid(c, c, indexing='ij')
  a = np.deg2rad(angle)
  u = 2 * np.pi * cycles * (x * np.cos(a) + y * np.sin(a)) + phase[0]
  v = 2 * np.pi * cycles * (y * np.cos(a) - x * np.sin(a)) + phase[1]
  # tanh(3 sin): a square wave with soft edges, so JPEG and resizing keep it.
  if kind == 'stripes':
    pattern = np.tanh(3 * np.sin(u))
  elif kind == 'checks':
    pattern = np.tanh(3 * np.sin(u)) * np.tanh(3 * np.sin(v))
  else:  # dots
    pattern = np.tanh(3 * (np.cos(u) + np.cos(v) - 1.0))
  return pattern.astype(np.float32)


def object_surface(rng: np.random.Generator, class_id: int, silhouette: np.ndarray) -> np.ndarray:
  """A 'shape'-cue object: its class's pattern around a `surface_colour`, RGB [s, s, 3] in [0, 1].

  The pattern is centred and scaled over the silhouette, so the object's mean value is
  exactly its base value whatever its class: the class changes where light and dark go,
  never how light or how colourful the object is on average.
  """
  hue, saturation, base = surface_colour(rng)
  pattern = class_pattern(class_id, silhouette.shape[0], tuple(rng.uniform(0, 2 * np.pi, 2)))
  inside = pattern[silhouette]
  pattern = pattern - (inside.mean() if inside.size else 0.0)
  pattern /= max(float(np.abs(pattern[silhouette]).max()) if inside.size else 1.0, 1e-6)
  return _paint(hue, saturation, np.clip(base + _OBJECT_AMPLITUDE * pattern, 0.0, 1.0))


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
  class_cue: str = 'colour',
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
    class_cue: how classes look, one of `CLASS_CUES` (module docstring).

  Returns:
    A `Scene`.
  """
  if not 1 <= num_classes <= len(CLASS_NAMES):
    raise ValueError(f'num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}')
  if class_cue not in CLASS_CUES:
    raise ValueError(f'class_cue must be one of {CLASS_CUES}, got {class_cue!r}')
  shape_cue = class_cue == 'shape'
  horizon = height * rng.uniform(0.35, 0.55)
  depth = room_depth(height, width, horizon)
  surface = room_surface if shape_cue else texture
  image = np.where((depth >= WALL_DEPTH)[..., None], surface(rng, height, width), surface(rng, height, width, 0.5))
  light = np.clip(1.3 - depth / WALL_DEPTH * 0.5, 0.5, 1.0)[..., None]  # Far things are darker.
  if not shape_cue:
    image *= light
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
    if shape_cue:
      paint = object_surface(rng, int(cls), silhouette)
    else:
      color = hsv_to_rgb(_CLASS_HUES[cls] + rng.uniform(-12, 12), rng.uniform(0.6, 0.95), rng.uniform(0.6, 1.0))
      stripes = 0.85 + 0.15 * np.sin(np.arange(size)[:, None] * (0.3 + 0.1 * (cls % 3)) + np.zeros((1, size)))
      paint = color * stripes[..., None]
    region = (slice(top, top + size), slice(left, left + size))
    image[region] = np.where(silhouette[..., None], paint, image[region])
    depth[region] = np.where(silhouette, dist, depth[region])
    masks[:, top : top + size, left : left + size] &= ~silhouette  # Nearer objects occlude.
    masks[i, top : top + size, left : left + size] = silhouette
  if shape_cue:
    # The room's light falls on objects too, by image row (the empty room's depth there), not by the
    # object's own distance: an object's pixels are then lit as the background they cover, so its area
    # (a class trait) cannot change an image's mean brightness or colour.
    image *= light
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
