"""Relative position (Doersch et al. 2015), as used by Doersch & Zisserman 2017.

Two patches from adjacent cells of a 3x3 grid; the head, seeing both through the
shared trunk, predicts which of the 8 neighbours the second is of the first. Labels
follow the reference code's layout (0-based here):

    0 1 2
    3 . 4
    5 6 7

Defaults are cdoersch/deepcontext's: 96 px patches, a 48 px gap, +-7 px jitter,
images rescaled to 150k-450k pixels, a third of patches downsampled to as little as
10x10 and back up, colour dropping (one channel kept, the other two uniform noise,
against chromatic aberration), and per-patch normalisation (mean removed, divided by
the RMS). With `harmonize`, colour dropping is replaced by colorization's input (L of
Lab replicated), Doersch & Zisserman §3.3.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import color
from mtssl_tf.tasks import base

# (row, col) offset of the second patch for each label.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
NUM_CLASSES = len(OFFSETS)


@dataclasses.dataclass
class RelativePositionConfig(base.TaskConfig):
  """Relative position task.

  Attributes:
    patch_size: side of each patch (deepcontext: 96).
    gap: pixels between adjacent cells (deepcontext: 48).
    jitter: maximum per-patch displacement in each axis (deepcontext: 7).
    min_area: images are first rescaled to a random area in [min_area, max_area]
      pixels (deepcontext: 150k-450k), keeping aspect ratio.
    max_area: see `min_area`.
    downsample_prob: probability a patch is shrunk and re-enlarged (deepcontext: 1/3).
    min_downsample: smallest side it is shrunk to (deepcontext: 10).
    color_dropping: keep one random channel, replace the others with uniform noise.
    hidden_units: width of the per-patch projection and of the pair layer.
  """

  patch_size: int = 96
  gap: int = 48
  jitter: int = 7
  min_area: int = 150_000
  max_area: int = 450_000
  downsample_prob: float = 1.0 / 3.0
  min_downsample: int = 10
  color_dropping: bool = True
  hidden_units: int = 1024
  batch_size: int = 16

  def validate(self) -> None:
    super().validate()
    if self.patch_size < 8 or self.gap < 0 or self.jitter < 0:
      raise ConfigError('relative_position: need patch_size >= 8, gap >= 0, jitter >= 0')
    if self.jitter * 2 > self.gap + self.patch_size:
      raise ConfigError('relative_position.jitter: too large for the patch and gap')
    if not 0 < self.min_area <= self.max_area:
      raise ConfigError('relative_position.min_area: need 0 < min_area <= max_area')
    if not 0.0 <= self.downsample_prob <= 1.0:
      raise ConfigError('relative_position.downsample_prob: must be in [0, 1]')
    if not 1 <= self.min_downsample <= self.patch_size:
      raise ConfigError('relative_position.min_downsample: must be in [1, patch_size]')


def normalize_patch(patch: tf.Tensor) -> tf.Tensor:
  """Removes the patch mean and divides by its RMS (deepcontext's per-patch normalisation)."""
  patch = patch - tf.reduce_mean(patch)
  return patch / tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(patch))), 1e-3)


