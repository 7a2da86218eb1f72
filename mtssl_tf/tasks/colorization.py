"""Colorization (Zhang et al. 2016), as used by Doersch & Zisserman 2017.

The trunk sees only the lightness L of a Lab image (replicated to three channels,
the same input `color.harmonize` gives other tasks) and predicts, for every 8x8
cell, a distribution over 313 quantised ab colours: the multiples of 10 whose +-10
box meets the sRGB gamut (`assets/colorization`). The target of a cell is the ab of
one pixel, its top-left one (the ab image subsampled by 8, as Zhang's code subsamples
by 4; `target: mean` averages the cell instead), soft-encoded over its
`num_neighbors` nearest bins with a Gaussian (sigma 5). Each
cell's cross-entropy is weighted by the rebalancing weight of its nearest bin, so
rare (saturated) colours count more, and images whose |a|, |b| never exceed 5 are
dropped (Zhang's NonGrayMask). Predictions are decoded by the annealed mean
(softmax at temperature 0.38, expectation over the bin centres).

The loss encodes targets itself, so a batch only carries {'image': [S, S, 3] the L
input in [-1, 1], 'ab_target': [S/8, S/8, 2] float32 ab per cell}.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.data import color
from mtssl_tf.tasks import base

LABEL_STRIDE = 8
NUM_BINS = 313
GRID_STEP = 10
GRID_MAX = 110  # Bins live on the 23 x 23 grid of multiples of 10 in [-110, 110]^2.
# How a cell's ab target is taken from its 8x8 pixels (`ColorizationConfig.target`).
TARGETS = ('subsample', 'mean')
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets', 'colorization')


@dataclasses.dataclass
class ColorizationConfig(base.TaskConfig):
  """Colorization task. Defaults are the paper's; the authors' code differs where noted.

  Attributes:
    crop_size: side of the random training crop, a multiple of 8 (Zhang trained at 176).
    min_scale: the crop covers a random fraction in [min_scale, 1] of the shorter side
      before being resized to `crop_size` (Zhang: a fixed 176 crop of a 256 image).
    flip: random horizontal flips (Zhang: mirror).
    output_stride: trunk output stride for this task (8 = the label resolution).
    hidden_units: width of the head's hidden 1x1 convolution (Zhang's conv8: 256).
    target: how each cell's ab target is read from its pixels. 'subsample' (default)
      takes the cell's top-left pixel, as richzhang/colorization does: its
      models/colorization_train_val_v2.prototxt makes `data_ab_ss` with a fixed 1x1
      convolution of stride 4 and weight 1 (one pixel per cell; the average pooling
      beside it is commented out) before the NNEncLayer soft-encodes it. So each target
      is a colour that occurs in the image. 'mean' averages the cell's ab first (the
      choice this project made before; a cell of two colours then gets a third one,
      and a smoother, less saturated target).
    num_neighbors: bins each target is soft-encoded over (paper: 5; code: NN=10).
    sigma: std of the Gaussian over ab distance in the soft encoding (5).
    rebalance: weight each cell by its nearest bin's class-rebalancing weight.
    rebalance_lambda: mix of prior and uniform in the weights (code's gamma: 0.5).
    gray_threshold: images whose |a| and |b| never exceed this give no loss (code: 5).
    temperature: annealed-mean temperature for decoding (code: logits * 2.606 = 1/0.38).
    prior_path: .npy prior over the 313 bins (`tools/compute_color_prior.py`); empty
      means the shipped ImageNet prior of Zhang et al.
  """

  crop_size: int = 224
  min_scale: float = 0.6
  flip: bool = True
  output_stride: int = 8
  hidden_units: int = 256
  target: str = 'subsample'
  num_neighbors: int = 5
  sigma: float = 5.0
  rebalance: bool = True
  rebalance_lambda: float = 0.5
  gray_threshold: float = 5.0
  temperature: float = 0.38
  prior_path: str = ''

  def validate(self) -> None:
    super().validate()
    if self.crop_size < LABEL_STRIDE or self.crop_size % LABEL_STRIDE:
      raise ConfigError(f'colorization.crop_size: must be a positive multiple of 8, got {self.crop_size}')
    if not 0 < self.min_scale <= 1:
      raise ConfigError(f'colorization.min_scale: must be in (0, 1], got {self.min_scale}')
    if self.output_stride not in (8, 16):
      raise ConfigError(f'colorization.output_stride: must be 8 or 16, got {self.output_stride}')
    if self.target not in TARGETS:
      raise ConfigError(f'colorization.target: must be one of {TARGETS}, got {self.target!r}')
    if not 1 <= self.num_neighbors <= NUM_BINS:
      raise ConfigError(f'colorization.num_neighbors: must be in [1, {NUM_BINS}], got {self.num_neighbors}')
    if self.sigma <= 0:
      raise ConfigError(f'colorization.sigma: must be positive, got {self.sigma}')
    if not 0 <= self.rebalance_lambda <= 1:
      raise ConfigError(f'colorization.rebalance_lambda: must be in [0, 1], got {self.rebalance_lambda}')
    if self.gray_threshold < 0:
      raise ConfigError(f'colorization.gray_threshold: must be >= 0, got {self.gray_threshold}')
    if self.temperature <= 0:
      raise ConfigError(f'colorization.temperature: must be positive, got {self.temperature}')


# ----- bins, prior and rebalancing weights (numpy) -----


def load_bins() -> np.ndarray:
  """The 313 ab bin centres, int64 [313, 2], ordered by a then b (first row (-90, 50))."""
  return np.load(os.path.join(ASSET_DIR, 'pts_in_hull.npy'))


def load_prior(path: str = '') -> np.ndarray:
  """A prior over the bins, float64 [313] summing to 1 (empty path: the shipped one)."""
  with tf.io.gfile.GFile(path or os.path.join(ASSET_DIR, 'prior_probs.npy'), 'rb') as f:
    prior = np.load(f).astype(np.float64)
  if prior.shape != (NUM_BINS,) or not np.all(prior >= 0) or prior.sum() <= 0:
    raise ConfigError(f'colorization.prior_path: {path} must hold {NUM_BINS} non-negative values')
  return prior / prior.sum()


def rebalance_weights(prior: np.ndarray, lam: float = 0.5) -> np.ndarray:
  """w = 1 / ((1 - lam) p + lam / Q), scaled so that sum_q p_q w_q = 1 (Zhang eq. 4)."""
  weights = 1.0 / ((1.0 - lam) * prior + lam / len(prior))
  return weights / np.sum(prior * weights)


def smooth_prior(counts: np.ndarray, bins: np.ndarray, sigma: float = 5.0, floor: float = 1e-12) -> np.ndarray:
  """Normalised histogram, each bin's mass spread by a Gaussian over ab (Zhang: sigma 5).

  The spread of every source bin is normalised over the 313 bins, so mass is kept
  inside the gamut; `sigma` 0 skips smoothing. A tiny floor keeps every bin positive.
  """
  prior = np.asarray(counts, np.float64) / max(float(np.sum(counts)), 1.0)
  if sigma > 0:
    dist2 = np.sum((bins[:, None, :] - bins[None, :, :]).astype(np.float64) ** 2, axis=-1)
    kernel = np.exp(-dist2 / (2.0 * sigma**2))
    prior = (kernel / kernel.sum(axis=0, keepdims=True)) @ prior
  prior = np.maximum(prior, floor)
  return prior / prior.sum()


def _grid_to_bin(bins: np.ndarray) -> np.ndarray:
  """[23 * 23] int32: for every grid point, the index of the nearest of the 313 bins."""
  axis = np.arange(-GRID_MAX, GRID_MAX + 1, GRID_STEP)
  grid = np.stack(np.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
  return np.argmin(np.sum((grid[:, None] - bins[None]) ** 2, axis=-1), axis=1).astype(np.int32)


# ----- encoding and decoding (TF) -----


def soft_encode(ab: tf.Tensor, bins: tf.Tensor, num_neighbors: int = 5, sigma: float = 5.0):
  """Soft-encodes ab values over their nearest bins.

  Args:
    ab: [..., 2] float ab values.
    bins: [313, 2] float32 bin centres.
    num_neighbors: K, bins each value is spread over.
    sigma: Gaussian std over the ab distance.

  Returns:
    (indices int32 [..., K], nearest first; weights float32 [..., K] summing to 1).
  """
  dist2 = tf.reduce_sum(tf.square(tf.cast(ab, tf.float32)[..., None, :] - bins), axis=-1)
  neg_dist2, indices = tf.math.top_k(-dist2, k=num_neighbors)
  # Softmax of -d^2 / 2 sigma^2 over the K neighbours = normalised Gaussian, but stable.
  return indices, tf.nn.softmax(neg_dist2 / (2.0 * sigma**2), axis=-1)


def dense_targets(indices: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """[..., K] indices and weights -> [..., 313] soft target distribution."""
  return tf.reduce_sum(tf.one_hot(indices, NUM_BINS) * weights[..., None], axis=-2)


def annealed_mean(logits: tf.Tensor, bins: tf.Tensor, temperature: float = 0.38) -> tf.Tensor:
  """[..., 313] logits -> [..., 2] ab: expectation of the bins under softmax(logits / T)."""
  probs = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
  return tf.tensordot(probs, bins, axes=1)


def cell_targets(ab: tf.Tensor, target: str = 'subsample') -> tf.Tensor:
  """[H, W, 2] per-pixel ab -> [H / 8, W / 8, 2] one ab per 8x8 label cell.

  Args:
    ab: the ab channels of the Lab image, H and W multiples of 8.
    target: 'subsample' reads each cell's top-left pixel (richzhang/colorization's
      stride-4 1x1 convolution `data_ab_ss`, at our stride 8); 'mean' averages the cell.
  """
  if target == 'subsample':
    return ab[::LABEL_STRIDE, ::LABEL_STRIDE]
  if target == 'mean':
    return tf.nn.avg_pool2d(ab[None], LABEL_STRIDE, LABEL_STRIDE, 'VALID')[0]
  raise ValueError(f'colorization target must be one of {TARGETS}, got {target!r}')


def nongray_mask(ab: tf.Tensor, threshold: float = 5.0) -> tf.Tensor:
  """[N, h, w, 2] ab -> [N] float32: 1 where some |a| or |b| of the image exceeds `threshold`."""
  return tf.cast(tf.reduce_any(tf.abs(ab) > threshold, axis=[1, 2, 3]), tf.float32)


def ab_histogram(rgb: tf.Tensor, bins: np.ndarray, stride: int = 1) -> tf.Tensor:
  """Counts of the nearest bin of each pixel of one image, float32 [313].

  The nearest bin is found by rounding ab to the grid of multiples of 10 (for every
  sRGB colour the rounded point is one of the 313), then a lookup.

  Args:
    rgb: [H, W, 3] uint8 image.
    bins: [313, 2] bin centres.
    stride: count every `stride`-th pixel in each axis.
  """
  ab = color.rgb_to_lab(rgb[::stride, ::stride])[..., 1:]
  side = 2 * GRID_MAX // GRID_STEP + 1
  cell = tf.clip_by_value(tf.cast(tf.round(ab / GRID_STEP), tf.int32) + GRID_MAX // GRID_STEP, 0, side - 1)
  nearest = tf.gather(tf.constant(_grid_to_bin(bins)), cell[..., 0] * side + cell[..., 1])
  return tf.cast(tf.math.bincount(tf.reshape(nearest, [-1]), minlength=NUM_BINS, maxlength=NUM_BINS), tf.float32)


def compute_prior(
  dataset: tf.data.Dataset, stride: int = 4, max_images: int = 0, log_every: int = 1000, sigma: float = 5.0
) -> Tuple[np.ndarray, int]:
  """Empirical prior over the bins from a dataset of {'image': uint8 [H, W, 3]}.

  Args:
    dataset: unbatched images (e.g. `images.image_dataset(spec)`).
    stride: pixel subsampling in each axis.
    max_images: stop after this many images (0: the whole dataset).
    log_every: log progress every this many images.
    sigma: Gaussian smoothing over ab (0: none); see `smooth_prior`.

  Returns:
    (prior float64 [313] summing to 1, number of images counted).
  """
  bins = load_bins()
  if max_images:
    dataset = dataset.take(max_images)
  dataset = dataset.map(lambda e: ab_histogram(e['image'], bins, stride), num_parallel_calls=tf.data.AUTOTUNE)
  counts, count = np.zeros(NUM_BINS, np.float64), 0
  for histogram in dataset.as_numpy_iterator():
    counts += histogram
    count += 1
    if log_every and count % log_every == 0:
      logging.info('%d images, %d pixels counted', count, int(counts.sum()))
  if not count:
    raise ValueError('compute_prior: the dataset has no images')
  return smooth_prior(counts, bins, sigma), count


class ColorizationTask(base.Task):
  """Predict the ab colour distribution of each 8x8 cell from L."""

  name = 'colorization'
  config_class = ColorizationConfig

  @classmethod
  def trunk_input_size(cls, config) -> int:
    return config.crop_size

  ALWAYS_HARMONIZED = True  # Its input is L replicated, with or without the switch.

  DENSE_OUTPUT = True

  def __init__(self, config: ColorizationConfig, trunk_output_stride: int = 16, trunk: Optional[TrunkConfig] = None):
    super().__init__(config, trunk_output_stride, trunk)
    self.bins_np = load_bins()
    self.prior = load_prior(config.prior_path)
    self.class_weights_np = rebalance_weights(self.prior, config.rebalance_lambda)
    self._bins = tf.constant(self.bins_np, tf.float32)
    self._class_weights = tf.constant(self.class_weights_np, tf.float32)

  @property
  def output_stride(self) -> int:
    return self.config.output_stride

  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    c = self.config
    seeds = base.stateless_seeds(seed, 3)
    image = example['image']
    shape = tf.shape(image)[:2]
    side = tf.cast(
      tf.cast(tf.reduce_min(shape), tf.float32) * tf.random.stateless_uniform([], seeds[0], c.min_scale, 1.0), tf.int32
    )
    offset = tf.random.stateless_uniform([2], seeds[1], 0, tf.int32.max, dtype=tf.int32) % (shape - side + 1)
    # Crop before converting: only the crop's pixels are cast and scaled to [0, 1].
    image = tf.cast(image[offset[0] : offset[0] + side, offset[1] : offset[1] + side], tf.float32) * (1.0 / 255.0)
    image = tf.image.resize(image, [c.crop_size] * 2)
    if c.flip:
      image = tf.image.stateless_random_flip_left_right(image, seeds[2])
    image = tf.clip_by_value(image, 0.0, 1.0)
    # L / 50 - 1 replicated: exactly `color.harmonize`. Only L is needed at every pixel.
    trunk_input = tf.tile(color.rgb_to_lightness(image) / 50.0 - 1.0, [1, 1, 3])
    trunk_input.set_shape([c.crop_size, c.crop_size, 3])
    if c.target == 'subsample':  # ab of each cell's top-left pixel only: 1/64 of the conversions.
      ab = color.rgb_to_lab(cell_targets(image, c.target))[..., 1:]
    else:
      ab = cell_targets(color.rgb_to_lab(image)[..., 1:], c.target)
    ab.set_shape([c.crop_size // LABEL_STRIDE, c.crop_size // LABEL_STRIDE, 2])
    return {'image': trunk_input, 'ab_target': ab}

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    c = self.config
    return ColorizationHead(c.hidden_units, c.output_stride // LABEL_STRIDE, name=f'{self.name}_head', dtype=dtype)

  def encode(self, ab: tf.Tensor):
    """Soft targets of [N, h, w, 2] ab: (indices, weights), each [N, h, w, K]."""
    return soft_encode(ab, self._bins, self.config.num_neighbors, self.config.sigma)

  def loss(self, outputs, batch):
    ab = batch['ab_target']
    indices, weights = self.encode(ab)
    log_probs = tf.nn.log_softmax(base.cast_logits(outputs), axis=-1)
    cross_entropy = -tf.reduce_sum(weights * tf.gather(log_probs, indices, batch_dims=3), axis=-1)
    if self.config.rebalance:  # The weight of each cell's nearest (= most weighted) bin.
      cross_entropy *= tf.gather(self._class_weights, indices[..., 0])
    # Mean over the cells of non-gray images; a batch of gray images gives 0.
    mask = nongray_mask(ab, self.config.gray_threshold)
    cells = tf.reduce_sum(mask) * float(ab.shape[1] * ab.shape[2])
    return tf.reduce_sum(mask[:, None, None] * cross_entropy) / tf.maximum(cells, 1.0)

  def _hard_labels(self, batch):
    ab = batch['ab_target']
    nearest = self.encode(ab)[0][..., 0]
    mask = tf.broadcast_to(nongray_mask(ab, self.config.gray_threshold)[:, None, None], tf.shape(nearest))
    return nearest, mask

  def metrics(self):
    return {
      'loss': tf.keras.metrics.Mean(),
      'accuracy': base.accuracy_metric(),
      'top5_accuracy': tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5),
    }

  def update_metrics(self, metrics, outputs, batch, loss):
    logits = tf.reshape(base.cast_logits(outputs), [-1, NUM_BINS])
    nearest, mask = (tf.reshape(t, [-1]) for t in self._hard_labels(batch))
    metrics['loss'].update_state(loss)
    metrics['accuracy'].update_state(nearest, logits, sample_weight=mask)
    metrics['top5_accuracy'].update_state(nearest, logits, sample_weight=mask)

  def batch_metrics(self, outputs, batch):
    logits = tf.reshape(base.cast_logits(outputs), [-1, NUM_BINS])
    nearest, mask = (tf.reshape(t, [-1]) for t in self._hard_labels(batch))
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), nearest), tf.float32)
    top5 = tf.cast(tf.math.in_top_k(nearest, logits, 5), tf.float32)
    return {'accuracy': tf.reduce_sum(top1 * mask) / count, 'top5_accuracy': tf.reduce_sum(top5 * mask) / count}

  def decode(self, outputs) -> tf.Tensor:
    """[N, h, w, 313] logits -> [N, h, w, 2] ab by the annealed mean."""
    return annealed_mean(base.cast_logits(outputs), self._bins, self.config.temperature)

  def image_summaries(self, outputs, batch):
    lightness = (batch['image'][:4, ..., :1] + 1.0) * 50.0
    size = tf.shape(lightness)[1:3]

    def show(ab):
      ab = tf.image.resize(ab, size, method='bilinear')
      return tf.cast(tf.round(color.lab_to_rgb(tf.concat([lightness, ab], axis=-1)) * 255.0), tf.uint8)

    gray = show(tf.zeros_like(batch['ab_target'][:4]))
    shown = [gray, show(self.decode(outputs[:4])), show(batch['ab_target'][:4])]
    return {'gray_prediction_truth': tf.concat(shown, axis=2)}


class ColorizationHead(tf.keras.layers.Layer):
  """1x1 convolutions to 313 logits per label cell (upsampled when the trunk ran at stride 16)."""

  def __init__(self, hidden_units: int, upsample: int, **kwargs):
    """Creates the head; `upsample` is trunk stride / label stride (1 or 2)."""
    super().__init__(**kwargs)
    self.upsample = upsample
    self.hidden = tf.keras.layers.Conv2D(hidden_units, 1, activation='relu', dtype=self.dtype_policy)
    self.logits = tf.keras.layers.Conv2D(NUM_BINS, 1, dtype=self.dtype_policy)

  def call(self, features, training=None):
    logits = self.logits(self.hidden(features))
    if self.upsample > 1:
      logits = tf.image.resize(logits, tf.shape(logits)[1:3] * self.upsample, method='bilinear')
    return logits
