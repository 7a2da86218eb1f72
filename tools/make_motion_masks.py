"""Turns videos into TFRecords of (frame, motion mask) for the motion segmentation task.

    python tools/make_motion_masks.py --input=/data/videos --output_dir=/data/motion \
        --num_shards=256 --frame_stride=5 --workers=16

Inputs are video files OpenCV reads (mp4, avi, mov, mkv, ...) and folders of frame
images (one folder per clip, sorted by file name). Each kept frame gets the mask of
pixels whose motion over the next `--horizon` frames the camera does not explain
(Farneback flow + RANSAC homography; see mtssl_tf/data/motion/masks.py). Rerunning
the same command resumes: finished shards are kept. Prints a summary (frames
written/skipped, unreadable videos) and writes it to <output_dir>/summary.json.
Train on the result with `motion_segmentation.data.source: tfrecord:<output_dir>/motion-*`.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf.data.motion.masks import MotionMaskConfig  # noqa: E402
from mtssl_tf.data.motion.writer import WriteOptions, make_motion_masks  # noqa: E402

flags.DEFINE_multi_string('input', None, 'Video file, folder or glob (repeatable).')
flags.DEFINE_string('output_dir', None, 'Where shards, per-shard stats and summary.json go.')
flags.DEFINE_integer('num_shards', 8, 'Output shards; also the unit of resumption.')
flags.DEFINE_integer('workers', 0, 'Processes computing masks (0: one per CPU core).')
flags.DEFINE_integer('frame_stride', 1, 'Keep every n-th frame (tracking uses all frames).')
flags.DEFINE_integer('max_side', 480, 'Downscale frames whose longer side exceeds this (0: keep).')
flags.DEFINE_integer('max_frames', 0, 'Read at most this many frames per video (0: all).')
flags.DEFINE_float('min_foreground', 0.0, 'Skip frames whose mask covers less than this fraction.')
flags.DEFINE_integer('horizon', 10, 'Frames each frame is tracked over (10 in the paper).')
flags.DEFINE_float('residual_threshold', 2.0, 'Px a track must depart from the camera model to be moving.')
flags.DEFINE_integer('flow_max_side', 320, 'Optical flow runs at most at this longer side.')
flags.mark_flags_as_required(['input', 'output_dir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  options = WriteOptions(
    frame_stride=FLAGS.frame_stride,
    max_side=FLAGS.max_side,
    max_frames=FLAGS.max_frames,
    min_foreground=FLAGS.min_foreground,
    mask=MotionMaskConfig(
      horizon=FLAGS.horizon, residual_threshold=FLAGS.residual_threshold, flow_max_side=FLAGS.flow_max_side
    ),
  )
  try:
    summary = make_motion_masks(FLAGS.input, FLAGS.output_dir, FLAGS.num_shards, FLAGS.workers, options, progress=True)
  except ValueError as e:  # DataError included: a clear one-line message, no traceback.
    raise app.UsageError(str(e)) from None
  failed = summary.pop('failed_videos')
  print(json.dumps(summary, indent=2))
  for video, error in failed.items():
    logging.warning('unreadable video %s: %s', video, error)
  print(f'{summary["frames_written"]} frames written from {summary["videos"]} videos; '
        f'{len(failed)} videos unreadable; shards: {summary["files"]}')  # fmt: skip


if __name__ == '__main__':
  app.run(main)
