"""NYU Depth v2 readers on a generated labeled .mat, its TFRecords and tfds (mocked)."""

import h5py
import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import depth
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.pipeline import SKIPPED_KEY
from mtssl_tf.data.sources import DataError
from mtssl_tf.data.synthetic.classification import odd_images
from mtssl_tf.data.synthetic.depth import write_depth_part, write_nyu_labeled, write_nyu_mat, write_nyu_splits


@pytest.fixture(scope='module')
def labeled(tmp_path_factory):
  return write_nyu_labeled(str(tmp_path_factory.mktemp('nyu')), 9, height=24, seed=2)


def _read(spec, options=None, **kwargs):
  return list(depth.depth_dataset(spec, options, **kwargs).as_numpy_iterator())


def _check(elements, labeled):
  for e in elements:
    expected = labeled['depths'][e['index']]
    assert e['depth'].dtype == np.float32 and np.array_equal(e['depth'], expected)
    assert np.array_equal(e['valid'], expected > 0)
    assert np.array_equal(e['image'], labeled['scenes'][e['index']].image)
    assert e[SKIPPED_KEY] == 0


def test_mat_layout_and_transposes_with_an_asymmetric_pattern(tmp_path):
  n, height, width = 2, 5, 7
  y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing='ij')
  images = np.stack([(y * 31 + x * 5 + c * 70 + k) % 256 for k in range(n)]).astype(np.uint8)
  depths = np.stack([y[..., 0] * 10.0 + x[..., 0] + 0.5 + k for k in range(n)]).astype(np.float32)
  depths[0, 0, 6] = 0  # A hole in a corner that a wrong transpose would move.
  depths[1, 4, 0] = np.nan
  path = str(tmp_path / 'nyu_depth_v2_labeled.mat')
  write_nyu_mat(path, images, depths)
  with h5py.File(path, 'r') as f:  # The official file's axis order as h5py sees it.
    assert f['images'].shape == (n, 3, width, height) and f['depths'].shape == (n, width, height)
  elements = _read(f'nyu:{path}')
  assert [int(e['index']) for e in elements] == [0, 1]
  for k, e in enumerate(elements):
    assert np.array_equal(e['image'], images[k])
    assert np.array_equal(e['depth'], np.nan_to_num(depths[k], nan=0.0))
  assert not elements[0]['valid'][0, 6] and elements[0]['valid'].sum() == height * width - 1
  assert not elements[1]['valid'][4, 0] and elements[1]['valid'].sum() == height * width - 1


def test_labeled_mat_reads_back_the_rendered_depth(labeled):
  elements = _read(f'nyu:{labeled["mat"]}')
  assert [int(e['index']) for e in elements] == list(range(9))
  assert elements[0]['image'].shape == (24, 32, 3)
  _check(elements, labeled)
  scene_depth = labeled['scenes'][0].depth
  holes = elements[0]['depth'] == 0
  assert holes.any() and np.array_equal(elements[0]['depth'][~holes], scene_depth[~holes])


def test_split_file_is_respected(labeled, tmp_path):
  train = _read(f'nyu:{labeled["mat"]}:train')
  test = _read(f'nyu:{labeled["mat"]}:test', depth_key='rawDepths')
  assert [int(e['index']) for e in train] == labeled['train'].tolist()
  assert [int(e['index']) for e in test] == labeled['test'].tolist()
  assert len(train) == 5 and len(test) == 4  # 795 / 1449 of 9, rounded.
  _check(train + test, labeled)
  other = str(tmp_path / 'mine.mat')
  write_nyu_splits(other, [0, 8], [3])
  assert [int(e['index']) for e in _read(f'nyu:{labeled["mat"]}:train', split_file=other)] == [0, 8]


def test_official_v5_split_file_is_read(tmp_path):
  import scipy.io

  path = str(tmp_path / 'splits.mat')
  # The official file holds 1-based column vectors of doubles.
  scipy.io.savemat(path, {'trainNdxs': np.asarray([[3.0], [1.0]]), 'testNdxs': np.asarray([[2.0]])})
  splits = depth.read_nyu_splits(path)
  assert splits['train'].tolist() == [0, 2] and splits['test'].tolist() == [1]


def test_sharding_partitions_mat_images(labeled):
  shards = [_read(f'nyu:{labeled["mat"]}', ReadOptions(shard_index=i, num_shards=2)) for i in range(2)]
  indices = [int(e['index']) for s in shards for e in s]
  assert sorted(indices) == list(range(9)) and all(shards)


def test_converter_round_trip_is_exact(labeled, tmp_path):
  splits = depth.read_nyu_splits(labeled['splits'])
  written = depth.nyu_mat_to_tfrecords(labeled['mat'], str(tmp_path), 2, splits)
  assert sorted(written) == ['test', 'train'] and len(written['train']) == 2
  for name in ('train', 'test'):
    elements = _read(f'nyu:{tmp_path}/{name}-*')
    assert sorted(int(e['index']) for e in elements) == labeled[name].tolist()
    _check(elements, labeled)
  every = depth.nyu_mat_to_tfrecords(labeled['mat'], str(tmp_path / 'all'), 1)
  assert len(_read(f'nyu:{every["all"][0]}')) == 9