def drop_colors(patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Keeps one random channel of a [P, P, 3] float patch in [0, 1]; the others become noise."""
  seeds = base.stateless_seeds(seed, 2)
  keep = tf.random.stateless_uniform([], seeds[0], 0, 3, dtype=tf.int32)
  noise = tf.random.stateless_uniform(tf.shape(patch), seeds[1])
  mask = tf.one_hot(keep, 3, dtype=patch.dtype)
  return patch * mask + noise * (1.0 - mask)


class RelativePositionTask(base.Task):
  """Predict the relative position of two patches (8-way)."""

  name = 'relative_position'
  config_class = RelativePositionConfig

  @property
  def min_side(self) -> int:
    """Smallest image side from which both patches of any label can be cut."""
    c = self.config
    return 3 * c.patch_size + 2 * c.gap + 2 * c.jitter

  def _rescale(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    c = self.config
    area = tf.random.stateless_uniform([], seed, float(c.min_area), float(c.max_area))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.sqrt(area / (shape[0] * shape[1]))
    # Never below the size the grid needs, whatever the area range says.
    scale = tf.maximum(scale, float(self.min_side) / tf.reduce_min(shape))
    size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    return tf.image.resize(tf.cast(image, tf.float32) / 255.0, size, antialias=True)

  def _maybe_downsample(self, patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    c = self.config
    seeds = base.stateless_seeds(seed, 2)
    side = tf.random.stateless_uniform([], seeds[0], c.min_downsample, c.patch_size + 1, dtype=tf.int32)
    small = tf.image.resize(patch, [side, side], antialias=True)
    shrunk = tf.image.resize(small, [c.patch_size, c.patch_size])
    apply = tf.random.stateless_uniform([], seeds[1]) < c.downsample_prob
    return tf.where(apply, shrunk, patch)

  def _finish_patch(self, patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = base.stateless_seeds(seed, 2)
    patch = self._maybe_downsample(patch, seeds[0])
    if self.config.harmonize:
      patch = color.harmonize(patch)
    elif self.config.color_dropping:
      patch = drop_colors(patch, seeds[1])
    return normalize_patch(patch)

  def sample_positions(self, image_shape: tf.Tensor, seed: tf.Tensor):
    """Label and the top-left corners of both patches for an image of `image_shape`.

    Returns:
      (label int32, first [2] int32, second [2] int32).
    """
    c = self.config
    seeds = base.stateless_seeds(seed, 4)
    label = tf.random.stateless_uniform([], seeds[0], 0, NUM_CLASSES, dtype=tf.int32)
    cell = c.patch_size + c.gap
    margin = cell + c.jitter
    # The first patch sits at the centre cell of a 3x3 grid placed anywhere in the image.
    high = image_shape[:2] - c.patch_size - 2 * margin + 1
    center = margin + tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, dtype=tf.int32) % high
    offset = tf.gather(tf.constant(OFFSETS, tf.int32), label) * cell
    jitter = [tf.random.stateless_uniform([2], s, -c.jitter, c.jitter + 1, dtype=tf.int32) for s in seeds[2:]]
    return label, center + jitter[0], center + offset + jitter[1]

  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    c = self.config
    seeds = base.stateless_seeds(seed, 4)
    image = self._rescale(example['image'], seeds[0])
    label, first, second = self.sample_positions(tf.shape(image), seeds[1])
    patches = [
      self._finish_patch(tf.image.crop_to_bounding_box(image, y_x[0], y_x[1], c.patch_size, c.patch_size), s)
      for y_x, s in ((first, seeds[2]), (second, seeds[3]))
    ]
    patches = tf.stack(patches)
    patches.set_shape([2, c.patch_size, c.patch_size, 3])
    return {'patches': patches, 'label': label}

  def trunk_images(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    p = self.config.patch_size
    # All patches through the trunk as one batch (Doersch & Zisserman §3.1): 2B images.
    return tf.reshape(batch['patches'], [-1, p, p, 3])

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    return RelativePositionHead(self.config.hidden_units, name=f'{self.name}_head', dtype=dtype)

  def loss(self, outputs, batch):
    return tf.reduce_mean(
      tf.keras.losses.sparse_categorical_crossentropy(batch['label'], base.cast_logits(outputs), from_logits=True)
    )

  def metrics(self):
    return {'loss': tf.keras.metrics.Mean(), 'accuracy': base.accuracy_metric()}

  def update_metrics(self, metrics, outputs, batch, loss):
    metrics['loss'].update_state(loss)
    metrics['accuracy'].update_state(batch['label'], base.cast_logits(outputs))

  def batch_metrics(self, outputs, batch):
    return {'accuracy': base.batch_accuracy(batch['label'], base.cast_logits(outputs))}

  def image_summaries(self, outputs, batch):
    patches = batch['patches'][:4]
    lo = tf.reduce_min(patches, axis=[2, 3, 4], keepdims=True)
    hi = tf.reduce_max(patches, axis=[2, 3, 4], keepdims=True)
    shown = tf.cast((patches - lo) / tf.maximum(hi - lo, 1e-6) * 255.0, tf.uint8)
    return {'pairs': tf.concat([shown[:, 0], shown[:, 1]], axis=2)}


class RelativePositionHead(tf.keras.layers.Layer):
  """Siamese head: per-patch projection and pooling, then the pair classified together."""

  def __init__(self, hidden_units: int, **kwargs):
    """Creates the head with `hidden_units` per patch and in the pair layer."""
    super().__init__(**kwargs)
    self.project = tf.keras.layers.Conv2D(hidden_units // 2, 1, activation='relu', dtype=self.dtype_policy)
    self.pool = tf.keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
    self.pair = tf.keras.layers.Dense(hidden_units, activation='relu', dtype=self.dtype_policy)
    self.classify = tf.keras.layers.Dense(NUM_CLASSES, dtype=self.dtype_policy)

  def call(self, features, training=None):
    per_patch = self.pool(self.project(features))  # [2B, hidden / 2]
    pairs = tf.reshape(per_patch, [-1, 2 * per_patch.shape[-1]])  # Consecutive patches form a pair.
    return self.classify(self.pair(pairs))
