"""Selective search: rectangles recovered, box invariants, seeded ranking, modes, downscaling, errors.

The images are made here: flat-coloured rectangles on a noisy grey background, which the
Felzenszwalb segmentation cuts into many small regions that the grouping must merge back.
The grouping itself is checked against a naive greedy merge written from the paper's formulas.
"""

import dataclasses

import numpy as np
import pytest

from mtssl_tf.evaluation import selective_search as ss
from mtssl_tf.evaluation.selective_search import SelectiveSearchSettings, selective_search

# (ymin, xmin, ymax, xmax) pixel edges and RGB colour; every side >= 30 px so that at
# max_image_side 96 (x 0.75) each is still above min_box_side 20.
RECTANGLES = (
  ((10, 12, 50, 60), (220, 40, 40)),
  ((40, 70, 86, 118), (30, 60, 210)),
  ((58, 8, 90, 40), (40, 200, 60)),
)
HEIGHT, WIDTH = 96, 128


def _image(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(128.0, 20.0, (HEIGHT, WIDTH, 3))
  for (y0, x0, y1, x1), colour in RECTANGLES:
    image[y0:y1, x0:x1] = colour
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _truth():
  return np.array([box for box, _ in RECTANGLES], np.float64)


def _iou(a, b):
  """[A, B] IoU of pixel-edge boxes."""
  top = np.maximum(a[:, None, :2], b[None, :, :2])
  bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(bottom - top, 0, None), -1)

  def area(x):
    return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])

  return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.fixture(scope='module')
def fast_boxes():
  return selective_search(_image())


def test_fast_mode_recovers_every_rectangle(fast_boxes):
  best = _iou(_truth(), fast_boxes.astype(np.float64)).max(1)
  assert (best >= 0.9).all(), best


def test_boxes_are_valid_proposals(fast_boxes):
  boxes = fast_boxes
  assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= HEIGHT).all() and (boxes[:, 3] <= WIDTH).all()
  sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
  assert (sides >= 20).all()
  assert len(np.unique(boxes, axis=0)) == len(boxes)
  # Full resolution: region boxes are whole pixel edges; the top of every hierarchy is the image.
  np.testing.assert_array_equal(boxes, np.round(boxes))
  assert ((boxes == [0, 0, HEIGHT, WIDTH]).all(1)).sum() == 1


def test_min_box_side_filters_in_pixels():
  boxes = selective_search(_image(), SelectiveSearchSettings(min_box_side=40))
  assert len(boxes) and (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 40).all()
  # The rectangle 40 x 48 passes, the 32 x 32 one cannot.
  best = _iou(_truth(), boxes.astype(np.float64)).max(1)
  assert best[0] >= 0.9 and best[2] < 0.9


def test_same_seed_same_output_other_seed_same_set_other_order(fast_boxes):
  np.testing.assert_array_equal(selective_search(_image()), fast_boxes)
  other = selective_search(_image(), SelectiveSearchSettings(seed=1))
  assert not np.array_equal(other, fast_boxes)
  # Filtering and de-duplication do not depend on the ranking, so the set is the same.
  np.testing.assert_array_equal(np.unique(other, axis=0), np.unique(fast_boxes, axis=0))


def test_quality_mode_gives_more_boxes(fast_boxes):
  quality = selective_search(_image(), SelectiveSearchSettings(mode='quality'))
  assert len(quality) > len(fast_boxes)
  best = _iou(_truth(), quality.astype(np.float64)).max(1)
  assert (best >= 0.9).all(), best


def test_downscaled_run_returns_boxes_in_the_original_frame():
  boxes = selective_search(_image(), SelectiveSearchSettings(max_image_side=96))  # 96 x 128 -> 72 x 96.
  assert len(boxes)
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= HEIGHT).all() and (boxes[:, 3] <= WIDTH).all()
  # The top region covers the downscaled image, which maps back onto the whole original one.
  assert ((boxes == [0, 0, HEIGHT, WIDTH]).all(1)).any()
  best = _iou(_truth(), boxes.astype(np.float64)).max(1)
  assert (best >= 0.8).all(), best
  # Boxes are filtered in the segmented (downscaled) image: 20 px there is 26.7 px here.
  assert (np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 20 * 4 / 3 - 1e-3).all()
  # max_image_side at or above the longer side keeps the image.
  np.testing.assert_array_equal(
    selective_search(_image(), SelectiveSearchSettings(max_image_side=128)), selective_search(_image())
  )


