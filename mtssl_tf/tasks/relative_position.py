"""Relative position (Doersch et al. 2015), as used by Doersch & Zisserman 2017.

Two patches from adjacent cells of a 3x3 grid; the head, seeing both through the
shared trunk, predicts which of the 8 neighbours the second is of the first. Labels
follow the reference code's layout (0-based here):

    0 1 2
    3 . 4
    5 6 7

Defaults are cdoersch/deepcontext's (train.py): 96 px patches, a 48 px gap, +-7 px
jitter, images rescaled to 150k-450k pixels, a third of patches downsampled to as
little as 10x10 and back up, colour dropping (against chromatic aberration), and
per-patch normalisation (mean removed, divided by the RMS). With `harmonize`, colour
dropping is replaced by colorization's input (L of Lab replicated), Doersch &
Zisserman §3.3.

Colour dropping keeps one random channel and replaces the other two with faint noise.
Doersch et al. 2015 (§3.1, avoiding "trivial" solutions) use Gaussian noise whose
standard deviation is ~1/100 of the kept channel's: the default ('gaussian_paper').
deepcontext's train.py (`prep_image`) instead fills them with U(0, 1) - 0.5 on the
0-255 scale (1/255 of that on our [0, 1] scale), 'deepcontext'. Both remove the
kept channel's mean, as `prep_image` does, so every channel is centred.

`color_projection` is the paper's other remedy (Doersch et al. 2015 §3.1, "projection"; Noroozi
et al. 2018's "Context-ColorProjection" teacher): every pixel's colour c becomes B c with
B = I - a^T a / (a a^T), a = [-1, 2, -1] the "green-magenta color axis" in RGB, i.e. its
component along a is subtracted, shifting green and magenta toward grey (the lens shrinks one
channel, commonly green, toward the image centre relative to the others, a cue to a patch's
absolute position). Grey [1, 1, 1] and red-blue [1, 0, -1] are orthogonal to a and kept. No
revision of cdoersch/deepcontext has it (its train.py `prep_image` only drops colours), so this
follows the paper alone. The paper projects before the downsampling; both are linear (one
per-pixel channel mix, one per-channel spatial filter) and commute, so it runs where colour
dropping does. The paper's mean subtraction is `normalize_patch`'s, as for every mode: no
channel is centred on its own, so a patch keeps its mean colour in the projected plane.

The head follows deepcontext's network (train.py `gen_net`, Doersch et al. 2015
Fig. 3), keeping each patch's spatial layout: pool5 (3x3 max pooling, stride 2)
of each patch's map, flattened into fc6 (per patch, shared weights, batch-normalised
without scale or shift like Caffe's BatchNorm layer), the pair's fc6 concatenated
into fc7 (batch-normalised), fc8 and the 8-way fc9. At output stride 16 a 96 px
patch gives a 6x6 map, 3x3 after pool5: deepcontext's pool5 size. 'pooled' is a
lighter, documented alternative (global average pooling of each patch first).

On AlexNet / VGG16 (Noroozi et al. 2018's Context rows) the trunk's final endpoint is its
own pool5, so the head skips its pool and starts at fc6, as deepcontext's pair network
does above its conv stack. A 96 px patch gives VGG16 a 3x3 pool5 (deepcontext's size);
CaffeNet's unpadded conv1 gives AlexNet a 2x2 one (deepcontext's own AlexNet pads conv1
by 5, which this project's shared AlexNet does not). `patch_scale` is deepcontext's x50
after normalisation (`prep_image`: "roughly the same as the usual AlexNet inputs"), for
networks without BatchNorm at the input layers.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import color, resample
from mtssl_tf.tasks import base
from mtssl_tf.trunk import registry

# (row, col) offset of the second patch for each label.
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
NUM_CLASSES = len(OFFSETS)
# Noise in the dropped channels (see the module docstring): the 2015 paper's, or deepcontext's.
COLOR_DROP_NOISE = ('gaussian_paper', 'deepcontext')
# Doersch et al. 2015 §3.1: the dropped channels' noise std is ~1/100 of the kept channel's.
PAPER_NOISE_FRACTION = 0.01
# deepcontext train.py prep_image: U(0, 1) - 0.5 on the 0-255 scale; our patches are in [0, 1]. Next to
# a natural patch's channel (std ~50 grey levels) that is ~1/170 of its std, near the paper's 1/100.
DEEPCONTEXT_NOISE_SCALE = 1.0 / 255.0
HEAD_LAYOUTS = ('spatial', 'pooled')
# Doersch et al. 2015 §3.1 ("projection"): a = [-1, 2, -1], the "green-magenta color axis" in RGB space.
GREEN_MAGENTA_AXIS = (-1.0, 2.0, -1.0)


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
    color_dropping: keep one random channel, replace the others with noise.
    color_drop_noise: that noise: 'gaussian_paper' (Doersch et al. 2015: Gaussian,
      std 1/100 of the kept channel's) or 'deepcontext' (the authors' code: uniform,
      width 1/255 of the [0, 1] range).
    color_projection: instead of dropping, remove each pixel's green-magenta component
      (Doersch et al. 2015's "projection", `project_colors`); needs `color_dropping: false`
      and no `harmonize`.
    head_layout: 'spatial' (deepcontext's: pool5, flatten, fc6 per patch, fc7 and
      fc8 on the pair) or 'pooled' (each patch's map globally averaged after a 1x1
      projection to hidden_units / 2, then one pair layer: cheaper, 19M instead of
      88M head parameters on a 96 px patch's 6x6x1024 map at 4096 units, but blind
      to where in a patch a feature is).
    hidden_units: width of fc6, fc7 and fc8 (deepcontext: 4096); for 'pooled', of the
      pair layer.
    patch_scale: each normalised patch is multiplied by this (deepcontext's prep_image: 50;
      1 where the trunk normalises its input, as ResNet-v2 and the BatchNorm conv nets do).
  """

  patch_size: int = 96
  gap: int = 48
  jitter: int = 7
  min_area: int = 150_000
  max_area: int = 450_000
  downsample_prob: float = 1.0 / 3.0
  min_downsample: int = 10
  color_dropping: bool = True
  color_drop_noise: str = 'gaussian_paper'
  color_projection: bool = False
  head_layout: str = 'spatial'
  hidden_units: int = 4096
  patch_scale: float = 1.0
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
    if self.color_drop_noise not in COLOR_DROP_NOISE:
      raise ConfigError(
        f'relative_position.color_drop_noise: must be one of {COLOR_DROP_NOISE}, got {self.color_drop_noise!r}'
      )
    if self.color_projection and self.color_dropping:
      raise ConfigError(
        'relative_position.color_projection: exclusive with color_dropping (on by default); '
        'set relative_position.color_dropping: false to project colours instead of dropping them'
      )
    if self.color_projection and self.harmonize:
      raise ConfigError(
        'relative_position.color_projection: exclusive with harmonize (which feeds grey L, with no colour to project)'
      )
    if self.head_layout not in HEAD_LAYOUTS:
      raise ConfigError(f'relative_position.head_layout: must be one of {HEAD_LAYOUTS}, got {self.head_layout!r}')
    if self.hidden_units < 2:
      raise ConfigError(f'relative_position.hidden_units: must be >= 2, got {self.hidden_units}')
    if self.patch_scale <= 0:
      raise ConfigError(f'relative_position.patch_scale: must be positive, got {self.patch_scale}')


