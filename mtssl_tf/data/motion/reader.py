"""Reads the motion-mask TFRecords written by `tools/make_motion_masks.py` (pure TF)."""

from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf

from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.images import ReadOptions, ensure_min_side, named, tfrecord_records
from mtssl_tf.data.motion.writer import ENCODED_KEY, HORIZON_KEY, INDEX_KEY, MASK_KEY
from mtssl_tf.data.sources import list_files

_FEATURES = {
  ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
  MASK_KEY: tf.io.FixedLenFeature([], tf.string),
  INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  HORIZON_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def parse_motion_record(serialized: tf.Tensor, min_side: int = 0) -> Dict[str, tf.Tensor]:
  """One record -> {'image': uint8 [H, W, 3], 'mask': uint8 [H, W, 1] in {0, 1}, ...}.

  Raises (at run time, so `robust_map` skips the record) when the record is not an
  Example, an image does not decode, or the mask's size differs from the frame's.
  """
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  image = decode.decode_rgb(parsed[ENCODED_KEY])
  mask = tf.image.decode_png(parsed[MASK_KEY], channels=1)
  check = tf.debugging.assert_equal(tf.shape(image)[:2], tf.shape(mask)[:2], message='mask and frame sizes differ')
  with tf.control_dependencies([check]):
    mask = tf.cast(mask > 127, tf.uint8)
  if min_side > 0:
    # Upscale both with the same rule; nearest for the mask keeps it binary.
    stacked = ensure_min_side(tf.concat([image, mask * 255], -1), min_side)
    image, mask = stacked[..., :3], tf.cast(stacked[..., 3:] > 127, tf.uint8)
  return {'image': image, 'mask': mask, 'frame_index': parsed[INDEX_KEY], 'horizon': parsed[HORIZON_KEY]}


def motion_dataset(pattern: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Frames and their motion masks, sharded per worker; bad records skipped and counted.

  Args:
    pattern: glob of the shards (e.g. `/data/motion/motion-*`); a `tfrecord:` prefix
      is accepted.
    options: sharding, order and `min_side`.

  Returns:
    Dataset of {'image', 'mask', 'frame_index', 'horizon', 'num_skipped'}.

  Raises:
    DataError: the pattern matches no file.
  """
  options = options or ReadOptions()
  pattern = pattern[len('tfrecord:') :] if pattern.startswith('tfrecord:') else pattern
  # Shard stats files sit beside the shards and share their prefix.
  files = [f for f in list_files(pattern, 'motion-mask TFRecord files') if not f.endswith(('.json', '.tmp'))]
  records = tfrecord_records(files, options, with_source=True)
  return pipeline.robust_map(
    records, lambda item: parse_motion_record(item[1], options.min_side), describe=named(': bad motion record')
  )