def test_image_smaller_than_min_box_side_gives_no_boxes():
  boxes = selective_search(_image()[:15])
  assert boxes.shape == (0, 4) and boxes.dtype == np.float32
  tiny = selective_search(np.full([2, 2, 3], 7, np.uint8), SelectiveSearchSettings(min_box_side=1))
  np.testing.assert_array_equal(tiny, [[0, 0, 2, 2]])


@pytest.mark.parametrize(
  'image, message',
  [
    (np.zeros([32, 32, 3], np.float32), 'uint8'),
    (np.zeros([32, 32], np.uint8), r'\[H, W, 3\]'),
    (np.zeros([32, 32, 4], np.uint8), r'\[H, W, 3\]'),
    (np.zeros([1, 32, 3], np.uint8), '2 x 2'),
  ],
)
def test_bad_image_is_a_clear_error(image, message):
  with pytest.raises(ValueError, match=message):
    selective_search(image)


@pytest.mark.parametrize(
  'field, value',
  [('mode', 'slow'), ('min_box_side', -1), ('max_image_side', 1.5), ('seed', True), ('seed', -3)],
)
def test_bad_settings_name_the_field(field, value):
  settings = dataclasses.replace(SelectiveSearchSettings(), **{field: value})
  with pytest.raises(ValueError, match=f'SelectiveSearchSettings.{field}'):
    settings.validate()
  with pytest.raises(ValueError, match=field):
    selective_search(_image()[:32, :32], settings)


def test_settings_to_dict():
  settings = SelectiveSearchSettings(mode='quality', max_image_side=500, seed=3)
  settings.validate()
  assert settings.to_dict() == {'mode': 'quality', 'min_box_side': 20, 'max_image_side': 500, 'seed': 3}