def normalize_patch(patch: tf.Tensor) -> tf.Tensor:
  """Removes the patch mean and divides by its RMS (deepcontext's per-patch normalisation)."""
  patch = patch - tf.reduce_mean(patch)
  return patch / tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(patch))), 1e-3)


def drop_colors(patch: tf.Tensor, seed: tf.Tensor, noise: str = 'gaussian_paper') -> tf.Tensor:
  """Keeps one random channel of a [P, P, 3] float patch in [0, 1]; the others become faint noise.

  Args:
    patch: [P, P, 3] float32 in [0, 1].
    seed: int [2] stateless seed.
    noise: 'gaussian_paper' (zero-mean Gaussian, std `PAPER_NOISE_FRACTION` times the
      kept channel's) or 'deepcontext' (U(-0.5, 0.5) * `DEEPCONTEXT_NOISE_SCALE`).

  Returns:
    [P, P, 3]: the kept channel minus its mean (as deepcontext's prep_image), and
    zero-mean noise in the other two.
  """
  if noise not in COLOR_DROP_NOISE:
    raise ValueError(f'relative_position.color_drop_noise: must be one of {COLOR_DROP_NOISE}, got {noise!r}')
  seeds = base.stateless_seeds(seed, 2)
  keep = tf.random.stateless_uniform([], seeds[0], 0, 3, dtype=tf.int32)
  kept = tf.gather(patch, keep, axis=-1)
  kept = kept - tf.reduce_mean(kept)
  if noise == 'gaussian_paper':
    scale = PAPER_NOISE_FRACTION * tf.sqrt(tf.reduce_mean(tf.square(kept)))  # The kept channel's std.
    filler = tf.random.stateless_normal(tf.shape(patch), seeds[1], dtype=patch.dtype) * scale
  else:
    filler = (tf.random.stateless_uniform(tf.shape(patch), seeds[1], dtype=patch.dtype) - 0.5) * DEEPCONTEXT_NOISE_SCALE
  mask = tf.one_hot(keep, 3, dtype=patch.dtype)
  return kept[..., None] * mask + filler * (1.0 - mask)


