"""make_motion_masks (sharding, resume, bad videos, parallel) and the TF reader."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.motion import reader, writer
from mtssl_tf.data.motion.video_io import WriteOptions, list_videos
from mtssl_tf.data.sources import DataError
from mtssl_tf.data.synthetic.video import render_clip, write_clip

FRAMES = 10
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  """Three 10-frame clips at 48 px: two .avi files and one frame folder."""
  root = str(tmp_path_factory.mktemp('videos'))
  rng = np.random.default_rng(0)
  for i, fmt in enumerate(['avi', 'frames', 'avi']):
    write_clip(render_clip(rng, 48, 48, FRAMES), root, f'clip_{i}', fmt)
  return root


def _keys(pattern):
  keys = []
  for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    keys.append((feature[writer.NAME_KEY].bytes_list.value[0].decode(), feature[writer.INDEX_KEY].int64_list.value[0]))
  return keys


def test_list_videos_finds_files_and_frame_folders(videos):
  assert [os.path.basename(v) for v in list_videos([videos])] == ['clip_0.avi', 'clip_1', 'clip_2.avi']
  with pytest.raises(ValueError, match='does not exist'):
    list_videos([os.path.join(videos, 'missing')])


def test_writes_every_trackable_frame_once_and_resumes(videos, tmp_path):
  out = str(tmp_path / 'motion')
  summary = writer.make_motion_masks(videos, out, num_shards=2, workers=1)
  # Frames with at least min_horizon (3) future frames: 0..6 of each 10-frame clip.
  assert summary['frames_written'] == 3 * (FRAMES - 3) and summary['skipped_end_of_clip'] == 3 * 3
  assert summary['frames_read'] == 3 * FRAMES and summary['failed_videos'] == {}
  keys = _keys(os.path.join(out, 'motion-*-of-00002'))
  assert len(keys) == len(set(keys)) == 21
  # Lose one shard (as if the run died while writing it) and rerun: only it is redone.
  lost = writer.shard_path(out, 1, 2)
  kept_mtime = os.path.getmtime(writer.shard_path(out, 0, 2))
  os.remove(lost + '.json')
  os.rename(lost, lost + '.tmp')
  again = writer.make_motion_masks(videos, out, num_shards=2, workers=1)
  assert os.path.getmtime(writer.shard_path(out, 0, 2)) == kept_mtime
  assert sorted(_keys(os.path.join(out, 'motion-*-of-00002'))) == sorted(keys)
  assert again['frames_written'] == summary['frames_written']
  with pytest.raises(DataError, match='another run'):
    writer.make_motion_masks(videos, out, num_shards=3, workers=1)


def test_parallel_workers_write_the_same_records(videos, tmp_path):
  serial = writer.make_motion_masks(videos, str(tmp_path / 'a'), num_shards=3, workers=1)
  parallel = writer.make_motion_masks(videos, str(tmp_path / 'b'), num_shards=3, workers=2)
  assert serial['frames_written'] == parallel['frames_written']
  for s in range(3):
    a = [r.numpy() for r in tf.data.TFRecordDataset(writer.shard_path(str(tmp_path / 'a'), s, 3))]
    b = [r.numpy() for r in tf.data.TFRecordDataset(writer.shard_path(str(tmp_path / 'b'), s, 3))]
    assert a == b


def test_unreadable_video_is_counted_not_fatal(videos, tmp_path):
  source = tmp_path / 'in'
  source.mkdir()
  for name in ('clip_0.avi', 'clip_0.mask.npy'):
    os.link(os.path.join(videos, name), source / name)
  (source / 'broken.mp4').write_bytes(b'not a video at all' * 100)
  summary = writer.make_motion_masks(str(source), str(tmp_path / 'out'), num_shards=2, workers=1)
  assert list(summary['failed_videos']) == [str(source / 'broken.mp4')]
  assert summary['frames_written'] == FRAMES - 3
  with pytest.raises(DataError, match='no videos'):
    writer.make_motion_masks(str(tmp_path / 'out'), str(tmp_path / 'x'))


def test_options_shape_what_is_written(videos, tmp_path):
  options = WriteOptions(frame_stride=2, max_side=32)
  summary = writer.make_motion_masks(videos, str(tmp_path / 'o'), num_shards=1, workers=1, options=options)
  assert summary['frames_written'] == 3 * 4  # Frames 0, 2, 4, 6 of each clip.
  example = next(iter(reader.motion_dataset(str(tmp_path / 'o' / 'motion-*'))))
  assert example['image'].shape == (32, 32, 3)
  with pytest.raises(ValueError, match='frame_stride'):
    WriteOptions(frame_stride=0).validate()


@pytest.fixture(scope='module')
def records(videos, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('records'))
  writer.make_motion_masks(videos, out, num_shards=2, workers=1)
  return out


def test_reader_decodes_frames_and_binary_masks(records):
  examples = list(reader.motion_dataset(f'tfrecord:{records}/motion-*'))
  assert len(examples) == 21
  for e in examples:
    assert e['image'].dtype == tf.uint8 and e['image'].shape == (48, 48, 3)
    assert e['mask'].dtype == tf.uint8 and e['mask'].shape == (48, 48, 1)
    assert set(np.unique(e['mask'].numpy())) <= {0, 1}
  assert sum(int(e['mask'].numpy().sum()) for e in examples) > 0
  grown = next(iter(reader.motion_dataset(f'{records}/motion-*', ReadOptions(min_side=64))))
  assert grown['image'].shape == (64, 64, 3) and grown['mask'].shape == (64, 64, 1)


def test_reader_shards_across_workers(records):
  def frames(index):
    ds = reader.motion_dataset(f'{records}/motion-*', ReadOptions(shard_index=index, num_shards=2))
    return {(int(e['frame_index']), e['image'].numpy().tobytes()) for e in ds}

  first, second = frames(0), frames(1)
  assert first and second and not first & second and len(first | second) == 21


def test_reader_skips_and_counts_bad_records(records, tmp_path):
  good = [r.numpy() for r in tf.data.TFRecordDataset(writer.shard_path(records, 0, 2))]
  example = tf.train.Example.FromString(good[0])
  example.features.feature[writer.MASK_KEY].bytes_list.value[0] = tf.io.encode_png(
    np.zeros((8, 8, 1), np.uint8)
  ).numpy()
  path = str(tmp_path / 'motion-00000-of-00001')
  with tf.io.TFRecordWriter(path) as f:
    f.write(good[0])
    f.write(b'garbage, not an Example')
    f.write(example.SerializeToString())  # Mask of the wrong size.
    f.write(good[1])
  out = list(reader.motion_dataset(path))
  assert len(out) == 2 and int(out[-1]['num_skipped']) == 2
  with pytest.raises(DataError, match='no motion-mask TFRecord files'):
    reader.motion_dataset(str(tmp_path / 'nothing-*'))


def test_tool_end_to_end(videos, tmp_path):
  out = tmp_path / 'tool'
  cmd = [
    sys.executable,
    os.path.join(ROOT, 'tools', 'make_motion_masks.py'),
    f'--input={videos}',
    f'--output_dir={out}',
  ]
  result = subprocess.run(cmd + ['--num_shards=2', '--workers=1'], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '21 frames written from 3 videos; 0 videos unreadable' in result.stdout
  assert json.loads((out / 'summary.json').read_text())['frames_written'] == 21
  bad = subprocess.run(cmd[:2] + ['--input=/nonexistent', f'--output_dir={out}'], capture_output=True, text=True)
  assert bad.returncode != 0 and "'/nonexistent' does not exist" in bad.stderr
