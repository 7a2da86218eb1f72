"""The CC+HOG control's bag of HOG words (Noroozi et al. 2018): vocabulary, histograms, reuse, config."""

import json
import os

import numpy as np
import pytest

from mtssl_tf.configs import ConfigError, validate_all
from mtssl_tf.transfer import assign, extract
from mtssl_tf.transfer.config import ExtractConfig
from mtssl_tf.transfer.hog import VOCABULARY_FILE, HogBagOfWords, HogMap

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _stripes(size=64, top=8, left=8, patch=24, period=4, vertical=True):
  """A striped square patch on a flat gray background (flat: no gradient, so no HOG response)."""
  image = np.full((size, size, 3), 128, np.uint8)
  axis = np.arange(patch) // (period // 2) % 2
  stripes = np.where(axis[None, :] if vertical else axis[:, None], 230, 30).astype(np.uint8)
  image[top : top + patch, left : left + patch] = np.broadcast_to(stripes, (patch, patch))[..., None]
  return image


def _hog_config(transfer_config, words=6, vocabulary_images=20):
  cfg = transfer_config.extract
  cfg.features, cfg.hog_words, cfg.hog_vocabulary_images = 'hog', words, vocabulary_images
  return cfg


def test_defaults_are_the_bag_of_words():
  cfg = ExtractConfig()
  assert (cfg.hog_encoding, cfg.hog_words, cfg.hog_vocabulary_images) == ('bag_of_words', 1000, 10_000)


@pytest.mark.numerics
def test_a_bag_ignores_where_a_pattern_is_and_the_pooled_grid_does_not():
  hog = HogMap(64)
  # The same patch moved by whole cells (24 px), with flat background around it either way:
  # the same multiset of block descriptors in other places.
  here, there = _stripes(top=8, left=8), _stripes(top=32, left=32)
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
  fit_on = np.stack([here, _stripes(vertical=False), *noise])
  bag = HogBagOfWords.fit(hog, [fit_on[:3], fit_on[3:]], words=5, seed=0, progress=False)
  assert bag.dims == 5 and bag.vocabulary.input_dims == 36
  bags = bag(np.stack([here, there, _stripes(vertical=False)]))
  # Each row: the fraction of 49 blocks per word (float32 sums of 49 multiples of 1/49).
  np.testing.assert_allclose(bags.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(bags * 49, np.round(bags * 49), atol=1e-4)
  # The moved patch's descriptors are nearly the same multiset (block normalisation at the
  # patch border differs by < 1%), so its bag stays close, while the other orientation's
  # is far: with 5 words fitted on these images the moved patch differs by 0-8 of 49 blocks
  # over seeds 0-3, the other orientation by 32. A margin of 2x, not a word count: which
  # border blocks cross a word boundary depends on the vocabulary's start.
  moved, turned = np.abs(bags[0] - bags[1]).sum(), np.abs(bags[0] - bags[2]).sum()
  assert turned > 0.2 and moved < 0.5 * turned
  grids = extract.pool_features(hog(np.stack([here, there])), 'max', 4).numpy()
  assert np.abs(grids[0] - grids[1]).sum() > 0.5 * np.abs(grids[0]).sum()  # The layout shows in the grid.


@pytest.mark.numerics
def test_extraction_fits_saves_and_reuses_the_vocabulary(transfer_config, tmp_path):
  cfg = _hog_config(transfer_config)
  out = str(tmp_path / 'hog')
  result = extract.extract_features(cfg, out, progress=False)
  features, ids = np.concatenate(list(extract.FeatureShards(out))), extract.FeatureShards(out).all_ids()
  fingerprint = result['fingerprint']
  assert result['complete'] and features.shape == (40, 6) and len(np.unique(ids)) == 40
  assert fingerprint['encoding'] == 'bag_of_words' and fingerprint['words'] == 6 and 'pooling' not in fingerprint
  np.testing.assert_allclose(features.sum(axis=1), 1.0, atol=1e-5)  # 49 blocks per 64 px crop.
  assert os.path.exists(os.path.join(out, VOCABULARY_FILE))
  # A second featurizer (a restart) loads the saved words instead of fitting new ones.
  again = extract.build_featurizer(cfg, out, progress=False)
  assert all(fingerprint[k] == v for k, v in again.fingerprint.items())
  images = next(iter(extract.image_stream(cfg.source, image_size=64, crop_size=64, batch_size=40)))['image']
  labels, _ = again.vocabulary.assign(HogBagOfWords.descriptors(again.hog, images))
  counts = np.stack([np.bincount(row, minlength=6) for row in labels.reshape(40, 49)]) / 49
  np.testing.assert_allclose(again(images), counts, atol=1e-6)
  np.testing.assert_allclose(again(images), features, atol=1e-6)  # Same words, same batches of blocks.
  # A vocabulary of another size in that folder is refused, not silently reused.
  cfg.hog_words = 7
  with pytest.raises(ValueError, match='extract.hog_words=7'):
    extract.build_featurizer(cfg, out, progress=False)


def test_vocabulary_images_are_spread_over_the_source(transfer_config):
  cfg = transfer_config.extract
  ids = [int(i) for b in extract.image_stream(cfg.source, image_size=64, crop_size=64, batch_size=8, every=3)
         for i in b['id'].numpy()]  # fmt: skip
  assert ids == list(range(0, 40, 3))


def test_too_few_descriptors_for_the_vocabulary_name_the_keys():
  hog = HogMap(64)
  images = np.zeros((1, 64, 64, 3), np.uint8)  # 49 blocks for 100 words.
  with pytest.raises(ValueError, match='extract.hog_words'):
    HogBagOfWords.fit(hog, [images], words=100, progress=False)


@pytest.mark.numerics
def test_another_dataset_is_encoded_with_the_clustered_images_words(transfer_config, tiny_world, tmp_path):
  cfg, model_dir = transfer_config, str(tmp_path)
  _hog_config(cfg)
  extract.run_extract(cfg, model_dir, progress=False)
  assign.run_cluster(cfg, model_dir, progress=False)
  cfg.assign.source = tiny_world['sources']['images_validation']
  summary = assign.run_assign(cfg, model_dir, progress=False)
  manifests = [os.path.join(d, extract.MANIFEST) for d in (os.path.join(model_dir, 'features'), summary['features'])]
  clustered, other = (json.load(open(m))['fingerprint'] for m in manifests)
  assert other['vocabulary'] == clustered['vocabulary'] and other['source'] != clustered['source']
  assert not os.path.exists(os.path.join(summary['features'], VOCABULARY_FILE))  # No second vocabulary.
  assert extract.FeatureShards(summary['features']).num_rows == 20


@pytest.mark.parametrize(
  'changes, key',
  [(dict(hog_encoding='fisher'), 'extract.hog_encoding'), (dict(hog_words=1), 'extract.hog_words'),
   (dict(hog_vocabulary_images=0), 'extract.hog_vocabulary_images')],
)  # fmt: skip
def test_config_errors_name_the_key(changes, key):
  cfg = ExtractConfig(**changes)
  with pytest.raises(ConfigError, match=key):
    validate_all(cfg)