def project_colors(image: tf.Tensor) -> tf.Tensor:
  """Removes every pixel's component along the green-magenta axis (Doersch et al. 2015's "projection").

  c -> B c, B = I - a^T a / (a a^T), a = `GREEN_MAGENTA_AXIS`, computed as c - (a . c / a . a) a
  (B is symmetric and idempotent; a . (B c) = 0, and grey and red-blue components are kept).

  Args:
    image: [..., 3] float RGB, any scale (the map is linear).

  Returns:
    The same shape and dtype.

  Raises:
    ValueError: the last axis is known and not 3.
  """
  if image.shape.rank and image.shape[-1] not in (None, 3):
    raise ValueError(f'relative_position.color_projection: needs RGB (last axis 3), got shape {image.shape}')
  axis = tf.constant(GREEN_MAGENTA_AXIS, image.dtype)
  along = tf.reduce_sum(image * axis, axis=-1, keepdims=True) / tf.reduce_sum(axis * axis)
  return image - along * axis


class RelativePositionTask(base.Task):
  """Predict the relative position of two patches (8-way)."""

  name = 'relative_position'
  config_class = RelativePositionConfig

  @classmethod
  def trunk_input_size(cls, config) -> int:
    return config.patch_size

  @property
  def min_side(self) -> int:
    """Smallest image side from which both patches of any label can be cut."""
    c = self.config
    return 3 * c.patch_size + 2 * c.gap + 2 * c.jitter

  def _rescaled_size(self, image_shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """int32 [2]: the size the image is rescaled to (a random area, never below `min_side`)."""
    c = self.config
    area = tf.random.stateless_uniform([], seed, float(c.min_area), float(c.max_area))
    shape = tf.cast(image_shape[:2], tf.float32)
    scale = tf.sqrt(area / (shape[0] * shape[1]))
    # Never below the size the grid needs, whatever the area range says.
    scale = tf.maximum(scale, float(self.min_side) / tf.reduce_min(shape))
    return tf.cast(tf.math.ceil(shape * scale), tf.int32)

  def _maybe_downsample(self, patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    c = self.config
    seeds = base.stateless_seeds(seed, 2)
    side = tf.random.stateless_uniform([], seeds[0], c.min_downsample, c.patch_size + 1, dtype=tf.int32)
    apply = tf.random.stateless_uniform([], seeds[1]) < c.downsample_prob

    def shrink():
      small = tf.image.resize(patch, [side, side], antialias=True)
      return tf.image.resize(small, [c.patch_size, c.patch_size])

    # A branch, not a select: two patches in three skip both resizes.
    return tf.cond(apply, shrink, lambda: patch)

  def _finish_patch(self, patch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    seeds = base.stateless_seeds(seed, 2)
    patch = self._maybe_downsample(patch, seeds[0])
    if self.config.harmonize:
      patch = color.harmonize(patch)
    elif self.config.color_projection:
      patch = project_colors(patch)  # Commutes with the downsampling above (module docstring).
    elif self.config.color_dropping:
      patch = drop_colors(patch, seeds[1], self.config.color_drop_noise)
    patch = normalize_patch(patch)
    return patch * self.config.patch_scale if self.config.patch_scale != 1.0 else patch

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
    image = example['image']
    size = self._rescaled_size(tf.shape(image), seeds[0])
    label, first, second = self.sample_positions(size, seeds[1])
    # Both patches of the rescaled image (antialiased, from [0, 1] pixels), resampled
    # alone: the rest of the rescaled image is never computed.
    windows = resample.resize_windows(image, size, tf.stack([first, second]), c.patch_size) * (1.0 / 255.0)
    patches = tf.stack([self._finish_patch(windows[i], s) for i, s in ((0, seeds[2]), (1, seeds[3]))])
    patches.set_shape([2, c.patch_size, c.patch_size, 3])
    return {'patches': patches, 'label': label}

  def trunk_images(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    p = self.config.patch_size
    # All patches through the trunk as one batch (Doersch & Zisserman §3.1): 2B images.
    return tf.reshape(batch['patches'], [-1, p, p, 3])

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    c = self.config
    # A conv trunk's final endpoint may already be its pool5 (the module docstring).
    pool = not registry.final_endpoint(self.trunk_config).startswith('pool')
    return RelativePositionHead(c.hidden_units, c.head_layout, pool=pool, name=f'{self.name}_head', dtype=dtype)

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
  """Siamese head: each patch's features, then the pair classified together (see the module docstring)."""

  def __init__(self, hidden_units: int, layout: str = 'spatial', pool: bool = True, **kwargs):
    """Creates the head.

    Args:
      hidden_units: width of fc6, fc7 and fc8 ('spatial'), or of the pair layer ('pooled').
      layout: 'spatial' (deepcontext's) or 'pooled'.
      pool: 'spatial' starts with deepcontext's pool5 (False: the trunk's final endpoint is one).
      **kwargs: Keras layer arguments (name, dtype).

    Raises:
      ValueError: an unknown layout.
    """
    super().__init__(**kwargs)
    if layout not in HEAD_LAYOUTS:
      raise ValueError(f'relative_position.head_layout: must be one of {HEAD_LAYOUTS}, got {layout!r}')
    self.layout = layout
    policy = self.dtype_policy
    if layout == 'spatial':
      # deepcontext train.py: pool5 = 3x3 max pooling, stride 2 (Caffe rounds up; 'same' does too).
      self.pool = tf.keras.layers.MaxPooling2D(3, 2, padding='same', dtype=policy) if pool else None
      self.flatten = tf.keras.layers.Flatten(dtype=policy)
      # fc6 and fc7 are followed by Caffe's BatchNorm layer, which has no scale or shift
      # (and makes the fc bias moot); fc8 has neither.
      self.fc6 = tf.keras.layers.Dense(hidden_units, use_bias=False, dtype=policy)
      self.bn6 = tf.keras.layers.BatchNormalization(center=False, scale=False, dtype=policy)
      self.fc7 = tf.keras.layers.Dense(hidden_units, use_bias=False, dtype=policy)
      self.bn7 = tf.keras.layers.BatchNormalization(center=False, scale=False, dtype=policy)
      self.fc8 = tf.keras.layers.Dense(hidden_units, activation='relu', dtype=policy)
    else:
      self.project = tf.keras.layers.Conv2D(hidden_units // 2, 1, activation='relu', dtype=policy)
      self.pool = tf.keras.layers.GlobalAveragePooling2D(dtype=policy)
      self.pair = tf.keras.layers.Dense(hidden_units, activation='relu', dtype=policy)
    self.classify = tf.keras.layers.Dense(NUM_CLASSES, dtype=policy)

  def call(self, features, training=None):
    """[2B, h, w, C] features of consecutive patch pairs -> [B, 8] logits."""
    if self.layout == 'spatial':
      pooled = self.pool(features) if self.pool is not None else features
      per_patch = tf.nn.relu(self.bn6(self.fc6(self.flatten(pooled)), training=training))
    else:
      per_patch = self.pool(self.project(features))
    pairs = tf.reshape(per_patch, [-1, 2 * per_patch.shape[-1]])  # Consecutive patches form a pair.
    if self.layout == 'spatial':
      hidden = tf.nn.relu(self.bn7(self.fc7(pairs), training=training))
      return self.classify(self.fc8(hidden))
    return self.classify(self.pair(pairs))
