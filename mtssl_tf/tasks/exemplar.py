"""Exemplar (Dosovitskiy et al. 2014), with the triplet loss of Doersch & Zisserman 2017.

Each image gives one patch; augmented copies of it (translation, scaling, rotation,
colour shifts) form a pseudo-class. The embedding f (trunk + a small head) is trained
with the triplet loss max(D(f(x1), f(x2)) - D(f(x1), f(x3)) + M, 0), where D is the
cosine distance, M = 0.5, x1 and x2 are copies of one patch and x3 a copy of a patch
from another image.

Within a batch of B images with V copies each, every copy v >= 1 of image i is a
positive for copy 0 of image i (the anchor), and copy v of image i + 1 (mod B) is its
negative, giving B * (V - 1) triplets per step.

The geometric augmentation is one projective transform per copy (rotation, scale and
shift composed), so a copy costs one resampling of the image region, not three.
google/revisiting-self-supervised's re-implementation makes 8 copies and turns them
grayscale with probability 0.66; both are options (`num_views`, `grayscale_prob`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import color
from mtssl_tf.tasks import base

# tf.random's default RNG algorithm, chosen per device (random_ops_util.Algorithm.AUTO_SELECT).
_AUTO_SELECT = 3


@dataclasses.dataclass
class ExemplarConfig(base.TaskConfig):
  """Exemplar task.

  Attributes:
    patch_size: side of each copy fed to the trunk.
    region_fraction: side of the source region as a fraction of the shorter image side.
    num_views: copies per image (revisiting-self-supervised: 8; at least 2).
    max_rotation: maximum rotation in degrees (Dosovitskiy: 20).
    scale_range: (min, max) zoom of a copy relative to the region (Dosovitskiy: 0.7-1.4).
    max_shift: maximum translation as a fraction of the patch (Dosovitskiy: 0.2).
    brightness: maximum brightness delta (images in [0, 1]).
    contrast_range: (min, max) contrast factor.
    saturation_range: (min, max) saturation factor.
    max_hue: maximum hue delta (fraction of the colour circle; Dosovitskiy: 0.1).
    grayscale_prob: probability a copy is made gray (paper: 0; revisiting code: 0.66).
    margin: triplet margin M (paper: 0.5).
    embedding_size: output size of the head (revisiting code: 1000).
    hidden_units: the head's hidden layer.
  """

  patch_size: int = 96
  region_fraction: float = 0.6
  num_views: int = 8
  max_rotation: float = 20.0
  scale_range: Tuple[float, ...] = (0.7, 1.4)
  max_shift: float = 0.2
  brightness: float = 0.2
  contrast_range: Tuple[float, ...] = (0.6, 1.4)
  saturation_range: Tuple[float, ...] = (0.5, 1.5)
  max_hue: float = 0.1
  grayscale_prob: float = 0.0
  margin: float = 0.5
  embedding_size: int = 1000
  hidden_units: int = 1024
  batch_size: int = 8

  def validate(self) -> None:
    super().validate()
    if self.num_views < 2:
      raise ConfigError(f'exemplar.num_views: need at least 2 copies per image, got {self.num_views}')
    if not 0 < self.region_fraction <= 1:
      raise ConfigError(f'exemplar.region_fraction: must be in (0, 1], got {self.region_fraction}')
    for key in ('scale_range', 'contrast_range', 'saturation_range'):
      low, high = getattr(self, key)
      if not 0 < low <= high:
        raise ConfigError(f'exemplar.{key}: need 0 < min <= max, got {[low, high]}')
    if not 0 <= self.grayscale_prob <= 1:
      raise ConfigError(f'exemplar.grayscale_prob: must be in [0, 1], got {self.grayscale_prob}')
    if self.margin < 0:
      raise ConfigError(f'exemplar.margin: must be >= 0, got {self.margin}')


def cosine_distance(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """1 - cos(x, y) along the last axis, in float32."""
  x = tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)
  y = tf.math.l2_normalize(tf.cast(y, tf.float32), axis=-1)
  return 1.0 - tf.reduce_sum(x * y, axis=-1)


def triplet_loss(anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, margin: float) -> tf.Tensor:
  """Mean over triplets of max(D(a, p) - D(a, n) + margin, 0), D the cosine distance."""
  return tf.reduce_mean(tf.nn.relu(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin))


def make_triplets(embeddings: tf.Tensor, num_views: int):
  """Splits [B * V, E] embeddings (image-major) into anchor, positive, negative [B * (V-1), E]."""
  views = tf.reshape(embeddings, [-1, num_views, embeddings.shape[-1]])
  anchor = tf.repeat(views[:, :1], num_views - 1, axis=1)
  positive = views[:, 1:]
  negative = tf.roll(views, shift=-1, axis=0)[:, 1:]  # Same copy index, next image.
  flat = lambda t: tf.reshape(t, [-1, embeddings.shape[-1]])  # noqa: E731
  return flat(anchor), flat(positive), flat(negative)


def uniform_per_seed(seeds, low: float, high: float, shape=()) -> tf.Tensor:
  """[len(seeds), *shape]: `tf.random.stateless_uniform(shape, seed, low, high)` for each seed, stacked.

  The same values: each seed's raw draw is the one stateless_uniform makes (its key and
  counter, TF's auto-selected algorithm), and the affine map to [low, high) is the same
  float32 multiply and add, applied once to all draws instead of once per draw.
  """
  raw = []
  for seed in seeds:
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    raw.append(tf.raw_ops.StatelessRandomUniformV2(shape=shape, key=key, counter=counter, alg=_AUTO_SELECT))
  low, high = tf.constant(low, tf.float32), tf.constant(high, tf.float32)
  return tf.stack(raw) * (high - low) + low


class ExemplarTask(base.Task):
  """Pseudo-classes of augmented copies, trained with a cosine triplet loss."""

  name = 'exemplar'
  config_class = ExemplarConfig

  @classmethod
  def trunk_input_size(cls, config) -> int:
    return config.patch_size

  def _transforms(self, region_size: tf.Tensor, offset: tf.Tensor, seeds) -> tf.Tensor:
    """[V, 8] projective transforms mapping output pixels to image pixels, one per copy.

    Each copy's rotation, zoom and shift are drawn from its own seed; the matrices are
    then built for all copies at once.
    """
    c = self.config
    per_copy = [base.stateless_seeds(seed, 3) for seed in seeds]
    angle = uniform_per_seed([s[0] for s in per_copy], -c.max_rotation, c.max_rotation) * (math.pi / 180.0)
    log_zoom = uniform_per_seed([s[1] for s in per_copy], math.log(c.scale_range[0]), math.log(c.scale_range[1]))
    shift_y, shift_x = tf.unstack(uniform_per_seed([s[2] for s in per_copy], -c.max_shift, c.max_shift, [2]), axis=1)
    # Output pixel (x, y) -> centred, scaled to the region, rotated, zoomed, shifted.
    scale = region_size / (c.patch_size * tf.exp(log_zoom))
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    half_out = c.patch_size / 2.0
    centre_y = offset[0] + region_size / 2.0 + shift_y * region_size
    centre_x = offset[1] + region_size / 2.0 + shift_x * region_size
    tx = centre_x - cos * half_out + sin * half_out
    ty = centre_y - sin * half_out - cos * half_out
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, tx, sin, cos, ty, zeros, zeros], axis=1)

  def _colors(self, views: tf.Tensor, seeds) -> tf.Tensor:
    """Colour jitter of each copy [V, P, P, 3] with its own seed: brightness, contrast, saturation, hue, gray.

    Each copy's factors are drawn from its seed as `tf.image.stateless_random_*` draw
    them; brightness, contrast (AdjustContrastv2's formula: channel means kept), gray and
    clipping then run on all copies at once. Saturation and hue stay TF's fused kernels,
    which take one factor per call.
    """
    c = self.config
    per_copy = [base.stateless_seeds(seed, 5) for seed in seeds]

    def factors(index, low, high):  # [V, 1, 1, 1]: each copy's draw from its seed `index`.
      return uniform_per_seed([s[index] for s in per_copy], low, high)[:, None, None, None]

    # Each jitter is skipped when its range is empty (tf.image rejects lower == upper).
    if c.brightness > 0:
      views = views + factors(0, -c.brightness, c.brightness)
    if c.contrast_range[0] < c.contrast_range[1]:
      mean = tf.reduce_mean(views, axis=[1, 2], keepdims=True)
      views = (views - mean) * factors(1, c.contrast_range[0], c.contrast_range[1]) + mean
    saturation = c.saturation_range[0] < c.saturation_range[1]
    if saturation or c.max_hue > 0:
      if c.max_hue > 0.5:
        raise ValueError(f'exemplar.max_hue: must be <= 0.5 (half the colour circle), got {c.max_hue}')
      copies = tf.unstack(views, num=len(seeds))
      if saturation:
        scales = tf.unstack(factors(2, *c.saturation_range)[:, 0, 0, 0])
        copies = [tf.image.adjust_saturation(copy, scale) for copy, scale in zip(copies, scales)]
      if c.max_hue > 0:
        deltas = tf.unstack(factors(3, -c.max_hue, c.max_hue)[:, 0, 0, 0])
        copies = [tf.image.adjust_hue(copy, delta) for copy, delta in zip(copies, deltas)]
      views = tf.stack(copies)
    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(views))
    views = tf.where(factors(4, 0.0, 1.0) < c.grayscale_prob, gray, views)
    return tf.clip_by_value(views, 0.0, 1.0)

  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    c = self.config
    # Pixels stay on the 0-255 scale through the (linear) resampling; only the copies are rescaled.
    image = tf.cast(example['image'], tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    seeds = base.stateless_seeds(seed, 2 * c.num_views + 1)
    region = tf.reduce_min(shape) * c.region_fraction
    offset = tf.random.stateless_uniform([2], seeds[0]) * (shape - region)
    transforms = self._transforms(region, offset, seeds[1 : c.num_views + 1])
    # One resampling per copy from the one image: the kernel pairs images and transforms
    # one to one, and repeating a full-size image per copy costs more than the copies.
    views = tf.concat(
      [
        tf.raw_ops.ImageProjectiveTransformV3(
          images=image[None],
          transforms=transforms[v : v + 1],
          output_shape=[c.patch_size, c.patch_size],
          fill_value=127.5,  # 0.5 on the [0, 1] scale (unused by REFLECT, kept for the record).
          interpolation='BILINEAR',
          fill_mode='REFLECT',
        )
        for v in range(c.num_views)
      ],
      axis=0,
    ) * (1.0 / 255.0)
    views = self._colors(views, seeds[c.num_views + 1 :])
    if c.harmonize:
      views = color.harmonize(views)
    else:
      views = views * 2.0 - 1.0
    views.set_shape([c.num_views, c.patch_size, c.patch_size, 3])
    return {'views': views}

  def trunk_images(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    p = self.config.patch_size
    return tf.reshape(batch['views'], [-1, p, p, 3])

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    c = self.config
    return ExemplarHead(c.hidden_units, c.embedding_size, name=f'{self.name}_head', dtype=dtype)

  def loss(self, outputs, batch):
    return triplet_loss(*make_triplets(outputs, self.config.num_views), self.config.margin)

  def metrics(self):
    return {'loss': tf.keras.metrics.Mean(), 'triplet_accuracy': tf.keras.metrics.Mean()}

  def update_metrics(self, metrics, outputs, batch, loss):
    metrics['loss'].update_state(loss)
    metrics['triplet_accuracy'].update_state(self.batch_metrics(outputs, batch)['triplet_accuracy'])

  def batch_metrics(self, outputs, batch):
    anchor, positive, negative = make_triplets(outputs, self.config.num_views)
    # A triplet is solved when the positive is nearer than the negative.
    solved = cosine_distance(anchor, positive) < cosine_distance(anchor, negative)
    return {'triplet_accuracy': tf.reduce_mean(tf.cast(solved, tf.float32))}

  def image_summaries(self, outputs, batch):
    views = batch['views'][:4]  # [4, V, P, P, 3] in [-1, 1] (or harmonized).
    shown = tf.cast(tf.clip_by_value((views + 1.0) * 127.5, 0, 255), tf.uint8)
    return {'copies': tf.concat(tf.unstack(shown, axis=1), axis=2)}


class ExemplarHead(tf.keras.layers.Layer):
  """Global average pool, a hidden layer, and the embedding (compared by cosine)."""

  def __init__(self, hidden_units: int, embedding_size: int, **kwargs):
    """Creates the head."""
    super().__init__(**kwargs)
    self.pool = tf.keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
    self.hidden = tf.keras.layers.Dense(hidden_units, activation='relu', dtype=self.dtype_policy)
    self.embed = tf.keras.layers.Dense(embedding_size, dtype=self.dtype_policy)

  def call(self, features, training=None):
    return self.embed(self.hidden(self.pool(features)))
