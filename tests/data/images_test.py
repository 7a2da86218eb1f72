"""Image readers on generated TFRecords, folders and tfds; bad input skipped and counted."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import images
from mtssl_tf.data.pipeline import SKIPPED_KEY, SKIPPED_SOURCES_KEY
from mtssl_tf.data.sources import DataError
from mtssl_tf.data.synthetic.classification import (
  image_example,
  odd_images,
  write_image_folder,
  write_image_tfrecords,
)

ODD = odd_images(seed=5)


def _read(ds):
  return list(ds.as_numpy_iterator())


def test_tfrecords_with_model_garden_label_offset(tmp_path):
  write_image_tfrecords(str(tmp_path), 20, num_shards=3, size=48, label_offset=1)
  elements = _read(images.image_dataset(f'tfrecord:{tmp_path}/train-*', images.ReadOptions(label_offset=1)))
  assert len(elements) == 20
  assert sorted(int(e['label']) for e in elements) == sorted(i % 10 for i in range(20))
  assert all(e['image'].shape == (48, 48, 3) and e['image'].dtype == np.uint8 for e in elements)
  assert all(e[SKIPPED_KEY] == 0 for e in elements)


def test_tfrecord_bad_records_are_skipped_and_counted(tmp_path):
  path = str(tmp_path / 'mixed-00000-of-00001')
  with tf.io.TFRecordWriter(path) as w:
    w.write(image_example(ODD['rgb_jpeg'], 1).SerializeToString())
    w.write(image_example(ODD['truncated_jpeg'], 2).SerializeToString())
    w.write(b'this is not an Example proto')
    w.write(tf.train.Example().SerializeToString())  # No image/encoded at all.
    w.write(image_example(ODD['cmyk_jpeg'], 3).SerializeToString())
    w.write(image_example(ODD['empty'], 4).SerializeToString())
    w.write(image_example(ODD['png16'], 5).SerializeToString())
  elements = _read(images.image_dataset(f'tfrecord:{path}'))
  assert [int(e['label']) for e in elements] == [1, 3, 5]
  assert [int(e[SKIPPED_KEY]) for e in elements] == [0, 3, 4]
  # Each skipped record is named by file and record number, with the reason when it is an image.
  assert [s.decode() for s in elements[-1][SKIPPED_SOURCES_KEY]] == [
    f'{path}#record 1: truncated JPEG (no end-of-image marker)',
    f'{path}#record 2: not an image Example',
    f'{path}#record 3: empty file',
    f'{path}#record 5: empty file',
  ]


def test_truncated_shard_keeps_its_readable_records_and_the_other_shards(tmp_path):
  paths = write_image_tfrecords(str(tmp_path), 12, num_shards=2, size=32)
  data = open(paths[0], 'rb').read()
  with open(paths[0], 'wb') as f:
    f.write(data[: len(data) - 100])  # Cut inside the last record.
  elements = _read(images.image_dataset(f'tfrecord:{tmp_path}/train-*'))
  assert len(elements) == 11


def test_folder_labels_from_subfolders_and_odd_files(tmp_path):
  counts = write_image_folder(str(tmp_path), 12, size=40, num_classes=3)
  assert counts == {'circle': 4, 'square': 4, 'triangle': 4}
  for name in ('gray_jpeg', 'rgba_png', 'png16', 'cmyk_jpeg'):
    (tmp_path / 'square' / f'odd_{name}.{"png" if "png" in name else "jpg"}').write_bytes(ODD[name])
  (tmp_path / 'circle' / 'zero.jpg').write_bytes(b'')
  (tmp_path / 'circle' / 'broken.jpg').write_bytes(ODD['truncated_jpeg'])
  (tmp_path / 'circle' / 'notes.txt').write_text('not an image')
  elements = _read(images.image_dataset(f'folder:{tmp_path}'))
  assert len(elements) == 16
  labels = [int(e['label']) for e in elements]
  assert labels.count(0) == 4 and labels.count(1) == 8 and labels.count(2) == 4
  assert elements[-1][SKIPPED_KEY] == 2
  named = {s.decode() for e in elements for s in e[SKIPPED_SOURCES_KEY] if s}
  assert named == {
    f'{tmp_path}/circle/broken.jpg: truncated JPEG (no end-of-image marker)',
    f'{tmp_path}/circle/zero.jpg: empty file',
  }
  assert all(e['image'].shape[-1] == 3 for e in elements)


def test_flat_folder_has_no_labels_and_min_side_upscales(tmp_path):
  (tmp_path / 'a.jpg').write_bytes(ODD['tiny_jpeg'])
  (tmp_path / 'b.png').write_bytes(ODD['rgba_png'])
  elements = _read(images.image_dataset(f'folder:{tmp_path}', images.ReadOptions(min_side=32)))
  assert [int(e['label']) for e in elements] == [-1, -1]
  assert elements[0]['image'].shape == (32, 32, 3)  # 12 px upscaled.
  assert elements[1]['image'].shape == (64, 64, 3)  # Already large enough.


def test_sharding_splits_without_overlap(tmp_path):
  write_image_tfrecords(str(tmp_path), 16, num_shards=4, size=32)
  spec = f'tfrecord:{tmp_path}/train-*'
  seen = []
  for index in range(2):
    opts = images.ReadOptions(shard_index=index, num_shards=2)
    seen.append([e['image'].tobytes() for e in _read(images.image_dataset(spec, opts))])
  assert len(seen[0]) == len(seen[1]) == 8
  assert not set(seen[0]) & set(seen[1])


def test_unseeded_shuffled_folder_shards_are_disjoint(tmp_path):
  # Shuffled without a seed, each worker draws its own order: only sharding before the shuffle keeps them apart.
  write_image_folder(str(tmp_path), 12, size=32, num_classes=3)
  seen = []
  for index in range(3):
    opts = images.ReadOptions(shuffle_files=True, shard_index=index, num_shards=3)
    seen.append([e['image'].tobytes() for e in _read(images.image_dataset(f'folder:{tmp_path}', opts))])
  assert [len(s) for s in seen] == [4, 4, 4]
  assert len(set(seen[0]) | set(seen[1]) | set(seen[2])) == 12


def test_seeded_shuffle_is_reproducible(tmp_path):
  write_image_tfrecords(str(tmp_path), 16, num_shards=4, size=32)
  opts = images.ReadOptions(shuffle_files=True, seed=7)
  runs = [
    [int(e['label']) for e in _read(images.image_dataset(f'tfrecord:{tmp_path}/train-*', opts))] for _ in range(2)
  ]
  assert runs[0] == runs[1]


def test_custom_process_receives_encoded_bytes(tmp_path):
  write_image_tfrecords(str(tmp_path), 4, num_shards=1, size=40)
  from mtssl_tf.data.decode import decode_and_crop_rgb

  def crop(record):
    return {'patch': decode_and_crop_rgb(record['encoded'], [0, 0, 16, 16]), 'label': record['label']}

  elements = _read(images.image_dataset(f'tfrecord:{tmp_path}/train-*', process=crop))
  assert [e['patch'].shape for e in elements] == [(16, 16, 3)] * 4


def test_missing_sources_fail_clearly(tmp_path):
  with pytest.raises(DataError, match="no image TFRecord files match '.*nothing-\\*'"):
    images.image_dataset(f'tfrecord:{tmp_path}/nothing-*')
  with pytest.raises(DataError, match='does not exist'):
    images.image_dataset(f'folder:{tmp_path}/missing')
  with pytest.raises(DataError, match='holds no'):
    images.image_dataset(f'folder:{tmp_path}')
  with pytest.raises(DataError, match="'imagenet2012' split 'train' is not available in data_dir"):
    images.image_dataset('tfds:imagenet2012:train', images.ReadOptions(data_dir=str(tmp_path)))


def test_tfds_reader_converts_a_prepared_dataset(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    elements = _read(images.image_dataset('tfds:imagenette:train', images.ReadOptions(data_dir=str(tmp_path))))
  assert len(elements) == 6
  assert all(e['image'].ndim == 3 and e['image'].shape[-1] == 3 for e in elements)
  assert all(0 <= e['label'] < 10 for e in elements)


def test_listing_is_sorted_and_ignores_non_images(tmp_path):
  os.makedirs(tmp_path / 'b')
  os.makedirs(tmp_path / 'a')
  (tmp_path / 'b' / '1.JPG').write_bytes(ODD['rgb_jpeg'])
  (tmp_path / 'a' / '2.png').write_bytes(ODD['rgba_png'])
  (tmp_path / 'a' / 'x.txt').write_text('')
  paths, labels, names = images.list_image_folder(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['2.png', '1.JPG'] and labels == [0, 1] and names == ['a', 'b']
