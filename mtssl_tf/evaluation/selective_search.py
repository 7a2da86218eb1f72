"""Selective search object proposals (Uijlings et al., IJCV 2013) as R-CNN computed them on PASCAL VOC.

R-CNN and Fast R-CNN took their VOC proposals from `selective_search_boxes.m` (rbgirshick/rcnn,
"fast mode", the image at full resolution), which runs the authors' IJCV code
(SelectiveSearchCodeIJCV: `Image2HierarchicalGrouping.m` and its helpers). This module follows
that procedure:

1. Optionally downscale so the longer side is at most `max_image_side` (R-CNN's `max_dim`;
   0 keeps the image, R-CNN's setting for VOC). Boxes are scaled back at the end.
2. For every segmentation threshold k (fast: 50, 100; quality: 50, 100, 150, 300) and colour
   space (fast: HSV, Lab; quality: also rgI, H, Intensity): convert the image to the colour
   space as 8-bit channels (`Image2ColourSpace.m`) and segment it with Felzenszwalb and
   Huttenlocher's graph method (sigma 0.8, min_size = k).
3. Group the segments hierarchically once per similarity strategy (fast: colour + texture +
   size + fill, texture + size + fill; quality: also fill, size): regions whose pixels touch
   (4-connectivity) are neighbours; the most similar neighbouring pair is merged until one
   region is left (`BlobStruct2HierarchicalGrouping.m`). Similarities (paper §3.2, the
   strategy's similarity is the sum of its terms): colour = histogram intersection of 25-bin
   per-channel histograms; texture = intersection of 8-orientation, 10-bin histograms of
   Gaussian derivatives (sigma 1) of each channel; size = 1 - (size_i + size_j) / size_image;
   fill = 1 - (bounding-box area of i and j - size_i - size_j) / size_image. Histograms are
   L1-normalised; a merged region's are the size-weighted mean of its parts'.
4. Rank (paper §3.3, `Image2HierarchicalGrouping.m` + `selective_search_boxes.m`): in each
   hierarchy merge m of n - 1 gets position n - m (1 for the top region); the n initial
   regions of a (k, colour space) segmentation are added once, at position n. Every position
   is multiplied by a uniform random number in [0, 1) (a seeded numpy Generator), all boxes are
   sorted ascending, then boxes narrower or lower than `min_box_side` (`FilterBoxesWidth.m`,
   R-CNN's minBoxWidth = 20, in pixels of the segmented image) and duplicates, keeping the
   first (`BoxRemoveDuplicates.m`), are dropped.

Where this code departs from the IJCV/R-CNN MATLAB code (our documented choices):

* Segmentation is `skimage.segmentation.felzenszwalb`, not the authors' `mexFelzenSegmentIndex`
  (the reference C++ code). Both build the 8-connected grid graph on the Gaussian-smoothed
  channels with Euclidean colour distance and the same k / |C| threshold on the 0..255 scale
  (skimage divides `scale` by 255 for its [0, 1] image), then merge components below
  min_size; they differ in the smoothing kernel's border handling, the exact-tie rule of the
  threshold (< vs <=) and the order of equal-weight edges, so segment boundaries can differ
  by a few pixels.
* Lab is skimage's `rgb2lab` (D65 white), stored as MATLAB's 8-bit encoding (L * 255 / 100,
  a + 128, b + 128); MATLAB's `makecform('srgb2lab')` adapts to the ICC D50 white. HSV, the
  normalised rg of rgI (min-max scaled over the image, as `NormalizeArray.m`) and intensity
  (MATLAB's `rgb2gray` weights) follow `Image2ColourSpace.m`, rounded to 8 bits as `im2uint8`.
* Texture follows the paper (and this project's brief): each channel's own Gaussian
  derivatives, sigma 1. The released `BlobStructTextureHist.m` differentiates the first
  channel three times (`colourIm(:,:,1)` inside its loop over channels) with sigma 0.8. Its
  bins (`round(value * 9 / 0.43)`, 0.43 the "maximum value of gradient") are kept; values
  above 0.43, which the MATLAB code lets spill into the next channel's bins, go to the last bin.
* Size and fill use pixel counts, as the paper defines them; `Image2HierarchicalGrouping.m`
  stores a third of that (`blobSizes ./ 3`) as the region size, which weakens both terms.
* Ties between equal similarities go to the most recently formed pair, as the MATLAB code's
  stable re-sort does; region indices themselves follow skimage's labelling.
* Downscaling uses Pillow's bicubic resize (antialiased when shrinking, as MATLAB's
  `imresize`; shorter side rounded up as `imresize` does) and boxes go back per axis
  (edge * original / downscaled size), so they end exactly at the image border; R-CNN maps
  both axes with the long side's factor ((box - 1) * scale + 1 in 1-based pixels).

Sources: Uijlings, van de Sande, Gevers, Smeulders, "Selective Search for Object Recognition",
IJCV 104(2), 2013; SelectiveSearchCodeIJCV (Uijlings, 2013); rbgirshick/rcnn
`selective_search/selective_search_boxes.m` and rbgirshick/fast-rcnn's proposals; Felzenszwalb
and Huttenlocher, "Efficient Graph-Based Image Segmentation", IJCV 59(2), 2004.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color as skcolor
from skimage.segmentation import felzenszwalb

MODES = ('fast', 'quality')
# selective_search_boxes.m: the quality lists; fast mode takes the first two of each.
COLOUR_SPACES = ('hsv', 'lab', 'rgi', 'h', 'intensity')
STRATEGIES = (
  ('colour', 'texture', 'size', 'fill'),  # SSSimColourTextureSizeFillOrig
  ('texture', 'size', 'fill'),  # SSSimTextureSizeFill
  ('fill',),  # SSSimBoxFillOrig
  ('size',),  # SSSimSize
)
THRESHOLDS = (50, 100, 150, 300)  # Felzenszwalb k; min_size = k.
FAST_COUNT = 2
SEGMENTATION_SIGMA = 0.8

COLOUR_BINS = 25  # BlobStructColourHist.m
TEXTURE_BINS = 10  # BlobStructTextureHist.m
TEXTURE_ORIENTATIONS = 8
TEXTURE_SIGMA = 1.0  # Paper §3.2.
TEXTURE_MAX = 0.43  # BlobStructTextureHist.m: "semi arbitrary ... maximum value of gradient".

# MATLAB rgb2gray (Rec. 601 luma).
_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])


@dataclasses.dataclass(frozen=True)
class SelectiveSearchSettings:
  """Selective search's settings (module docstring).

  Attributes:
    mode: 'fast' (R-CNN's VOC proposals: 2 thresholds x 2 colour spaces x 2 strategies) or
      'quality' (4 x 5 x 4).
    min_box_side: boxes whose height or width, in pixels of the segmented (possibly downscaled)
      image, is below this are dropped (R-CNN's minBoxWidth).
    max_image_side: the image is downscaled so its longer side is at most this; 0 keeps it
      (R-CNN on VOC).
    seed: seed of the numpy Generator behind the pseudo-random ranking.
  """

  mode: str = 'fast'
  min_box_side: int = 20
  max_image_side: int = 0
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    if self.mode not in MODES:
      raise ValueError(f'SelectiveSearchSettings.mode: must be one of {MODES}, got {self.mode!r}')
    for name in ('min_box_side', 'max_image_side', 'seed'):
      value = getattr(self, name)
      # bool is an int subclass; True as a size is a mistake, not 1.
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f'SelectiveSearchSettings.{name}: must be an integer >= 0, got {value!r}')

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def selective_search(image: np.ndarray, settings: SelectiveSearchSettings = SelectiveSearchSettings()) -> np.ndarray:
  """Selective search proposals of one image, best-ranked first.

  Args:
    image: uint8 [H, W, 3] RGB, H and W at least 2.
    settings: see `SelectiveSearchSettings`.

  Returns:
    float32 [N, 4] boxes [ymin, xmin, ymax, xmax] in pixels of `image`, as pixel edges (a region
    covering rows 2..5 inclusive has ymin 2, ymax 6); [0, 4] when the image is smaller than
    `min_box_side`.

  Raises:
    ValueError: for an image that is not uint8 [H, W, 3] with H, W >= 2, or bad settings.
  """
  settings.validate()
  image = _check_image(image)
  height, width = image.shape[:2]
  work = _downscale(image, settings.max_image_side)
  work_height, work_width = work.shape[:2]
  if min(work_height, work_width) < settings.min_box_side:
    return np.zeros([0, 4], np.float32)

  count = FAST_COUNT if settings.mode == 'fast' else None
  spaces, strategies, thresholds = COLOUR_SPACES[:count], STRATEGIES[:count], THRESHOLDS[:count]
  features = {space: _ColourFeatures(work, space, strategies) for space in spaces}
  boxes, positions = [], []
  for k in thresholds:
    for space in spaces:
      space_boxes, space_positions = _hierarchies(features[space], k, strategies)
      boxes.append(space_boxes)
      positions.append(space_positions)
  boxes = np.concatenate(boxes)
  positions = np.concatenate(positions).astype(np.float64)

  rng = np.random.default_rng(settings.seed)
  order = np.argsort(positions * rng.random(len(positions)), kind='stable')
  boxes = boxes[order]
  sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
  boxes = boxes[sides >= settings.min_box_side]
  _, first = np.unique(boxes, axis=0, return_index=True)
  boxes = boxes[np.sort(first)]

  scale = np.array([height / work_height, width / work_width] * 2)
  return (boxes * scale).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'selective_search: image must be uint8, got {image.dtype}')
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'selective_search: image must be [H, W, 3] RGB, got shape {image.shape}')
  if image.shape[0] < 2 or image.shape[1] < 2:
    raise ValueError(f'selective_search: image must be at least 2 x 2 pixels, got {image.shape[:2]}')
  return np.ascontiguousarray(image)


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
  """R-CNN's `max_dim` resize: the longer side to `max_side`, the other rounded up (imresize)."""
  height, width = image.shape[:2]
  if not max_side or max(height, width) <= max_side:
    return image
  scale = max_side / max(height, width)
  # The 1e-9 keeps an exact product (e.g. 375 * 0.8) from rounding up through float error.
  if height >= width:
    size = (max(1, math.ceil(width * scale - 1e-9)), max_side)
  else:
    size = (max_side, max(1, math.ceil(height * scale - 1e-9)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def _im2uint8(values: np.ndarray) -> np.ndarray:
  """MATLAB im2uint8 of [0, 1] doubles: round half away from zero (values are >= 0), clip."""
  return np.clip(np.floor(values * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _normalise_array(values: np.ndarray) -> np.ndarray:
  """NormalizeArray.m: min-max scaling over the image to [0, 1] (a constant array gives 0)."""
  low, high = values.min(), values.max()
  return (values - low) / (high - low) if high > low else np.zeros_like(values)


def colour_space(image: np.ndarray, space: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB -> uint8 [H, W, 3] in `space`, as Image2ColourSpace.m's colourImUInt8.

  Single-channel spaces ('h', 'intensity') repeat their channel three times, as the MATLAB code does.
  """
  rgb = image.astype(np.float64) / 255.0
  if space == 'hsv':
    return _im2uint8(skcolor.rgb2hsv(rgb))
  if space == 'lab':
    lab = skcolor.rgb2lab(rgb)
    # MATLAB's 8-bit Lab: L in [0, 100] -> [0, 255]; a, b offset by 128.
    encoded = np.stack([lab[..., 0] * 255.0 / 100.0, lab[..., 1] + 128.0, lab[..., 2] + 128.0], -1)
    return np.clip(np.floor(encoded + 0.5), 0, 255).astype(np.uint8)
  if space == 'rgi':
    total = rgb.sum(-1)
    safe = np.where(total > 0, total, 1.0)
    # Rgb2Rgi.m: black pixels (0 / 0) get r = g = 1/3.
    r = np.where(total > 0, rgb[..., 0] / safe, 1.0 / 3.0)
    g = np.where(total > 0, rgb[..., 1] / safe, 1.0 / 3.0)
    return _im2uint8(np.stack([_normalise_array(r), _normalise_array(g), rgb @ _GREY_WEIGHTS], -1))
  if space == 'h':
    return np.repeat(_im2uint8(skcolor.rgb2hsv(rgb)[..., :1]), 3, axis=-1)
  if space == 'intensity':
    return np.repeat(_im2uint8((rgb @ _GREY_WEIGHTS)[..., None]), 3, axis=-1)
  raise ValueError(f'colour_space: unknown space {space!r}, expected one of {COLOUR_SPACES}')


def colour_words(colour_image: np.ndarray) -> np.ndarray:
  """int64 [H, W, 3]: each pixel's colour bin per channel, channel c's bins at c * 25 .. c * 25 + 24.

  BlobStructColourHist.m: bin = round(value / 255 * 24); on 8-bit values that is
  floor((48 value + 255) / 510), exact in integers.
  """
  values = colour_image.astype(np.int64)
  return (values * (2 * (COLOUR_BINS - 1)) + 255) // 510 + np.arange(3) * COLOUR_BINS


def texture_words(colour_image: np.ndarray) -> np.ndarray:
  """int16 [H, W, 24]: each pixel's texture bin per (channel, orientation), 10 bins each.

  The 8 orientations are the positive and negative parts of the first Gaussian derivative
  (sigma 1) along 0, 45, 90 and 135 degrees (Image2OrientedGradients.m); the diagonal ones are
  steered from the axis derivatives, which is exact for a Gaussian derivative.
  """
  height, width = colour_image.shape[:2]
  half_orientations = TEXTURE_ORIENTATIONS // 2
  derivatives = np.empty([height, width, 3, half_orientations])
  for c in range(3):
    channel = colour_image[..., c].astype(np.float64) / 255.0
    dy = ndimage.gaussian_filter(channel, TEXTURE_SIGMA, order=(1, 0))
    dx = ndimage.gaussian_filter(channel, TEXTURE_SIGMA, order=(0, 1))
    derivatives[..., c, 0] = dy
    derivatives[..., c, 1] = (dx + dy) * math.sqrt(0.5)
    derivatives[..., c, 2] = dx
    derivatives[..., c, 3] = (dx - dy) * math.sqrt(0.5)
  # One binning of |derivative| serves both signs: the other sign's part is 0, so bin 0. Truncating
  # the non-negative value + 0.5 rounds it; int16 (words < 240) keeps this pass memory-light.
  bins = (np.abs(derivatives) * ((TEXTURE_BINS - 1) / TEXTURE_MAX) + 0.5).astype(np.int16)
  np.minimum(bins, TEXTURE_BINS - 1, out=bins)
  # [H, W, channel, sign, orientation]: orientation slot o is the positive part, o + 4 the negative.
  words = np.empty([height, width, 3, 2, half_orientations], np.int16)
  np.multiply(bins, derivatives > 0, out=words[:, :, :, 0])
  np.subtract(bins, words[:, :, :, 0], out=words[:, :, :, 1])
  words = words.reshape(height, width, 3 * TEXTURE_ORIENTATIONS)
  words += (np.arange(3 * TEXTURE_ORIENTATIONS) * TEXTURE_BINS).astype(np.int16)
  return words


class _ColourFeatures:
  """One colour space's image and per-pixel histogram words, shared by every threshold k."""

  def __init__(self, image: np.ndarray, space: str, strategies: Sequence[Tuple[str, ...]]):
    self.image = colour_space(image, space)
    terms = {term for strategy in strategies for term in strategy}
    self.colour = colour_words(self.image).reshape(-1, 3) if 'colour' in terms else None
    self.texture = texture_words(self.image).reshape(-1, 3 * TEXTURE_ORIENTATIONS) if 'texture' in terms else None


def _region_histograms(labels: np.ndarray, words: np.ndarray, count: int, bins: int) -> np.ndarray:
  """float64 [count, bins]: L1-normalised histograms of `words` [P, C] per region of flat `labels` [P]."""
  index = labels[:, None] * bins + words
  histograms = np.bincount(index.ravel(), minlength=count * bins).reshape(count, bins).astype(np.float64)
  return histograms / histograms.sum(1, keepdims=True)


def _region_boxes(labels: np.ndarray, count: int) -> np.ndarray:
  """float64 [count, 4] pixel-edge boxes [ymin, xmin, ymax, xmax] of regions 0..count-1."""
  slices = ndimage.find_objects(labels + 1, max_label=count)
  return np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], np.float64)


def neighbour_pairs(labels: np.ndarray) -> np.ndarray:
  """int64 [E, 2] pairs (i < j) of regions with 4-connected touching pixels, sorted by (i, j)."""
  count = int(labels.max()) + 1
  first = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
  second = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
  differ = first != second
  low, high = np.minimum(first[differ], second[differ]), np.maximum(first[differ], second[differ])
  codes = np.unique(low * count + high)
  return np.stack([codes // count, codes % count], 1)


def hierarchical_grouping(
  sizes: np.ndarray,
  boxes: np.ndarray,
  pairs: np.ndarray,
  terms: Sequence[str],
  image_area: float,
  colour: Optional[np.ndarray] = None,
  texture: Optional[np.ndarray] = None,
) -> np.ndarray:
  """Greedy merging of the most similar neighbours until one region is left.

  Args:
    sizes: [n] pixel counts of the initial regions.
    boxes: [n, 4] their pixel-edge boxes.
    pairs: [E, 2] neighbouring regions (`neighbour_pairs`); the region graph must be connected.
    terms: the strategy, a subset of ('colour', 'texture', 'size', 'fill').
    image_area: pixels of the image.
    colour: [n, 75] L1-normalised colour histograms (needed with 'colour').
    texture: [n, 240] L1-normalised texture histograms (needed with 'texture').

  Returns:
    float64 [n - 1, 4]: the box of each merged region, in merge order (the last is the whole image).
  """
  n = len(sizes)
  total = 2 * n - 1
  size = np.zeros(total)
  size[:n] = sizes
  box = np.zeros([total, 4])
  box[:n] = boxes
  histograms = []
  for term, initial in (('colour', colour), ('texture', texture)):
    if term in terms:
      table = np.zeros([total, initial.shape[1]])
      table[:n] = initial
      histograms.append(table)
  use_size, use_fill = 'size' in terms, 'fill' in terms

  def similarity(a, b):
    # a: an index or index array, b: an index array; returns [len(b)].
    value = np.zeros(len(b))
    for table in histograms:
      value += np.minimum(table[a], table[b]).sum(-1)
    joint = size[a] + size[b]
    if use_size:
      value += 1.0 - joint / image_area
    if use_fill:
      box_a, box_b = box[a], box[b]
      rows = np.maximum(box_a[..., 2], box_b[..., 2]) - np.minimum(box_a[..., 0], box_b[..., 0])
      cols = np.maximum(box_a[..., 3], box_b[..., 3]) - np.minimum(box_a[..., 1], box_b[..., 1])
      value += 1.0 - (rows * cols - joint) / image_area
    return value

  neighbours: List[Optional[set]] = [set() for _ in range(n)]
  for a, b in pairs.tolist():
    neighbours[a].add(b)
    neighbours[b].add(a)
  # Heap keys (-similarity, -insertion): the most similar pair first and, among equals, the latest
  # inserted, as the MATLAB loop's stable ascending sort that merges its last entry.
  sims = similarity(pairs[:, 0], pairs[:, 1]).tolist() if len(pairs) else []
  heap = [(-s, -i, a, b) for i, (s, (a, b)) in enumerate(zip(sims, pairs.tolist()))]
  heapq.heapify(heap)
  counter = len(heap)
  alive = [True] * n + [False] * (n - 1)

  for c in range(n, total):
    while True:
      if not heap:
        raise ValueError('hierarchical_grouping: the region graph is not connected')
      _, _, a, b = heapq.heappop(heap)
      if alive[a] and alive[b]:  # Pairs of a merged region are left in the heap and skipped here.
        break
    alive[a] = alive[b] = False
    alive[c] = True
    size_a, size_b = size[a], size[b]
    size[c] = size_a + size_b
    box[c, :2] = np.minimum(box[a, :2], box[b, :2])
    box[c, 2:] = np.maximum(box[a, 2:], box[b, 2:])
    for table in histograms:
      # Size-weighted mean of the parts (MergeBlobStructure): no recomputation from pixels.
      table[c] = (size_a * table[a] + size_b * table[b]) / size[c]
    merged = neighbours[a] | neighbours[b]
    merged.discard(a)
    merged.discard(b)
    neighbours[a] = neighbours[b] = None
    for x in merged:
      others = neighbours[x]
      others.discard(a)
      others.discard(b)
      others.add(c)
    neighbours.append(merged)
    if merged:
      others = np.array(sorted(merged), np.intp)
      for x, s in zip(others.tolist(), similarity(c, others).tolist()):
        heapq.heappush(heap, (-s, -counter, c, x))
        counter += 1
  return box[n:]


def _hierarchies(
  features: _ColourFeatures, k: int, strategies: Sequence[Tuple[str, ...]]
) -> Tuple[np.ndarray, np.ndarray]:
  """One segmentation at threshold k, one grouping per strategy: boxes [M, 4] and positions [M]."""
  labels = felzenszwalb(features.image, scale=k, sigma=SEGMENTATION_SIGMA, min_size=k)
  count = int(labels.max()) + 1
  boxes = _region_boxes(labels, count)
  if count == 1:  # Image2HierarchicalGrouping.m: nothing to group.
    return boxes, np.ones(1)
  flat = labels.ravel().astype(np.int64)
  sizes = np.bincount(flat, minlength=count).astype(np.float64)
  pairs = neighbour_pairs(labels)
  colour = _region_histograms(flat, features.colour, count, 3 * COLOUR_BINS) if features.colour is not None else None
  texture = (
    _region_histograms(flat, features.texture, count, 3 * TEXTURE_ORIENTATIONS * TEXTURE_BINS)
    if features.texture is not None
    else None
  )
  all_boxes, positions = [], []
  for terms in strategies:
    all_boxes.append(hierarchical_grouping(sizes, boxes, pairs, terms, float(labels.size), colour, texture))
    positions.append(np.arange(count - 1, 0, -1))  # Merge m of n - 1 at n - m: the top region is 1.
  all_boxes.append(boxes)
  positions.append(np.full(count, count))  # The initial regions, once, below every merge.
  return np.concatenate(all_boxes), np.concatenate(positions)