def test_bad_records_are_skipped_and_counted(labeled, tmp_path):
  path = str(tmp_path / 'mixed-00000-of-00001')
  image, depth_map = labeled['scenes'][0].image, labeled['depths'][0]
  with tf.io.TFRecordWriter(path) as w:
    w.write(depth.depth_example(image, depth_map, 0).SerializeToString())
    w.write(b'not an Example')
    bad = depth.depth_example(image, depth_map, 1)
    bad.features.feature[depth.ENCODED_KEY].bytes_list.value[0] = odd_images()['truncated_jpeg']
    w.write(bad.SerializeToString())
    w.write(depth.depth_example(image, depth_map[:, :-1], 2).SerializeToString())  # Size mismatch.
    short = depth.depth_example(image, depth_map, 3)
    short.features.feature[depth.DEPTH_KEY].bytes_list.value[0] = b'\0' * 12
    w.write(short.SerializeToString())
    w.write(depth.depth_example(image, depth_map, 4, image_format='jpeg').SerializeToString())
  elements = _read(f'nyu:{path}')
  assert [int(e['index']) for e in elements] == [0, 4]
  assert [int(e[SKIPPED_KEY]) for e in elements] == [0, 4]
  assert np.array_equal(elements[1]['depth'], depth_map)


def test_bad_sources_fail_clearly(labeled, tmp_path):
  with pytest.raises(DataError, match='nothing.mat.* does not exist'):
    depth.depth_dataset(f'nyu:{tmp_path}/nothing.mat')
  with pytest.raises(DataError, match='no NYU depth TFRecord files match'):
    depth.depth_dataset(f'nyu:{tmp_path}/train-*')
  (tmp_path / 'v5.mat').write_bytes(b'MATLAB 5.0 MAT-file' + b'\0' * 200)
  with pytest.raises(DataError, match='is not HDF5'):
    depth.depth_dataset(f'nyu:{tmp_path}/v5.mat')
  lone = tmp_path / 'lone'
  lone.mkdir()
  mat = str(lone / 'labeled.mat')
  write_nyu_mat(mat, np.zeros([2, 4, 6, 3], np.uint8), np.ones([2, 4, 6], np.float32))
  with pytest.raises(DataError, match='needs the official split file'):
    depth.depth_dataset(f'nyu:{mat}:test')
  assert len(_read(f'nyu:{mat}:all')) == 2
  with pytest.raises(DataError, match='out of range'):
    depth.nyu_mat_to_tfrecords(mat, str(tmp_path / 'out'), 1, {'test': [5]})
  with pytest.raises(DataError, match='no NYU depth TFRecord'):
    depth.depth_dataset(f'nyu:{tmp_path}/x-*:all')
  with pytest.raises(DataError, match='expected nyu:'):
    depth.depth_dataset(f'folder:{tmp_path}')


def test_eigen_crop():
  assert depth.EIGEN_CROP == (45, 471, 41, 601)
  mask = depth.eigen_crop_mask().numpy()
  assert mask.shape == (480, 640) and mask.sum() == 426 * 560
  assert mask[45, 41] and not mask[44, 41] and not mask[45, 40] and mask[470, 600] and not mask[471, 600]
  assert depth.eigen_crop_mask(240, 320).numpy().sum() == 213 * 280


def test_tfds_conversion_and_missing_dataset(tmp_path):
  image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
  raw = np.full([6, 8], 2.5, np.float16)
  raw[0, 0], raw[5, 7] = 0, np.nan
  out = depth.tfds_example_to_depth({'image': tf.io.encode_png(image), 'depth': tf.constant(raw)})
  out = {k: v.numpy() for k, v in out.items()}
  assert np.array_equal(out['image'], image) and out['depth'].dtype == np.float32
  assert out['valid'].sum() == 46 and not out['valid'][0, 0] and not out['valid'][5, 7]
  assert out['depth'][5, 7] == 0 and out['depth'][1, 1] == 2.5 and out['index'] == -1
  with pytest.raises(DataError, match='`tfds build`'):
    depth.depth_dataset('tfds:nyu_depth_v2:validation', ReadOptions(data_dir=str(tmp_path)))


def test_tfds_reader_on_mocked_data(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=2, data_dir=str(tmp_path)):
    elements = _read('tfds:nyu_depth_v2:train', ReadOptions(data_dir=str(tmp_path)))
  assert len(elements) == 2
  assert elements[0]['image'].shape == (480, 640, 3) and elements[0]['depth'].shape == (480, 640)


def test_world_part_manifest(tmp_path):
  class Preset:
    depth_images = 5
    image_size = 16
    num_shards = 2

  sources = write_depth_part(str(tmp_path), Preset(), seed=0)
  train, test = _read(sources['depth_train']), _read(sources['depth_test'])
  assert len(train) + len(test) == 5
  assert sorted(int(e['index']) for e in test) == [int(e['index']) for e in _read(sources['depth_test_mat'])]
  assert sources['depth_mat'].endswith('.mat') and sources['depth_splits'].endswith('splits.mat')
