"""Videos -> sharded TFRecords of (frame JPEG, motion mask PNG); used by the tool.

Layout of the output folder:

  motion-00000-of-00004 ...     finished shards (TFRecord of tf.train.Example)
  motion-00000-of-00004.json    that shard's stats; its presence marks the shard done
  summary.json                  totals over all shards, written at the end

Videos are sorted by path and shard `s` holds videos `s, s + N, s + 2N, ...`, so a
rerun with the same inputs maps every video to the same shard. A shard is written to
a temporary file and renamed when complete; a rerun skips shards whose stats file
exists, so an interrupted run resumes where it stopped and never duplicates frames.

The mask algorithm runs in worker processes (numpy + OpenCV, no TensorFlow); the
parent only serialises and writes, so parallelism scales with videos, not shards.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from typing import Dict, Optional

import tensorflow as tf
from absl import logging

from mtssl_tf.data.motion.video_io import VideoError, WriteOptions, list_videos, process_video
from mtssl_tf.data.sources import DataError

SHARD_PREFIX = 'motion'
SUMMARY = 'summary.json'
ENCODED_KEY = 'image/encoded'
MASK_KEY = 'image/segmentation/motion/encoded'
NAME_KEY = 'video/name'
INDEX_KEY = 'video/frame_index'
HORIZON_KEY = 'mask/horizon'


def _process(args):
  return process_video(*args)


def motion_example(jpeg: bytes, png: bytes, name: str, index: int, horizon: int) -> tf.train.Example:
  """The stored record: frame JPEG, mask PNG (0 static / 255 moving), provenance."""

  def data(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def ints(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  return tf.train.Example(
    features=tf.train.Features(
      feature={
        ENCODED_KEY: data(jpeg),
        MASK_KEY: data(png),
        NAME_KEY: data(name.encode('utf-8')),
        INDEX_KEY: ints(index),
        HORIZON_KEY: ints(horizon),
      }
    )
  )


def shard_path(out_dir: str, shard: int, num_shards: int) -> str:
  """Path of output shard `shard` of `num_shards`."""
  return os.path.join(out_dir, f'{SHARD_PREFIX}-{shard:05d}-of-{num_shards:05d}')


def _progress(total: int, initial: int):
  try:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit='video', desc='motion masks', dynamic_ncols=True)
  except ImportError:  # tqdm is pinned, but a progress bar is not worth a crash.
    return None


def make_motion_masks(
  inputs,
  out_dir: str,
  num_shards: int = 8,
  workers: int = 0,
  options: Optional[WriteOptions] = None,
  progress: bool = False,
) -> Dict:
  """Writes motion-mask TFRecords for every video under `inputs`; resumable.

  Args:
    inputs: a folder, a video file, a glob, or a list of them.
    out_dir: output folder (created).
    num_shards: output shards (more shards = finer-grained resume).
    workers: processes computing masks (0: one per CPU core).
    options: per-frame options (default `WriteOptions()`).
    progress: show a progress bar over videos.

  Returns:
    The summary written to `out_dir/summary.json`: totals, per-shard stats, and the
    videos that could not be read.

  Raises:
    DataError: no inputs found, or `out_dir` holds shards of a different count.
    ValueError: bad options.
  """
  options = (options or WriteOptions()).validate()
  inputs = [inputs] if isinstance(inputs, str) else list(inputs)
  try:
    videos = list_videos(inputs)
  except VideoError as e:
    raise DataError(str(e)) from None
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  num_shards = min(num_shards, len(videos))
  tf.io.gfile.makedirs(out_dir)
  other = [p for p in tf.io.gfile.glob(os.path.join(out_dir, f'{SHARD_PREFIX}-*-of-*')) if not p.endswith('.tmp')]
  if any(not os.path.basename(p).split('.')[0].endswith(f'-of-{num_shards:05d}') for p in other):
    raise DataError(
      f'motion masks: {out_dir!r} holds shards of another run (not -of-{num_shards:05d}); use a new folder'
    )
  shards = {s: videos[s::num_shards] for s in range(num_shards)}
  done = {s for s in shards if tf.io.gfile.exists(shard_path(out_dir, s, num_shards) + '.json')}
  pending = [(s, v) for s in sorted(shards) if s not in done for v in shards[s]]
  logging.info(
    'motion masks: %d videos in %d shards, %d shards already done, %d videos to process',
    len(videos), num_shards, len(done), len(pending),
  )  # fmt: skip
  bar = _progress(len(videos), len(videos) - len(pending)) if progress else None
  workers = workers or os.cpu_count() or 1
  jobs = [(v, options) for _, v in pending]
  pool = None
  if workers > 1 and len(jobs) > 1:
    # spawn: the parent has TensorFlow loaded, which is not fork-safe. An executor
    # (not multiprocessing.Pool) so a crashed worker raises instead of hanging.
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), multiprocessing.get_context('spawn'))
  results = pool.map(_process, jobs) if pool else map(_process, jobs)
  start = time.time()
  base = os.path.commonpath([os.path.dirname(os.path.abspath(v)) for v in videos])
  remaining = {s: len(shards[s]) for s in shards if s not in done}
  writers, shard_stats = {}, {}
  try:
    for (shard, video), (records, stats) in zip(pending, results):
      path = shard_path(out_dir, shard, num_shards)
      if shard not in writers:
        writers[shard] = tf.io.TFRecordWriter(path + '.tmp')
        shard_stats[shard] = {'videos': [], 'frames_written': 0}
      name = os.path.relpath(os.path.abspath(video), base)
      for jpeg, png, index, horizon in records:
        writers[shard].write(motion_example(jpeg, png, name, index, horizon).SerializeToString())
      shard_stats[shard]['videos'].append(stats)
      shard_stats[shard]['frames_written'] += len(records)
      if 'error' in stats:
        logging.warning('motion masks: skipped %s: %s', video, stats['error'])
      if bar:
        bar.update(1)
        bar.set_postfix(frames=sum(s['frames_written'] for s in shard_stats.values()))
      remaining[shard] -= 1
      if remaining[shard] == 0:
        writers.pop(shard).close()
        tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
        with tf.io.gfile.GFile(path + '.json', 'w') as f:
          json.dump(shard_stats[shard], f, indent=1)
  finally:
    for w in writers.values():  # Only unfinished shards: their .tmp is rewritten on resume.
      w.close()
    if pool:
      pool.shutdown(wait=False, cancel_futures=True)
    if bar:
      bar.close()
  return write_summary(out_dir, num_shards, time.time() - start)


def write_summary(out_dir: str, num_shards: int, seconds: float = 0.0) -> Dict:
  """Totals over all finished shards' stats, written to `out_dir/summary.json`."""
  per_video = []
  for s in range(num_shards):
    with tf.io.gfile.GFile(shard_path(out_dir, s, num_shards) + '.json') as f:
      per_video.extend(json.load(f)['videos'])
  keys = ('frames_read', 'frames_written', 'skipped_end_of_clip', 'skipped_static', 'unreadable_frames')
  summary = {k: int(sum(v.get(k, 0) for v in per_video)) for k in keys}
  summary.update(
    videos=len(per_video),
    failed_videos={v['video']: v['error'] for v in per_video if 'error' in v},
    num_shards=num_shards,
    files=f'{os.path.join(out_dir, SHARD_PREFIX)}-*-of-{num_shards:05d}',
    seconds_this_run=round(seconds, 1),
  )
  with tf.io.gfile.GFile(os.path.join(out_dir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary
