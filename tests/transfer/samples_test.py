"""Figure 5's data (the images nearest to cluster centres) and the `world:` source names."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError
from mtssl_tf.data.synthetic.world import make_world
from mtssl_tf.grid import figures
from mtssl_tf.transfer import assign, samples
from mtssl_tf.transfer.config import TransferConfig, world_sources


def _jpeg(value: int) -> bytes:
  # A flat image whose grey level identifies it after decoding (JPEG keeps flat areas exact).
  return tf.io.encode_jpeg(tf.fill([20, 30, 3], tf.constant(value, tf.uint8)), quality=100).numpy()


def _write_records(directory, rows):
  """rows: (pseudo-label, image id, distance); each image's grey level is 10 x its id."""
  os.makedirs(directory, exist_ok=True)
  half = len(rows) // 2
  for shard, part in enumerate((rows[:half], rows[half:])):  # Two shards: the pass spans files.
    with tf.io.TFRecordWriter(os.path.join(directory, assign.RECORDS.format(shard))) as writer:
      for label, image_id, distance in part:
        writer.write(assign._example(_jpeg(10 * image_id), label, -1, image_id, distance))


def test_nearest_images_of_the_largest_clusters(tmp_path):
  rows = [
    (0, 0, 5.0), (0, 1, 1.0), (0, 2, 3.0), (0, 3, 0.5), (0, 4, 9.0),  # cluster 0: 5 images
    (1, 5, 2.0), (1, 6, 0.1), (1, 7, 4.0),                            # cluster 1: 3 images
    (2, 8, 0.0), (2, 9, 0.2),                                         # cluster 2: 2 images
    (3, 10, 0.3), (3, 11, 0.0),                                       # cluster 3: 2 images (tie with 2)
  ]  # fmt: skip
  _write_records(str(tmp_path), rows)
  got = samples.nearest_to_centres(str(tmp_path), num_clusters=3, per_cluster=3, image_size=16)
  assert [c.cluster for c in got] == [0, 1, 2]  # Largest first; the 2-2 tie goes to the lower label.
  assert [c.size for c in got] == [5, 3, 2]
  assert got[0].ids == [3, 1, 2] and got[0].distances == [0.5, 1.0, 3.0]
  assert got[1].ids == [6, 5, 7] and got[2].ids == [8, 9]
  assert got[0].images.shape == (3, 16, 16, 3) and got[0].images.dtype == np.uint8
  # Each thumbnail is the right image: its grey level is 10 x its id.
  assert [int(round(float(im.mean()))) for im in got[0].images] == [30, 10, 20]

  path = figures.figure5(got, str(tmp_path / 'fig' / 'figure5.png'))
  image = tf.image.decode_png(tf.io.read_file(path))
  assert (int(image.shape[1]), int(image.shape[0])) == figures.figure5_size(3, 3)
  with pytest.raises(ValueError, match='no clusters'):
    figures.figure5([], str(tmp_path / 'empty.png'))


def test_nearest_needs_pseudo_labels(tmp_path):
  with pytest.raises(FileNotFoundError, match='mtssl-transfer assign'):
    samples.nearest_to_centres(str(tmp_path))


def test_world_names_resolve_to_the_worlds_sources(tmp_path):
  root = str(tmp_path / 'world')
  manifest = make_world(root, 'tiny')
  cfg = TransferConfig()
  cfg.world_dir, cfg.world_preset = root, 'tiny'
  cfg.extract.source, cfg.assign.source = 'world:scene_images', 'world:images_train'
  world_sources(cfg)
  assert cfg.extract.source == manifest['sources']['scene_images'] and cfg.extract.source.startswith('folder:')
  assert cfg.assign.source == manifest['sources']['images_train']
  assert cfg.probe.validation_source == manifest['sources']['images_validation']
  # The scenes folder holds every detection image (trainval and test), unlabelled.
  folder = cfg.extract.source.split(':', 1)[1]
  assert len(os.listdir(folder)) == manifest['sizes']['detection_images']

  cfg = TransferConfig()
  cfg.world_dir, cfg.world_preset, cfg.train.source = root, 'tiny', 'world:places'
  with pytest.raises(ConfigError, match=r"train.source: the synthetic world has no source 'places'"):
    world_sources(cfg)
