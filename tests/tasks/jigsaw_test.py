"""Jigsaw++: permutation sets, tile geometry, occlusion, colour, eager == tf.data, head, training step."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, validate_all
from mtssl_tf.data import images
from mtssl_tf.tasks import permutations
from mtssl_tf.tasks.jigsaw import JigsawConfig, JigsawTask, mosaic, normalize_tiles, pair_with_previous
from mtssl_tf.tasks.multitask import MultiTaskModel

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

# The authors' permutations_701.bin, 0-indexed (MehdiNoroozi/JigsawPuzzleSolver @ d18dace1).
FIRST_701 = [0, 7, 2, 5, 8, 6, 1, 3, 4]
LAST_701 = [0, 7, 2, 1, 3, 4, 8, 5, 6]
SHA256_701 = '7624c89a2ecf0d1fd427483dca5bc0014c1b2d85a9817445a3d8b38e835ede62'
FIRST_100 = [7, 6, 5, 8, 4, 3, 2, 1, 0]

# 48 px crops of 16 px cells, 12 px tiles.
EXACT = dict(tile_jitter=False, color_jitter_px=0, grayscale_prob=0.0)


def _config(**changes):
  cfg = JigsawConfig()
  values = dict(resize_side=48, crop_size=48, tile_size=12, tile_channels=4, tile_units=8, hidden_units=16,
                batch_size=2, permutation_set='noroozi100', num_permutations=100)  # fmt: skip
  values.update(changes)
  override(cfg, values)
  validate_all(cfg)
  return cfg


def _noise(size=48, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _many(task, example, count, first=0):
  """`count` preprocessed examples (seeds (9, first + i)), via tf.data, as one numpy batch."""
  ds = tf.data.Dataset.range(first, first + count).map(lambda i: task.preprocess(example, tf.stack([9, i])))
  return {k: v.numpy() for k, v in next(iter(ds.batch(count))).items()}


def _is_permutation_set(perms):
  assert np.all(np.sort(perms, axis=1) == np.arange(9)), 'every row is a permutation of 0..8'
  assert len({tuple(p) for p in perms}) == len(perms), 'rows are distinct'


def test_defaults_are_the_authors():
  cfg = JigsawConfig()
  assert (cfg.crop_size, cfg.cell_size, cfg.tile_size, cfg.color_jitter_px) == (255, 85, 64, 2)
  assert cfg.occlusion_probs == pytest.approx((1 / 3, 1 / 3, 1 / 3)) and cfg.grayscale_prob == 0.7
  assert (cfg.permutation_set, cfg.num_permutations) == ('noroozi701', 701)
  validate_all(cfg)


def test_shipped_sets_are_the_authors():
  perms = permutations.load_permutations('noroozi701')
  assert perms.shape == (701, 9) and perms.dtype == np.int32
  _is_permutation_set(perms)
  assert permutations.min_hamming_distance(perms) == 3
  assert not np.any(np.all(perms == np.arange(9), axis=1)), 'identity not in the set'
  assert perms[0].tolist() == FIRST_701 and perms[-1].tolist() == LAST_701
  assert hashlib.sha256(perms.astype(np.int32).tobytes()).hexdigest() == SHA256_701
  small = permutations.load_permutations('noroozi100')
  _is_permutation_set(small)
  assert small.shape == (100, 9) and small[0].tolist() == FIRST_100
  assert permutations.min_hamming_distance(small) == 2
  assert np.array_equal(JigsawTask(JigsawConfig()).permutations, perms)


@pytest.mark.parametrize('method', ['maximal', 'random'])
def test_generator_keeps_the_distance_and_is_deterministic(method):
  perms = permutations.generate_permutations(120, min_hamming=5, seed=3, method=method)
  assert perms.shape == (120, 9)
  _is_permutation_set(perms)
  assert permutations.min_hamming_distance(perms) >= 5
  assert np.array_equal(perms, permutations.generate_permutations(120, 5, seed=3, method=method))
  assert not np.array_equal(perms, permutations.generate_permutations(120, 5, seed=4, method=method))
  with pytest.raises(ValueError, match='only'):
    permutations.generate_permutations(10, min_hamming=9, method=method)  # At most 9 rows can differ everywhere.


def test_generated_set_from_config():
  task = JigsawTask(_config(permutation_set='generated', num_permutations=30, min_hamming=6, permutation_seed=1))
  assert task.permutations.shape == (30, 9) and permutations.min_hamming_distance(task.permutations) >= 6


def test_label_agrees_with_tile_geometry():
  task = JigsawTask(_config(occlusion_probs=(1.0,), **EXACT))
  image = _noise()
  cells = [
    image.numpy()[r * 16 + 2 : r * 16 + 14, c * 16 + 2 : c * 16 + 14] / 255.0 for r in range(3) for c in range(3)
  ]
  expected = normalize_tiles(tf.constant(np.stack(cells), tf.float32)).numpy()
  out = _many(task, {'image': image, 'other_image': _noise(seed=1)}, 24)
  for tiles, label, occluded in zip(out['tiles'], out['label'], out['occluded']):
    perm = task.permutations[label]
    np.testing.assert_allclose(tiles, expected[perm], atol=1e-4)  # out[i] = tiles[perm[i]]
    # Undoing the permutation reassembles the image (what the 'solved' summary shows).
    np.testing.assert_allclose(tiles[task.inverse_permutations[label]], expected, atol=1e-4)
    assert not occluded.any()
  assert len(set(out['label'].tolist())) > 15


def test_tiles_are_jittered_per_channel_inside_their_cell():
  task = JigsawTask(_config(crop_size=54, resize_side=54, color_jitter_px=2))  # Cells of 18: 4 px of room.
  crops = tf.random.stateless_uniform([2, 54, 54, 3], [0, 1])
  crops = tf.concat([crops[:1], tf.fill([1, 54, 54, 3], 0.25)], axis=0)  # The other image is constant.
  perm = tf.constant(task.permutations[7])
  occluded = tf.constant([False, True, False, False, False, False, False, True, False])
  tiles = task.cut_tiles(crops, perm, occluded, tf.constant([5, 6])).numpy()
  shifts = set()
  for slot in range(9):
    if occluded[slot]:
      np.testing.assert_array_equal(tiles[slot], 0.25)  # From the other image.
      continue
    row, col = divmod(int(perm[slot]), 3)
    cell = crops[0, row * 18 : row * 18 + 18, col * 18 : col * 18 + 18].numpy()
    for channel in range(3):
      found = [
        (dy, dx) for dy in range(7) for dx in range(7)
        if np.array_equal(cell[dy : dy + 12, dx : dx + 12, channel], tiles[slot, ..., channel])
      ]  # fmt: skip
      assert len(found) == 1, (slot, channel)
      shifts.add(found[0])
  assert len(shifts) > 5  # Tiles and channels land at different offsets.


def test_occlusion_follows_the_distribution_and_uses_the_other_image():
  task = JigsawTask(_config(occlusion_probs=(0.2, 0.3, 0.5)))
  other = tf.fill([40, 56, 3], tf.constant(90, tf.uint8))  # Constant: its tiles normalise to ~0.
  out = _many(task, {'image': _noise(), 'other_image': other}, 600)
  counts = out['occluded'].sum(axis=1)
  frequencies = np.bincount(counts, minlength=3) / len(counts)
  assert frequencies.shape == (3,)
  np.testing.assert_allclose(frequencies, [0.2, 0.3, 0.5], atol=0.06)
  constant = np.all(np.abs(out['tiles']) < 1e-3, axis=(2, 3, 4))
  np.testing.assert_array_equal(constant, out['occluded'])
  assert np.all(out['occluded'].sum(axis=0) > 20)  # Every slot gets occluded sometimes.


def test_grayscale_fraction_and_harmonize():
  task = JigsawTask(_config(grayscale_prob=0.7))
  out = _many(task, {'image': _noise(), 'other_image': _noise(seed=1)}, 400)
  gray = np.all(np.abs(out['tiles'][..., :1] - out['tiles'][..., 1:]) < 1e-5, axis=(1, 2, 3, 4))
  assert gray.mean() == pytest.approx(0.7, abs=0.07)
  tiles = out['tiles'].reshape(-1, 12 * 12 * 3)
  np.testing.assert_allclose(tiles.mean(axis=1), 0.0, atol=1e-4)
  np.testing.assert_allclose(tiles.std(axis=1), 1.0, atol=1e-3)
  harmonized = JigsawTask(_config(harmonize=True, grayscale_prob=0.0))
  tiles = harmonized.preprocess({'image': _noise(), 'other_image': _noise(seed=1)}, tf.constant([1, 2]))['tiles']
  np.testing.assert_allclose(tiles[..., 0].numpy(), tiles[..., 2].numpy(), atol=1e-6)


def test_preprocess_same_eagerly_and_in_tf_data():
  task = JigsawTask(_config())
  example = {'image': _noise(60), 'other_image': _noise(50, seed=1), 'label': tf.constant(0, tf.int64)}
  eager = task.preprocess(example, tf.constant([1, 2], tf.int64))
  ds = tf.data.Dataset.from_tensors(example).map(lambda e: task.preprocess(e, tf.constant([1, 2], tf.int64)))
  graph = next(iter(ds))
  np.testing.assert_allclose(eager['tiles'].numpy(), graph['tiles'].numpy(), atol=1e-5)
  assert int(eager['label']) == int(graph['label'])
  np.testing.assert_array_equal(eager['occluded'].numpy(), graph['occluded'].numpy())
  assert eager['tiles'].shape == (9, 12, 12, 3)


def test_other_image_cropped_to_its_cells_box_gives_the_full_crops_tiles():
  # Only the box of the occluded tiles' cells of the other image is resampled; the reference crops it whole.
  class FullCrop(JigsawTask):
    def _cells_box(self, cells):
      return tf.zeros([2], tf.int32), tf.fill([2], self.config.crop_size)

  cfg = _config(occlusion_probs=(0.0, 0.5, 0.5), resize_side=54, crop_size=48)
  example = {'image': _noise(60), 'other_image': _noise(70, seed=1)}
  out, reference = _many(JigsawTask(cfg), example, 40), _many(FullCrop(cfg), example, 40)
  assert out['occluded'].any(axis=1).all()
  np.testing.assert_array_equal(out['occluded'], reference['occluded'])
  # Sample positions differ by float32 rounding (~1e-5 px), weights by as much: far below 1e-4 after
  # normalisation (tiles of noise have a std near 0.3, so errors grow ~3x).
  np.testing.assert_allclose(out['tiles'], reference['tiles'], atol=1e-4)


def test_each_example_is_paired_with_the_previous_image():
  sizes = [(20, 30), (25, 25), (31, 18), (22, 22)]
  ims = [tf.fill([h, w, 3], tf.constant(i, tf.uint8)) for i, (h, w) in enumerate(sizes)]
  ds = tf.data.Dataset.from_generator(
    lambda: ({'image': im, 'num_skipped': np.int64(0)} for im in ims),
    output_signature={'image': tf.TensorSpec([None, None, 3], tf.uint8), 'num_skipped': tf.TensorSpec([], tf.int64)},
  )
  pairs = list(pair_with_previous(ds))
  assert len(pairs) == 3
  for i, pair in enumerate(pairs, start=1):
    assert pair['image'].shape[:2] == sizes[i] and pair['other_image'].shape[:2] == sizes[i - 1]
    assert int(pair['image'][0, 0, 0]) == i and int(pair['other_image'][0, 0, 0]) == i - 1


def test_bad_config_values_are_named():
  cases = {
    'jigsaw.crop_size': {'crop_size': 30, 'tile_size': 12},
    'jigsaw.resize_side': {'resize_side': 40},
    'jigsaw.occlusion_probs': {'occlusion_probs': [0.5, 0.2]},
    'jigsaw.grayscale_prob': {'grayscale_prob': 1.5},
    'jigsaw.permutation_set': {'permutation_set': 'noroozi1000'},
    'jigsaw.num_permutations': {'num_permutations': 702},
    'jigsaw.min_hamming': {'permutation_set': 'generated', 'min_hamming': 10},
  }
  for key, values in cases.items():
    with pytest.raises(ConfigError, match=key):
      validate_all(override(JigsawConfig(), values))
  with pytest.raises(ConfigError, match='tasks.jigsaw.num_permutations'):
    validate_all(override(JigsawConfig(), {'permutation_set': 'noroozi100'}), 'tasks.jigsaw')


@pytest.mark.parametrize('precision', ['float32', 'mixed_bfloat16'])
def test_dataset_head_and_training_step(tiny_world, tiny_trunk, precision):
  task = JigsawTask(_config(batch_size=3))
  ds = task.dataset(images.ReadOptions(), tiny_world['sources']['images_train'], seed=1)
  batch = next(iter(ds))
  assert set(batch) == {'tiles', 'label', 'occluded', 'num_skipped', 'skipped_sources'}
  assert batch['tiles'].shape == (3, 9, 12, 12, 3) and batch['label'].shape == (3,)
  model = MultiTaskModel(tiny_trunk, {task.name: task}, LassoConfig(), precision=precision)
  total, task_loss, outputs, grads, variables = model.compute_gradients(task.name, batch)
  assert outputs.shape == (3, 100)
  assert outputs.dtype == (tf.bfloat16 if precision == 'mixed_bfloat16' else tf.float32)
  assert task_loss.dtype == tf.float32 and np.isfinite(float(total))
  missing = [v.name for g, v in zip(grads, variables) if g is None and 'post_bn' not in v.name]
  assert not missing
  metrics = task.metrics()
  task.update_metrics(metrics, outputs, batch, task_loss)
  assert set(metrics) == {'loss', 'accuracy', 'top5_accuracy'}
  assert set(task.batch_metrics(outputs, batch)) == {'accuracy', 'top5_accuracy'}
  shown = task.image_summaries(outputs, batch)
  assert shown['puzzles'].shape == (3, 36, 36, 3) and shown['puzzles'].dtype == tf.uint8
  assert shown['solved'].shape == (3, 36, 36, 3)


def test_mosaic_places_slots_row_major():
  tiles = tf.reshape(tf.range(9, dtype=tf.float32), [1, 9, 1, 1, 1]) * tf.ones([1, 9, 2, 2, 1])
  grid = mosaic(tiles)[0, ::2, ::2, 0].numpy()
  np.testing.assert_array_equal(grid, np.arange(9).reshape(3, 3))


@pytest.mark.parametrize('shape', [(48, 48), (60, 50), (100, 130)])
def test_crop_equals_resize_then_stateless_random_crop(shape):
  task = JigsawTask(_config(resize_side=52, crop_size=48))
  image = tf.constant(np.random.default_rng(shape[1]).integers(0, 256, (*shape, 3), dtype=np.uint8))
  for i in range(4):
    seed = tf.constant([1, i], tf.int64)
    resized_shape = np.ceil(np.array(shape) * 52 / min(shape) - 1e-4).astype(np.int32)
    resized = tf.image.resize(tf.cast(image, tf.float32) / 255.0, np.maximum(resized_shape, 52), antialias=True)
    expected = tf.image.stateless_random_crop(resized, [48, 48, 3], seed).numpy()
    # Same filter and crop; float32 rounding of <= 5-tap sums of values in [0, 1].
    np.testing.assert_allclose(task._crop(image, seed).numpy(), expected, atol=1e-5)


def test_cut_tiles_equals_a_loop_of_crops():
  task = JigsawTask(_config(tile_size=10, color_jitter_px=2))
  c = task.config
  crops = tf.constant(np.random.default_rng(0).uniform(size=(2, 48, 48, 3)), tf.float32)
  perm = tf.constant(np.random.default_rng(1).permutation(9), tf.int32)
  occluded = tf.constant([True, False, False, True, False, False, False, False, False])
  seed = tf.constant([4, 2], tf.int64)
  tiles = task.cut_tiles(crops, perm, occluded, seed).numpy()
  # The same draws as cut_tiles, then one slice per slot and channel.
  from mtssl_tf.tasks import base

  seeds = base.stateless_seeds(seed, 2)
  room = c.cell_size - c.tile_size - c.color_jitter_px
  corner = tf.random.stateless_uniform([9, 2], seeds[0], 0, room + 1, dtype=tf.int32).numpy()
  shift = tf.random.stateless_uniform([9, 3, 2], seeds[1], 0, c.color_jitter_px + 1, dtype=tf.int32).numpy()
  for slot in range(9):
    cell = int(perm[slot])
    for ch in range(3):
      y, x = np.array([cell // 3, cell % 3]) * c.cell_size + corner[slot] + shift[slot, ch]
      expected = crops[int(occluded[slot]), y : y + c.tile_size, x : x + c.tile_size, ch]
      np.testing.assert_array_equal(tiles[slot, ..., ch], expected.numpy())  # A gather copies values.
