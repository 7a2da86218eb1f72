"""Shared tf.data blocks: robust mapping with skip counts, file interleave, sources."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import pipeline
from mtssl_tf.data.sources import DataError, Source, list_files, parse_source, require_dir


def _checked_sqrt(x):
  tf.debugging.assert_non_negative(x['v'])
  return {'v': tf.sqrt(x['v'])}


def test_robust_map_drops_failures_and_counts_them():
  values = tf.constant([4.0, -1.0, 9.0, -2.0, -3.0, 16.0])
  ds = pipeline.robust_map(tf.data.Dataset.from_tensor_slices({'v': values}), _checked_sqrt)
  out = list(ds.as_numpy_iterator())
  assert [float(e['v']) for e in out] == [2.0, 3.0, 4.0]
  assert [int(e[pipeline.SKIPPED_KEY]) for e in out] == [0, 1, 3]


def test_robust_map_count_survives_batching_and_repeat():
  values = tf.constant([1.0, -1.0, 4.0, 9.0])
  ds = pipeline.robust_map(tf.data.Dataset.from_tensor_slices({'v': values}).repeat(3), _checked_sqrt).batch(3)
  batches = list(ds.as_numpy_iterator())
  assert sum(len(b['v']) for b in batches) == 9
  assert int(batches[-1][pipeline.SKIPPED_KEY].max()) == 3


def test_skip_counter_logs_growth_only():
  counter = pipeline.SkipCounter('images')
  assert counter.update(np.array([0, 0])) == 0
  assert counter.update(np.array([1, 2])) == 2
  assert counter.update(np.array([1])) == 2  # A worker lagging behind never lowers it.


def test_robust_map_names_the_most_recent_failures():
  values = tf.constant([4.0, -1.0, 9.0, -2.0, -3.0, 16.0])
  source = tf.data.Dataset.from_tensor_slices({'v': values})
  described = pipeline.robust_map(source, _checked_sqrt, describe=lambda x: tf.strings.format('value {}', x['v']))
  out = list(described.as_numpy_iterator())
  assert [list(e[pipeline.SKIPPED_SOURCES_KEY]) for e in out] == [
    [b''] * 4,
    [b''] * 3 + [b'value -1'],
    [b'', b'value -1', b'value -2', b'value -3'],
  ]
  # Without a describer (or when it fails too) the element's index names it.
  failing = pipeline.robust_map(source, _checked_sqrt, describe=lambda x: tf.strings.as_string(_checked_sqrt(x)['v']))
  assert list(list(failing.as_numpy_iterator())[-1][pipeline.SKIPPED_SOURCES_KEY]) == [
    b'',
    b'element 1',
    b'element 3',
    b'element 4',
  ]


def test_robust_map_names_the_newest_of_a_long_run_of_failures():
  # Six failures in a row: the count is exact, the names are the newest MAX_NAMED_SKIPS (= 4) of them.
  values = tf.constant([1.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 4.0, -7.0, 9.0])
  source = tf.data.Dataset.from_tensor_slices({'v': values})
  out = list(
    pipeline.robust_map(
      source, _checked_sqrt, describe=lambda x: tf.strings.format('value {}', x['v'])
    ).as_numpy_iterator()
  )
  assert [float(e['v']) for e in out] == [1.0, 2.0, 3.0]
  assert [int(e[pipeline.SKIPPED_KEY]) for e in out] == [0, 6, 7]
  assert list(out[1][pipeline.SKIPPED_SOURCES_KEY]) == [b'value -3', b'value -4', b'value -5', b'value -6']
  assert list(out[2][pipeline.SKIPPED_SOURCES_KEY]) == [b'value -4', b'value -5', b'value -6', b'value -7']


def test_robust_map_of_elements_of_unknown_rank():
  # Raw elements of unknown rank cannot be remembered in a window: the per-element path, same results.
  values = [4.0, -1.0, 9.0, -2.0]
  source = tf.data.Dataset.from_generator(lambda: iter(values), output_signature=tf.TensorSpec(None, tf.float32))

  def scalar_sqrt(x):
    return _checked_sqrt({'v': tf.reshape(x, [])})

  def describe(x):
    return tf.strings.format('value {}', x)

  out = list(pipeline.robust_map(source, scalar_sqrt, describe=describe).as_numpy_iterator())
  assert [float(e['v']) for e in out] == [2.0, 3.0]
  assert [int(e[pipeline.SKIPPED_KEY]) for e in out] == [0, 1]
  assert list(out[1][pipeline.SKIPPED_SOURCES_KEY]) == [b''] * 3 + [b'value -1']


def test_skip_counter_names_each_source_once():
  counter = pipeline.SkipCounter('images')
  counter.update(np.array([1]), np.array([[b'', b'a.jpg: empty file']]))
  counter.update(np.array([2, 2]), np.array([[b'a.jpg: empty file', b'b.png: truncated PNG']] * 2))
  assert counter.result() == {'count': 2, 'sources': ['a.jpg: empty file', 'b.png: truncated PNG']}
  # Another pipeline of the same source (another worker) adds its own count.
  assert counter.update(np.array([3]), pipeline_id=1) == 5
  assert counter.update(np.array([1]), pipeline_id=1) == 5


def test_file_dataset_shards_by_file_or_by_element(tmp_path):
  files = []
  for i in range(3):
    path = str(tmp_path / f'f{i}')
    with tf.io.TFRecordWriter(path) as w:
      for j in range(4):
        w.write(f'{i}-{j}'.encode())
    files.append(path)

  def read(num_shards):
    return [
      sorted(
        x.decode() for x in pipeline.file_dataset(files, tf.data.TFRecordDataset, k, num_shards).as_numpy_iterator()
      )
      for k in range(num_shards)
    ]

  by_file = read(3)  # 3 files, 3 shards: a file each.
  assert [len(s) for s in by_file] == [4, 4, 4] and by_file[1] == [f'1-{j}' for j in range(4)]
  by_element = read(4)  # More shards than files: element-wise.
  assert sorted(sum(by_element, [])) == sorted(f'{i}-{j}' for i in range(3) for j in range(4))
  assert all(len(s) == 3 for s in by_element)


@pytest.mark.parametrize(
  'spec, source',
  [
    ('tfrecord:/data/train-*', Source('tfrecord', '/data/train-*')),
    ('folder:/photos', Source('folder', '/photos')),
    ('tfds:imagenet2012:train', Source('tfds', 'imagenet2012', 'train')),
    ('tfds:voc/2007:test[:10%]', Source('tfds', 'voc/2007', 'test[:10%]')),
    ('tfrecord:gs://bucket/x-*', Source('tfrecord', 'gs://bucket/x-*')),
  ],
)
def test_parse_source(spec, source):
  assert parse_source(spec) == source


@pytest.mark.parametrize('spec', ['imagenet', 'http:/x', 'tfds:imagenet2012', 'folder:', 'tfds::train'])
def test_bad_specs_are_named(spec):
  with pytest.raises(DataError, match=repr(spec).replace('[', '\\[')):
    parse_source(spec)


def test_list_files_and_require_dir_errors(tmp_path):
  with pytest.raises(DataError, match='folder .* does not exist'):
    list_files(str(tmp_path / 'missing' / '*.tfrecord'))
  with pytest.raises(DataError, match='no shards match'):
    list_files(str(tmp_path / '*.tfrecord'), 'shards')
  (tmp_path / 'b.tfrecord').write_bytes(b'')
  (tmp_path / 'a.tfrecord').write_bytes(b'')
  assert [p.rsplit('/', 1)[1] for p in list_files(str(tmp_path / '*.tfrecord'))] == ['a.tfrecord', 'b.tfrecord']
  with pytest.raises(DataError, match='a.tfrecord'):
    require_dir(str(tmp_path / 'a.tfrecord'))