def test_neighbours_touch_by_an_edge_not_a_corner():
  labels = np.array([[0, 0, 1], [2, 3, 1], [2, 2, 1]])
  np.testing.assert_array_equal(ss.neighbour_pairs(labels), [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
  diagonal = np.array([[0, 1], [1, 2]])  # 0 and 2 meet only at a corner.
  np.testing.assert_array_equal(ss.neighbour_pairs(diagonal), [[0, 1], [1, 2]])


def test_colour_and_texture_bins():
  # round(v / 255 * 24): 5 -> 0.47 -> 0, 6 -> 0.56 -> 1, 255 -> 24; channel c's bins start at 25 c.
  image = np.array([[[0, 5, 6], [255, 255, 0]]], np.uint8)
  np.testing.assert_array_equal(ss.colour_words(image), [[[0, 25, 51], [24, 49, 50]]])
  # A vertical step, dark left, bright right: positive x derivative (slot 2) on the edge, nothing
  # in the negative x slot (6); a flat area is bin 0 everywhere.
  step = np.zeros([9, 12, 3], np.uint8)
  step[:, 6:] = 255
  words = ss.texture_words(step).astype(int)
  bins = words - np.arange(24) * 10
  assert (bins >= 0).all() and (bins <= 9).all()
  assert bins[4, 5:7, 2].min() > 0 and bins[4, :, 6].max() == 0
  assert (bins[4, 0] == 0).all()
  np.testing.assert_array_equal(bins[..., 2], bins[..., 10])  # Three equal channels.


def test_colour_spaces_use_matlab_8_bit_encodings():
  pixels = np.array([[[255, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8)
  np.testing.assert_array_equal(ss.colour_space(pixels, 'hsv')[0, 0], [0, 255, 255])
  lab = ss.colour_space(pixels, 'lab').astype(int)
  np.testing.assert_array_equal(lab[0, 1], [255, 128, 128])  # White: L 100, a = b = 0.
  np.testing.assert_array_equal(lab[0, 2], [0, 128, 128])
  assert lab[0, 0, 1] > 128 + 60  # Red: a* about +80.
  np.testing.assert_array_equal(ss.colour_space(pixels, 'intensity')[0, :, 0], [76, 255, 0])
  rgi = ss.colour_space(pixels, 'rgi')
  # r = R / (R + G + B): 1 for red, 1/3 for white and (by convention) black; min-max scaled.
  np.testing.assert_array_equal(rgi[0, :, 0], [255, 0, 0])
  assert (ss.colour_space(pixels, 'h')[..., 0] == ss.colour_space(pixels, 'h')[..., 2]).all()


def _naive_grouping(labels, sizes, boxes, colour, texture, terms):
  """Greedy merging written straight from the paper: rescan every neighbouring pair each step."""
  area = labels.size
  regions = {
    r: dict(size=sizes[r], box=tuple(boxes[r]), colour=colour[r], texture=texture[r]) for r in range(len(sizes))
  }
  pairs = {tuple(p) for p in ss.neighbour_pairs(labels).tolist()}

  def sim(i, j):
    a, b = regions[i], regions[j]
    total = 0.0
    if 'colour' in terms:
      total += np.minimum(a['colour'], b['colour']).sum()
    if 'texture' in terms:
      total += np.minimum(a['texture'], b['texture']).sum()
    if 'size' in terms:
      total += 1 - (a['size'] + b['size']) / area
    if 'fill' in terms:
      y0, x0 = min(a['box'][0], b['box'][0]), min(a['box'][1], b['box'][1])
      y1, x1 = max(a['box'][2], b['box'][2]), max(a['box'][3], b['box'][3])
      total += 1 - ((y1 - y0) * (x1 - x0) - a['size'] - b['size']) / area
    return total

  merged, new = [], len(regions)
  while len(regions) > 1:
    i, j = max(pairs, key=lambda p: sim(*p))
    a, b = regions.pop(i), regions.pop(j)
    size = a['size'] + b['size']
    box = tuple(min(a['box'][k], b['box'][k]) for k in (0, 1)) + tuple(max(a['box'][k], b['box'][k]) for k in (2, 3))
    regions[new] = dict(
      size=size,
      box=box,
      colour=(a['size'] * a['colour'] + b['size'] * b['colour']) / size,
      texture=(a['size'] * a['texture'] + b['size'] * b['texture']) / size,
    )
    touching = {x for p in pairs if i in p or j in p for x in p} - {i, j}
    pairs = {p for p in pairs if i not in p and j not in p} | {(x, new) for x in touching}
    merged.append(box)
    new += 1
  return np.array(merged, np.float64)


@pytest.mark.parametrize('terms', ss.STRATEGIES)
def test_grouping_matches_a_naive_greedy_merge(terms):
  rng = np.random.default_rng(7)
  # 25 regions: 5 x 5 blocks of uneven heights and widths, a few cells moved to another label.
  rows, cols = np.repeat(np.arange(5), rng.integers(2, 6, 5)), np.repeat(np.arange(5), rng.integers(2, 6, 5))
  labels = rows[:, None] * 5 + cols[None, :]
  labels[0, 0], labels[-1, -1] = 1, 23
  count = 25
  colour = rng.dirichlet(np.ones(75), count)
  texture = rng.dirichlet(np.ones(240), count)
  # Sizes off the pixel counts by a random fraction: no two candidate merges tie, so the order is unique.
  sizes = np.bincount(labels.ravel(), minlength=count) + rng.uniform(0, 0.5, count)
  boxes = ss._region_boxes(labels, count)
  got = ss.hierarchical_grouping(sizes, boxes, ss.neighbour_pairs(labels), terms, labels.size, colour, texture)
  want = _naive_grouping(labels, sizes, boxes, colour, texture, terms)
  assert got.shape == (count - 1, 4)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[-1], [0, 0, labels.shape[0], labels.shape[1]])


def test_ranking_positions_per_segmentation():
  features = ss._ColourFeatures(_image(), 'hsv', ss.STRATEGIES[:2])
  boxes, positions = ss._hierarchies(features, 50, ss.STRATEGIES[:2])
  count = (len(boxes) + 2) // 3  # n initial regions + 2 hierarchies of n - 1 merges.
  assert len(boxes) == 3 * count - 2
  merges = np.arange(count - 1, 0, -1)
  np.testing.assert_array_equal(positions, np.concatenate([merges, merges, np.full(count, count)]))
  # Position 1 is each hierarchy's top region: the whole image.
  np.testing.assert_array_equal(boxes[positions == 1], [[0, 0, HEIGHT, WIDTH]] * 2)
