"""Motion segmentation (Pathak et al. 2017), as used by Doersch & Zisserman 2017.

From a single frame, predict which pixels will move: a per-pixel 2-class
cross-entropy against the motion mask made from the video by
`tools/make_motion_masks.py` (pixels whose motion over the next 10 frames is not
explained by the camera). Labels are the mask downsampled by 8, and the task runs the
shared trunk at output stride 8 so that predictions and labels align.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import color
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import base

LABEL_STRIDE = 8


@dataclasses.dataclass
class MotionSegmentationConfig(base.TaskConfig):
  """Motion segmentation task.

  Attributes:
    crop_size: side of the random training crop (a multiple of 8).
    min_scale: the crop covers a random fraction in [min_scale, 1] of the shorter side
      before being resized to `crop_size` (scale augmentation; 1 disables it).
    flip: random horizontal flips.
    output_stride: trunk output stride for this task (8 = the label resolution).
    hidden_units: width of the head's hidden 1x1 convolution.
  """

  crop_size: int = 224
  min_scale: float = 0.6
  flip: bool = True
  output_stride: int = 8
  hidden_units: int = 256

  def validate(self) -> None:
    super().validate()
    if self.crop_size < LABEL_STRIDE or self.crop_size % LABEL_STRIDE:
      raise ConfigError(f'motion_segmentation.crop_size: must be a positive multiple of 8, got {self.crop_size}')
    if not 0 < self.min_scale <= 1:
      raise ConfigError(f'motion_segmentation.min_scale: must be in (0, 1], got {self.min_scale}')
    if self.output_stride not in (8, 16):
      raise ConfigError(f'motion_segmentation.output_stride: must be 8 or 16, got {self.output_stride}')


def downsample_labels(mask: tf.Tensor, factor: int = LABEL_STRIDE) -> tf.Tensor:
  """[H, W, 1] 0/1 mask -> [H/f, W/f] int32: a cell is moving if most of its pixels are."""
  fraction = tf.nn.avg_pool2d(tf.cast(mask[None], tf.float32), factor, factor, 'VALID')[0, ..., 0]
  return tf.cast(fraction >= 0.5, tf.int32)


class MotionSegmentationTask(base.Task):
  """Per-pixel 'will it move' from one frame."""

  name = 'motion_segmentation'
  config_class = MotionSegmentationConfig
  DENSE_OUTPUT = True

  @classmethod
  def trunk_input_size(cls, config) -> int:
    return config.crop_size

  WORLD_SOURCE = 'motion_segmentation_train'  # Clips with motion masks (data/synthetic/video.py).

  @property
  def output_stride(self) -> int:
    return self.config.output_stride

  def read(self, read_options: ReadOptions, default_source: str) -> tf.data.Dataset:
    """Frames and masks from the motion TFRecords (`tfrecord:<glob>` or a bare glob)."""
    from mtssl_tf.data.motion import reader

    source = self.config.data.source or default_source
    pattern = source.split(':', 1)[1] if source.startswith('tfrecord:') else source
    return reader.motion_dataset(pattern, read_options)

  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    c = self.config
    seeds = base.stateless_seeds(seed, 3)
    image, mask = example['image'], example['mask']
    shape = tf.shape(image)[:2]
    side = tf.cast(
      tf.cast(tf.reduce_min(shape), tf.float32) * tf.random.stateless_uniform([], seeds[0], c.min_scale, 1.0), tf.int32
    )
    offset = tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, dtype=tf.int32) % (shape - side + 1)
    # One crop box for frame and mask, so labels stay aligned with pixels.
    # Crop before converting: only the crop's pixels are cast (and scaled to [0, 1]).
    window = (slice(offset[0], offset[0] + side), slice(offset[1], offset[1] + side))
    image = tf.cast(image[window], tf.float32) * (1.0 / 255.0)
    stacked = tf.concat([image, tf.cast(mask[window], tf.float32)], axis=-1)
    stacked = tf.image.resize(stacked, [c.crop_size, c.crop_size], method='bilinear')
    if c.flip:
      stacked = tf.image.stateless_random_flip_left_right(stacked, seeds[2])
    image, mask = stacked[..., :3], tf.cast(stacked[..., 3:] >= 0.5, tf.float32)
    image = color.harmonize(image) if c.harmonize else image * 2.0 - 1.0
    image.set_shape([c.crop_size, c.crop_size, 3])
    labels = downsample_labels(mask)
    labels.set_shape([c.crop_size // LABEL_STRIDE, c.crop_size // LABEL_STRIDE])
    return {'image': image, 'labels': labels}

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    c = self.config
    return MotionSegmentationHead(
      c.hidden_units, c.output_stride // LABEL_STRIDE, name=f'{self.name}_head', dtype=dtype
    )

  def loss(self, outputs, batch):
    return tf.reduce_mean(
      tf.keras.losses.sparse_categorical_crossentropy(batch['labels'], base.cast_logits(outputs), from_logits=True)
    )

  def metrics(self):
    return {
      'loss': tf.keras.metrics.Mean(),
      'pixel_accuracy': base.accuracy_metric(),
      'foreground_iou': tf.keras.metrics.IoU(num_classes=2, target_class_ids=[1]),
    }

  def update_metrics(self, metrics, outputs, batch, loss):
    logits = base.cast_logits(outputs)
    metrics['loss'].update_state(loss)
    metrics['pixel_accuracy'].update_state(batch['labels'], logits)
    metrics['foreground_iou'].update_state(batch['labels'], tf.argmax(logits, axis=-1))

  def batch_metrics(self, outputs, batch):
    return {'pixel_accuracy': base.batch_accuracy(batch['labels'], base.cast_logits(outputs))}

  def image_summaries(self, outputs, batch):
    frames = tf.cast((batch['image'][:4] + 1.0) * 127.5, tf.uint8)
    size = tf.shape(frames)[1:3]

    def show(mask):
      mask = tf.image.resize(tf.cast(mask[..., None], tf.float32) * 255.0, size, method='nearest')
      return tf.cast(tf.tile(mask, [1, 1, 1, 3]), tf.uint8)

    predicted = tf.argmax(base.cast_logits(outputs[:4]), axis=-1)
    return {'frame_prediction_truth': tf.concat([frames, show(predicted), show(batch['labels'][:4])], axis=2)}


class MotionSegmentationHead(tf.keras.layers.Layer):
  """1x1 convolutions to 2 logits per label cell (upsampled when the trunk ran at stride 16)."""

  def __init__(self, hidden_units: int, upsample: int, **kwargs):
    """Creates the head; `upsample` is trunk stride / label stride (1 or 2)."""
    super().__init__(**kwargs)
    self.upsample = upsample
    self.hidden = tf.keras.layers.Conv2D(hidden_units, 1, activation='relu', dtype=self.dtype_policy)
    self.logits = tf.keras.layers.Conv2D(2, 1, dtype=self.dtype_policy)

  def call(self, features, training=None):
    logits = self.logits(self.hidden(features))
    if self.upsample > 1:
      logits = tf.image.resize(logits, tf.shape(logits)[1:3] * self.upsample, method='bilinear')
    return logits
