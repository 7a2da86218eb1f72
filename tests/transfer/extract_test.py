"""Feature extraction: restart without duplicates, checkpoint = SavedModel, HOG, config errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError
from mtssl_tf.transfer import extract
from mtssl_tf.transfer.hog import HogMap

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _read_all(directory):
  shards = extract.FeatureShards(directory)
  return np.concatenate(list(shards)), shards.all_ids(), shards.all_labels()


class _Crashing:
  """A featurizer that raises after `calls` batches, as a killed job would stop."""

  def __init__(self, inner, calls):
    self.inner, self.calls = inner, calls
    self.fingerprint, self.dims = inner.fingerprint, inner.dims

  def __call__(self, images):
    self.calls -= 1
    if self.calls < 0:
      raise KeyboardInterrupt('killed')
    return self.inner(images)


def test_extraction_resumes_without_duplicates(transfer_config, tmp_path):
  cfg = transfer_config.extract
  featurizer = extract.build_featurizer(cfg)
  full = extract.extract_features(cfg, str(tmp_path / 'full'), featurizer=featurizer, progress=False)
  assert full['complete'] and full['rows'] == 40 and full['shards'] == 4  # 12 + 12 + 12 + 4.
  expected = _read_all(str(tmp_path / 'full'))
  assert len(np.unique(expected[1])) == 40 and (np.diff(expected[1]) > 0).all()

  out = str(tmp_path / 'resumed')
  partial = extract.extract_features(cfg, out, featurizer=featurizer, max_shards=2, progress=False)
  assert not partial['complete'] and partial['rows'] == 24 and len(extract.committed_shards(out)) == 2
  with pytest.raises(FileNotFoundError, match='unfinished'):
    extract.FeatureShards(out)
  # A job killed while filling shard 2 (8 of its rows buffered), after a previous attempt left
  # a torn file for that shard: both are redone, nothing duplicated. The batch size may change.
  with open(os.path.join(out, 'shard-00002.features.npy'), 'wb') as f:
    f.write(b'torn')
  cfg.batch_size = 4
  with pytest.raises(KeyboardInterrupt):
    extract.extract_features(cfg, out, featurizer=_Crashing(featurizer, 2), progress=False)
  assert len(extract.committed_shards(out)) == 2
  cfg.batch_size = 16
  resumed = extract.extract_features(cfg, out, featurizer=featurizer, progress=False)
  assert resumed['complete'] and resumed['rows'] == 40 and resumed['shards'] == 4
  features, ids, labels = _read_all(out)
  np.testing.assert_array_equal(ids, expected[1])
  np.testing.assert_array_equal(labels, expected[2])
  np.testing.assert_allclose(features, expected[0], rtol=1e-5, atol=1e-6)
  assert features.shape == (40, featurizer.dims) == (40, 2 * 2 * 128)  # 2x2 grid of 128 channels.

  # A finished extraction is not redone; other settings in the same folder are refused.
  assert extract.extract_features(cfg, out, featurizer=featurizer, progress=False)['seconds'] == resumed['seconds']
  cfg.dtype = 'float16'
  with pytest.raises(ValueError, match='dtype'):
    extract.extract_features(cfg, out, featurizer=featurizer, progress=False)


def test_checkpoint_and_saved_model_give_the_same_features(pretrained, transfer_config):
  cfg = transfer_config.extract
  cfg.trunk = pretrained['trunk_config']
  images = next(iter(extract.image_stream(cfg.source, image_size=64, crop_size=64, batch_size=6)))['image']
  for endpoint in ('final', 'block3/unit_02'):
    cfg.endpoint = endpoint
    features = {}
    for init in ('checkpoint', 'saved_model', 'run_dir'):
      cfg.init = pretrained[init]
      featurizer = extract.NetworkFeatures(cfg)
      features[init] = featurizer(images)
      assert featurizer.fingerprint['kind'] == ('saved_model' if init == 'saved_model' else 'checkpoint')
    np.testing.assert_allclose(features['checkpoint'], features['saved_model'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features['checkpoint'], features['run_dir'], rtol=1e-6, atol=1e-6)
    assert features['checkpoint'].shape == (6, 2 * 2 * 128) and np.abs(features['checkpoint']).max() > 0
  # Endpoints a SavedModel does not export, outputs it does not have: named errors.
  cfg.init, cfg.endpoint = pretrained['saved_model'], 'block1'
  with pytest.raises(ConfigError, match='extract.endpoint'):
    extract.NetworkFeatures(cfg)
  cfg.endpoint, cfg.output_key = 'final', 'unit_09'
  with pytest.raises(ConfigError, match='extract.output_key'):
    extract.NetworkFeatures(cfg)
  cfg.init, cfg.output_key, cfg.endpoint = pretrained['checkpoint'], '', 'block4'
  with pytest.raises(ConfigError, match='extract.endpoint'):
    extract.NetworkFeatures(cfg)


def test_random_network_control_is_seeded(transfer_config):
  cfg = transfer_config.extract
  images = tf.cast(tf.random.stateless_uniform([2, 64, 64, 3], [1, 2], maxval=255), tf.uint8)
  a, b = extract.NetworkFeatures(cfg)(images), extract.NetworkFeatures(cfg)(images)
  cfg.seed = 1
  c = extract.NetworkFeatures(cfg)(images)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_hog_maps_and_features(transfer_config, tmp_path):
  hog = HogMap(64, cell=8, block_cells=2, bins=9)
  assert hog.shape == (7, 7, 36)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  np.testing.assert_array_equal(hog(images), hog(images))
  # A vertical edge in the left part of the image: only blocks over it respond, in one orientation.
  edge = np.zeros((1, 64, 64, 3), np.uint8)
  edge[:, :, 12:] = 255
  maps = hog(edge)[0]
  assert maps[:, :2].sum() > 0 and maps[:, 3:].sum() == 0
  assert np.allclose(maps[0, 0], maps[6, 0])  # The same along the edge (rows are y).
  # 70 px crops use the central 64 px (whole cells).
  assert HogMap(70).window == 64

  cfg = transfer_config.extract
  cfg.features, cfg.hog_encoding, cfg.grid = 'hog', 'grid', 4  # The pooled grid (the bag of words: hog_test.py).
  result = extract.extract_features(cfg, str(tmp_path / 'hog'), progress=False)
  features, ids, _ = _read_all(str(tmp_path / 'hog'))
  assert result['complete'] and features.shape == (40, 4 * 4 * 36) and result['fingerprint']['features'] == 'hog'
  assert np.isfinite(features).all() and (features >= 0).all() and len(np.unique(ids)) == 40
  again = extract.HogFeatures(cfg)(next(iter(extract.image_stream(cfg.source, image_size=64, crop_size=64,
                                                                   batch_size=40)))['image'])  # fmt: skip
  np.testing.assert_allclose(again, features, rtol=1e-6)
  cfg.pooling = 'avg'
  assert extract.HogFeatures(cfg).dims == 36


def test_undecodable_images_leave_gaps_in_the_ids(tmp_path):
  good = tf.io.encode_png(tf.zeros([40, 40, 3], tf.uint8)).numpy()
  path = str(tmp_path / 'odd.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for encoded in (good, b'not an image', good):
      feature = {'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  batches = list(extract.image_stream(f'tfrecord:{path}', image_size=32, crop_size=32, batch_size=8))
  assert batches[0]['id'].numpy().tolist() == [0, 2] and batches[0]['label'].numpy().tolist() == [-1, -1]
  assert [int(b['id'][0]) for b in extract.image_stream(f'tfrecord:{path}', image_size=32, crop_size=32,
                                                          batch_size=8, start=1)] == [2]  # fmt: skip
  # Counted and named like the training readers' skips (id, then the reason).
  assert int(batches[0]['num_skipped'][-1]) == 1
  assert (
    batches[0]['skipped_sources'][-1][-1].numpy().decode()
    == f'tfrecord:{path} image 1: not an image (unrecognised header)'
  )
