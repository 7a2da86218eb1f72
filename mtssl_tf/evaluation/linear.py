"""Frozen linear classification (Doersch & Zisserman 2017, §5) and per-layer linear probes.

Protocol. The trunk is frozen: it runs in inference mode (BatchNorm uses its moving
statistics, which never change) outside the gradient tape, so no gradient reaches it.
A single linear softmax layer is trained on the block-3 output (`final`) max-pooled to
3x3 (Doersch: 3x3x1024 for ResNet-101). Pooling is adaptive max pooling: the map is
cut into a `g x g` grid of cells whose bounds are floor(i * H / g) .. ceil((i + 1) * H / g),
as PyTorch's AdaptiveMaxPool2d does, so any input size gives the same dimension.

Noroozi et al. 2018 (Table 4, after Zhang et al. 2016) probe every layer, each
"spatially resized until under 9K dimensions". We read 9K as 9 x 1024 = 9216 and take
the largest square grid g with g * g * C <= 9216, never larger than the map itself
(`probe_grid`): for 1024 channels that is 3x3, agreeing with Doersch's protocol (a
strict 9,000 would give 2x2); 256 channels give 6x6 (Zhang's conv5 is 6x6x256 = 9216).
All probes train in the same pass off one frozen forward pass, each with its own
linear layer and loss; with `use_lasso` the main layer reads a freshly learned lasso
mix of all block-3 units (Doersch §5 learns a new alpha for each evaluation).

`feature_norm` puts a BatchNorm without scale or offset before each linear layer
(standard practice for linear probes, e.g. MAE's): at test time it is a fixed
per-dimension affine map, so the classifier stays linear, and one learning rate
suits endpoints of very different scales (block-3 units are not normalised).

Training sees a random `crop_size` crop of the image resized to shorter side
`image_size` (random translation) and brightness/contrast/saturation/hue jitter; test
uses one centre crop. Metrics are recall@1 and recall@5 (top-1/top-5 accuracy) over
the whole validation set. The data and metric helpers here are shared with
`supervised.py`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError, validate_all
from mtssl_tf.configs.experiment import LASSO_INITS
from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.evaluation import backbone
from mtssl_tf.trunk.lasso import LassoMix
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

NAME = 'linear'
ENDPOINTS = ('stem', 'block1', 'block2', 'block3', 'final')
_UNIT_ENDPOINT = re.compile(r'^block3/unit_\d{2}$')
MAX_PROBE_DIMS = 9216
MAIN = 'main'
TOP_K = 5


def _is_endpoint_name(name: str) -> bool:
  return name in ENDPOINTS or bool(_UNIT_ENDPOINT.match(name))


@dataclasses.dataclass
class LinearEvalConfig(Config):
  """Frozen linear classification.

  Attributes:
    train_source: training images (`tfrecord:`, `folder:`, `tfds:` spec); '' = the
      caller passes it to `run_linear`.
    validation_source: validation images, likewise.
    data_dir: tensorflow-datasets data directory for `tfds:` sources.
    label_offset: subtracted from labels (1 for Model Garden ImageNet).
    num_classes: 0 counts the training labels once (max label + 1).
    endpoint: trunk endpoint of the main classifier ('final' = block-3 output after
      BN-ReLU, Doersch §5).
    pool_size: the main endpoint is max-pooled to pool_size x pool_size (Doersch: 3).
    probe_endpoints: further endpoints, each with its own linear layer on a grid
      chosen by `probe_grid` (Noroozi et al. 2018, Table 4).
    probe_max_dims: the probes' dimension budget (9216, see the module docstring).
    feature_norm: non-affine BatchNorm on the pooled features (module docstring).
    use_lasso: the main layer reads a fresh lasso mix of all block-3 units.
    lasso_l1_weight: L1 weight on that alpha (LassoConfig's default).
    lasso_init: 'last' (starts as the plain block-3 output) or 'uniform'.
    image_size: images are resized to this shorter side (ImageNet convention: 256).
    crop_size: side of the random (train) and centre (test) crop (224).
    brightness: maximum brightness delta on [0, 1] images (TF-slim Inception: 32/255).
    contrast_range: (min, max) contrast factor (TF-slim Inception: 0.5-1.5).
    saturation_range: (min, max) saturation factor (TF-slim Inception: 0.5-1.5).
    max_hue: maximum hue delta (TF-slim Inception: 0.2).
    steps: training steps (~28 ImageNet epochs at batch 256, as Goyal et al. 2019).
    batch_size: training batch.
    eval_batch_size: validation batch.
    learning_rate: momentum-SGD learning rate (Goyal et al. 2019: 0.01).
    momentum: SGD momentum.
    lr_decay_factor: the learning rate is multiplied by this every `lr_decay_steps`.
    lr_decay_steps: staircase decay interval (about 10 ImageNet epochs).
    weight_decay: L2 weight decay on the linear layers' kernels (Goyal et al.: 5e-4).
    shuffle_buffer: decoded images in the shuffle buffer.
    seed: data order, crops and jitter.
    log_every_steps: console progress and training summaries.
    checkpoint_every_steps: probe checkpoints (the last step is always saved).
  """

  train_source: str = ''
  validation_source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  num_classes: int = 0
  endpoint: str = 'final'
  pool_size: int = 3
  probe_endpoints: Tuple[str, ...] = ()
  probe_max_dims: int = MAX_PROBE_DIMS
  feature_norm: bool = True
  use_lasso: bool = False
  lasso_l1_weight: float = 1e-3
  lasso_init: str = 'last'
  image_size: int = 256
  crop_size: int = 224
  brightness: float = 32.0 / 255.0
  contrast_range: Tuple[float, ...] = (0.5, 1.5)
  saturation_range: Tuple[float, ...] = (0.5, 1.5)
  max_hue: float = 0.2
  steps: int = 140_000
  batch_size: int = 256
  eval_batch_size: int = 100
  learning_rate: float = 0.01
  momentum: float = 0.9
  lr_decay_factor: float = 0.1
  lr_decay_steps: int = 50_000
  weight_decay: float = 5e-4
  shuffle_buffer: int = 1000
  seed: int = 0
  log_every_steps: int = 100
  checkpoint_every_steps: int = 5000

  def validate(self) -> None:
    if not _is_endpoint_name(self.endpoint):
      raise ConfigError(f'linear.endpoint: unknown endpoint {self.endpoint!r} (one of {ENDPOINTS} or block3/unit_NN)')
    bad = [e for e in self.probe_endpoints if not _is_endpoint_name(e)]
    if bad or len(set(self.probe_endpoints)) != len(self.probe_endpoints):
      raise ConfigError(
        f'linear.probe_endpoints: need distinct endpoints from {ENDPOINTS} or block3/unit_NN, '
        f'got {list(self.probe_endpoints)}'
      )
    if self.use_lasso and self.endpoint not in ('final', 'block3'):
      raise ConfigError(f'linear.use_lasso: the lasso mix replaces the block-3 output, but endpoint={self.endpoint!r}')
    if self.lasso_init not in LASSO_INITS:
      raise ConfigError(f'linear.lasso_init: must be one of {LASSO_INITS}, got {self.lasso_init!r}')
    check_training_fields(self, 'linear')
    for key in ('pool_size', 'probe_max_dims', 'lr_decay_steps'):
      if getattr(self, key) < 1:
        raise ConfigError(f'linear.{key}: must be positive, got {getattr(self, key)}')
    if not 0 < self.lr_decay_factor <= 1:
      raise ConfigError(f'linear.lr_decay_factor: must be in (0, 1], got {self.lr_decay_factor}')
    for key in ('contrast_range', 'saturation_range'):
      value = tuple(getattr(self, key))
      if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ConfigError(f'linear.{key}: need (min, max) with 0 < min <= max, got {list(value)}')
    if self.brightness < 0:
      raise ConfigError(f'linear.brightness: must be >= 0, got {self.brightness}')
    if not 0 <= self.max_hue <= 0.5:
      raise ConfigError(f'linear.max_hue: must be in [0, 0.5], got {self.max_hue}')
    if self.lasso_l1_weight < 0:
      raise ConfigError(f'linear.lasso_l1_weight: must be >= 0, got {self.lasso_l1_weight}')


def check_training_fields(cfg, section: str) -> None:
  """Checks the fields `LinearEvalConfig` and `SupervisedConfig` share, naming `<section>.<key>`."""
  for key in ('steps', 'batch_size', 'eval_batch_size', 'shuffle_buffer', 'log_every_steps', 'checkpoint_every_steps'):
    if getattr(cfg, key) < 1:
      raise ConfigError(f'{section}.{key}: must be positive, got {getattr(cfg, key)}')
  for key in ('num_classes', 'label_offset'):
    if getattr(cfg, key) < 0:
      raise ConfigError(f'{section}.{key}: must be >= 0, got {getattr(cfg, key)}')
  if cfg.crop_size < 32:
    raise ConfigError(f'{section}.crop_size: must be at least 32 pixels, got {cfg.crop_size}')
  if cfg.image_size < cfg.crop_size:
    raise ConfigError(f'{section}.image_size: must be >= crop_size ({cfg.crop_size}), got {cfg.image_size}')
  if cfg.learning_rate <= 0:
    raise ConfigError(f'{section}.learning_rate: must be positive, got {cfg.learning_rate}')
  if not 0 <= cfg.momentum < 1:
    raise ConfigError(f'{section}.momentum: must be in [0, 1), got {cfg.momentum}')
  if cfg.weight_decay < 0:
    raise ConfigError(f'{section}.weight_decay: must be >= 0, got {cfg.weight_decay}')


# ----------------------------------------------------------------------------- pooling and metrics


def _pool_axis(x: tf.Tensor, axis: int, cells: int) -> tf.Tensor:
  size = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]
  out = []
  for i in range(cells):
    start = (i * size) // cells
    end = -((-(i + 1) * size) // cells)  # ceil((i + 1) * size / cells)
    part = x[:, start:end] if axis == 1 else x[:, :, start:end]
    out.append(tf.reduce_max(part, axis=axis, keepdims=True))
  return tf.concat(out, axis=axis)


def adaptive_max_pool(x: tf.Tensor, grid: Tuple[int, int]) -> tf.Tensor:
  """Max-pools [B, H, W, C] to [B, gh, gw, C] for any H, W (static or dynamic).

  Cell (i, j) is the max over rows floor(i H / gh) .. ceil((i + 1) H / gh) - 1 and the
  same for columns: cells tile the map, overlapping by a row when gh does not divide
  H, and repeat rows when the map is smaller than the grid. Rows then columns: the max
  of a rectangle is separable.
  """
  return _pool_axis(_pool_axis(x, 1, grid[0]), 2, grid[1])


def probe_grid(channels: int, max_dims: int = MAX_PROBE_DIMS, spatial: Optional[int] = None) -> int:
  """Largest g with g * g * channels <= max_dims, at most `spatial`, at least 1 (global max pooling)."""
  g = max(1, math.isqrt(max_dims // channels))
  return min(g, spatial) if spatial else g


def correct_at_k(logits: tf.Tensor, labels: tf.Tensor, k: int) -> tf.Tensor:
  """Whether each label is among the min(k, classes) highest scores (ties: lower class first), bool [B].

  With fewer than k classes every label is (recall@5 is 1 for 3 classes). Ties are broken
  as `tf.math.top_k` does, so a constant classifier is not credited with every class.
  """
  k = min(k, int(logits.shape[-1]))
  top = tf.math.top_k(logits, k=k).indices
  return tf.reduce_any(tf.equal(top, tf.cast(labels, tf.int32)[:, None]), axis=-1)


def recall_at_k(logits, labels, k: int) -> float:
  """Fraction of examples whose label is among the k highest scores (see `correct_at_k`)."""
  hits = correct_at_k(tf.convert_to_tensor(logits, tf.float32), tf.convert_to_tensor(labels), k)
  return float(tf.reduce_mean(tf.cast(hits, tf.float32)))


# ----------------------------------------------------------------------------- data


class ColorJitter(NamedTuple):
  """Colour augmentation on [0, 1] images; an empty range skips that jitter."""

  brightness: float
  contrast: Tuple[float, float]
  saturation: Tuple[float, float]
  hue: float


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 with shorter side `size`, aspect kept (antialiased bilinear)."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
  resized = tf.image.resize(image, new, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size crop of an image at least that large."""
  shape = tf.shape(image)
  crop = tf.image.crop_to_bounding_box(image, (shape[0] - size) // 2, (shape[1] - size) // 2, size, size)
  crop.set_shape([size, size, 3])
  return crop


def augment(
  image: tf.Tensor, seed: tf.Tensor, crop_size: int, color: Optional[ColorJitter] = None, flip: bool = False
) -> tf.Tensor:
  """Training view: random crop (translation), optional flip and colour jitter; uint8 in and out."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6), num=6)
  image = tf.image.stateless_random_crop(image, [crop_size, crop_size, 3], seeds[0])
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  if color is None:
    return image
  x = tf.image.convert_image_dtype(image, tf.float32)
  # tf.image rejects an empty range (lower == upper), so each jitter is skipped then.
  if color.brightness > 0:
    x = tf.image.stateless_random_brightness(x, color.brightness, seeds[2])
  if color.contrast[0] < color.contrast[1]:
    x = tf.image.stateless_random_contrast(x, color.contrast[0], color.contrast[1], seeds[3])
  if color.saturation[0] < color.saturation[1]:
    x = tf.image.stateless_random_saturation(x, color.saturation[0], color.saturation[1], seeds[4])
  if color.hue > 0:
    x = tf.image.stateless_random_hue(x, color.hue, seeds[5])
  return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8, saturate=True)


def classification_dataset(
  spec: str,
  *,
  image_size: int,
  crop_size: int,
  batch_size: int,
  training: bool,
  seed: int = 0,
  color: Optional[ColorJitter] = None,
  flip: bool = False,
  label_offset: int = 0,
  data_dir: str = '',
  shuffle_buffer: int = 1000,
  start: int = 0,
) -> tf.data.Dataset:
  """Labelled images for classification: batches {'image' uint8, 'label', 'num_skipped'}.

  Unlabelled images (label -1) are dropped. Training: shuffled, repeated, augmented
  (`augment`, seeded by (seed, element index) so a run is reproducible), full
  batches only. Test: one centre crop each, in order, one pass, last batch partial.

  Args:
    spec: image source spec.
    image_size: shorter side images are resized to.
    crop_size: side of the crop.
    batch_size: batch size.
    training: training or test pipeline.
    seed: data-order and augmentation seed.
    color: colour jitter (training only); None for none.
    flip: random horizontal flips (training only).
    label_offset: subtracted from labels.
    data_dir: tensorflow-datasets data directory.
    shuffle_buffer: shuffle buffer of decoded images.
    start: index of the first training element (a resumed run starts at step * batch).
  """
  options = ReadOptions(shuffle_files=training, seed=seed + start, label_offset=label_offset, data_dir=data_dir or None)

  def process(record):
    image = resize_shorter_side(decode.decode_rgb(record['encoded']), image_size)
    return {'image': image if training else centre_crop(image, crop_size), 'label': record['label']}

  ds = image_dataset(spec, options, process).filter(lambda x: x['label'] >= 0)
  if not training:
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  # A resumed run reshuffles differently rather than replaying the first run's order.
  ds = ds.shuffle(shuffle_buffer, seed=seed + start, reshuffle_each_iteration=True).repeat().enumerate(start)

  def view(index, x):
    image = augment(x['image'], tf.stack([tf.constant(seed, tf.int64), index]), crop_size, color, flip)
    return dict(x, image=image)

  ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def count_labels(spec: str, label_offset: int = 0, data_dir: str = '') -> Tuple[int, int]:
  """(labelled images, max label + 1) of a source, reading labels only (images are not decoded).

  Raises:
    ValueError: the source holds no labelled image.
  """
  options = ReadOptions(label_offset=label_offset, data_dir=data_dir or None)
  labels = image_dataset(spec, options, lambda r: {'label': r['label']}).map(lambda x: x['label'])
  count, top = labels.filter(lambda y: y >= 0).reduce(
    (tf.constant(0, tf.int64), tf.constant(-1, tf.int64)), lambda s, y: (s[0] + 1, tf.maximum(s[1], y))
  )
  if int(count) == 0:
    raise ValueError(f'{spec!r} holds no labelled images')
  return int(count), int(top) + 1


def evaluate(
  dataset: tf.data.Dataset, predict: Callable[[tf.Tensor], Dict[str, tf.Tensor]], num_classes: int
) -> Tuple[Dict[str, Dict[str, float]], int, int]:
  """Recall@1 and @5 of every classifier `predict` returns, over the whole dataset.

  Args:
    dataset: test batches from `classification_dataset`.
    predict: uint8 images -> {name: logits [B, num_classes]} (a tf.function).
    num_classes: classes; a larger label is an error, not a miss.

  Returns:
    ({name: {'top1', 'top5'}}, examples, skipped undecodable records).

  Raises:
    ValueError: empty dataset, or a label >= num_classes.
  """
  hits: Dict[str, List[int]] = {}
  total, skipped = 0, 0
  for batch in dataset:
    labels = batch['label']
    if int(tf.reduce_max(labels)) >= num_classes:
      raise ValueError(f'validation label {int(tf.reduce_max(labels))} >= num_classes {num_classes}')
    for name, logits in predict(batch['image']).items():
      counts = hits.setdefault(name, [0, 0])
      counts[0] += int(tf.reduce_sum(tf.cast(correct_at_k(logits, labels, 1), tf.int32)))
      counts[1] += int(tf.reduce_sum(tf.cast(correct_at_k(logits, labels, TOP_K), tf.int32)))
    total += int(tf.shape(labels)[0])
    skipped = max(skipped, int(tf.reduce_max(batch[pipeline.SKIPPED_KEY])))
  if total == 0:
    raise ValueError('the validation set holds no labelled images')
  return {name: {'top1': c[0] / total, 'top5': c[1] / total} for name, c in hits.items()}, total, skipped


# ----------------------------------------------------------------------------- the classifiers


class LinearHead(tf.keras.layers.Layer):
  """Adaptive max pooling to grid x grid, optional non-affine BatchNorm, one linear softmax layer."""

  def __init__(self, num_classes: int, grid: int, feature_norm: bool = True, **kwargs):
    super().__init__(dtype='float32', **kwargs)
    self.grid = grid
    self.norm = None
    if feature_norm:
      self.norm = tf.keras.layers.BatchNormalization(center=False, scale=False, name='norm', dtype='float32')
    # Zeros: the problem is convex, so no symmetry to break, and runs are reproducible.
    self.dense = tf.keras.layers.Dense(num_classes, kernel_initializer='zeros', name='logits', dtype='float32')

  def call(self, features: tf.Tensor, training=None) -> tf.Tensor:
    x = adaptive_max_pool(tf.cast(features, tf.float32), (self.grid, self.grid))
    x = tf.reshape(x, [-1, self.grid * self.grid * int(x.shape[-1])])
    if self.norm is not None:
      x = self.norm(x, training=training)
    return self.dense(x)


def _key(endpoint: str) -> str:
  return endpoint.replace('/', '_')


class LinearProbes(tf.keras.Model):
  """The main linear classifier (optionally on a lasso mix) and one per probed endpoint."""

  def __init__(
    self,
    sources: Dict[str, str],
    grids: Dict[str, int],
    num_classes: int,
    feature_norm: bool = True,
    lasso_units: int = 0,
    lasso_l1_weight: float = 1e-3,
    lasso_init: str = 'last',
  ):
    """Creates the layers.

    Args:
      sources: classifier key -> endpoint it reads (the main key may read the lasso mix).
      grids: classifier key -> pooling grid.
      num_classes: classes.
      feature_norm: see `LinearEvalConfig`.
      lasso_units: block-3 units; > 0 makes the main classifier read a lasso mix of them.
      lasso_l1_weight: L1 weight on alpha.
      lasso_init: alpha's initialisation.
    """
    # float32 whatever the global policy: a mixed-precision trunk feeds float32 classifiers.
    super().__init__(name='linear_probes', dtype='float32')
    self.sources = dict(sources)
    self.heads = {k: LinearHead(num_classes, grids[k], feature_norm, name=f'head_{k}') for k in sources}
    self.lasso = None
    if lasso_units:
      self.lasso = LassoMix(1, lasso_units, lasso_l1_weight, lasso_init, name='lasso')
      # As in pre-training (MultiTaskModel): the mix of un-normalised units gets its own BN-ReLU.
      self.lasso_norm = tf.keras.layers.BatchNormalization(name='lasso_bn', dtype='float32')

  def call(self, endpoints: Dict[str, tf.Tensor], units: Sequence[tf.Tensor] = (), training=None):
    """Endpoints (and block-3 units for lasso) -> ({key: logits}, lasso penalty)."""
    logits, penalty = {}, tf.constant(0.0)
    for key, head in self.heads.items():
      if key == MAIN and self.lasso is not None:
        mixed = self.lasso([tf.cast(u, tf.float32) for u in units], consumer=0)
        features = tf.nn.relu(self.lasso_norm(mixed, training=training))
        penalty = self.lasso.penalty(0)
      else:
        features = endpoints[self.sources[key]]
      logits[key] = head(features, training=training)
    return logits, penalty


def _head_layout(cfg: LinearEvalConfig, trunk: ResNetV2Trunk) -> Tuple[Dict[str, str], Dict[str, int], Dict[str, int]]:
  """Classifier key -> endpoint, grid and feature dimension, from one forward pass at crop size."""
  shapes = {k: v.shape for k, v in trunk(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False).items()}
  for key, names in (('endpoint', [cfg.endpoint]), ('probe_endpoints', list(cfg.probe_endpoints))):
    missing = [n for n in names if n not in shapes]
    if missing:
      raise ConfigError(f'linear.{key}: the trunk has no endpoint {missing} (it has {sorted(shapes)})')
  if cfg.use_lasso and trunk.config.output_stride == 32:
    raise ConfigError('linear.use_lasso: needs every block-3 unit at one resolution; the trunk has output stride 32')
  sources, grids, dims = {MAIN: cfg.endpoint}, {MAIN: cfg.pool_size}, {}
  for endpoint in cfg.probe_endpoints:
    _, height, width, channels = shapes[endpoint]
    sources[_key(endpoint)] = endpoint
    grids[_key(endpoint)] = probe_grid(channels, cfg.probe_max_dims, min(height, width))
  for key, grid in grids.items():
    dims[key] = grid * grid * int(shapes[sources[key]][-1])
  return sources, grids, dims


# ----------------------------------------------------------------------------- the run


def resolve_sources(cfg, train_spec: str, validation_spec: str, section: str) -> Tuple[str, str]:
  """The (train, validation) specs: arguments first, then the config; a missing one is a ConfigError."""
  train, validation = train_spec or cfg.train_source, validation_spec or cfg.validation_source
  if not train or not validation:
    missing = 'train_source' if not train else 'validation_source'
    raise ConfigError(f'{section}.{missing}: no data source given (config or argument)')
  return train, validation


def restore_or_start(checkpoint: tf.train.Checkpoint, directory: str, what: str) -> tf.train.CheckpointManager:
  """A manager over `directory`, with `checkpoint` restored from its latest save if any.

  Raises:
    ValueError: the saved objects do not fit the ones built from this config.
  """
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
  if manager.latest_checkpoint:
    try:
      checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      raise ValueError(
        f'{what} checkpoint {manager.latest_checkpoint} does not fit this config (use a fresh model_dir or delete '
        f'{directory}): {str(e).splitlines()[0][:300]}'
      ) from None
    logging.info('%s: resuming from %s', what, manager.latest_checkpoint)
  return manager


def train_loop(
  name: str,
  step_fn: Callable,
  data: tf.data.Dataset,
  cfg,
  *,
  start: int,
  schedule: Callable[[int], tf.Tensor],
  manager: tf.train.CheckpointManager,
  writer,
  progress: bool = True,
  extra_summaries: Optional[Callable[[], Dict[str, float]]] = None,
) -> int:
  """Steps start+1 .. cfg.steps: NaN check, progress lines, `<name>/<tag>` summaries, checkpoints.

  Args:
    name: summary prefix and log name ('linear', 'supervised').
    step_fn: batch -> (total loss, {tag: value}), the tags including 'loss' and 'train_top1'.
    data: training batches.
    cfg: a config with steps, log_every_steps, checkpoint_every_steps.
    start: the step already done (restored).
    schedule: the learning rate schedule (logged).
    manager: saves every `checkpoint_every_steps` and at the end.
    writer: summary writer; each log window writes the tags' means, learning_rate,
      steps_per_second and `extra_summaries()`.
    progress: log a line per window.
    extra_summaries: more scalars per window.

  Returns:
    Undecodable training records skipped.

  Raises:
    FloatingPointError: a non-finite loss, naming the step (the last checkpoint is kept).
  """
  skips = pipeline.SkipCounter(f'{name}/train')
  sums: Dict[str, float] = {}
  count, tick = 0, time.perf_counter()
  for step, batch in zip(range(start + 1, cfg.steps + 1), data):
    total, metrics = step_fn(batch)
    if not math.isfinite(float(total)):
      raise FloatingPointError(
        f'{name}: non-finite loss ({float(total)}) at step {step}; last checkpoint: {manager.latest_checkpoint}'
      )
    skips.update(batch[pipeline.SKIPPED_KEY])
    for tag, value in metrics.items():
      sums[tag] = sums.get(tag, 0.0) + float(value)
    count += 1
    if step % cfg.log_every_steps == 0 or step == cfg.steps:
      means = {tag: value / count for tag, value in sums.items()}
      means.update(learning_rate=float(schedule(step - 1)), steps_per_second=count / (time.perf_counter() - tick))
      means.update(extra_summaries() if extra_summaries else {})
      if progress:
        logging.info('%s step %d/%d: loss %.4f, train top1 %.3f, lr %.3g, %.2f steps/s', name, step, cfg.steps,
                     means['loss'], means['train_top1'], means['learning_rate'], means['steps_per_second'])  # fmt: skip
      with writer.as_default(step=step):
        for tag, value in means.items():
          tf.summary.scalar(f'{name}/{tag}', value)
      sums, count, tick = {}, 0, time.perf_counter()
    if step % cfg.checkpoint_every_steps == 0 or step == cfg.steps:
      manager.save(checkpoint_number=step)
  return skips.count


def run_linear(
  cfg: LinearEvalConfig,
  trunk: ResNetV2Trunk,
  model_dir: str,
  train_spec: str = '',
  validation_spec: str = '',
  preprocessing: str = 'rgb',
  init_source: str = '',
  progress: bool = True,
) -> Dict:
  """Trains the frozen-trunk linear classifiers, evaluates them, writes results.json.

  Summaries, the probe checkpoints (resumed from their last step) and results.json go
  to `<model_dir>/eval/linear`. The trunk is never modified.

  Args:
    cfg: the protocol.
    trunk: a built trunk (`backbone.load_trunk`).
    model_dir: run folder.
    train_spec: training source (overrides `cfg.train_source`).
    validation_spec: validation source (overrides `cfg.validation_source`).
    preprocessing: 'rgb' or 'harmonized', as the trunk was pre-trained.
    init_source: where the trunk came from, recorded in the results.
    progress: log progress lines.

  Returns:
    The results (also in results.json): top1/top5 of the main classifier, `probes`
    {endpoint: {top1, top5, grid, dims}}, `protocol`, `counts`.

  Raises:
    ConfigError: a bad config value or an endpoint the trunk lacks (named).
    FloatingPointError: a non-finite loss, naming the step.
  """
  validate_all(cfg)
  train_spec, validation_spec = resolve_sources(cfg, train_spec, validation_spec, 'linear')
  out_dir = backbone.eval_dir(model_dir, NAME)
  to_input = backbone.input_fn(preprocessing)
  num_classes, train_count = cfg.num_classes, None
  if not num_classes:
    train_count, num_classes = count_labels(train_spec, cfg.label_offset, cfg.data_dir)
  sources, grids, dims = _head_layout(cfg, trunk)
  lasso_units = trunk.num_units if cfg.use_lasso else 0
  probes = LinearProbes(sources, grids, num_classes, cfg.feature_norm, lasso_units, cfg.lasso_l1_weight, cfg.lasso_init)
  schedule = tf.keras.optimizers.schedules.ExponentialDecay(
    cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_factor, staircase=True
  )
  optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)

  def frozen(images):
    # training=False: BatchNorm uses (and never updates) its moving statistics. Run
    # outside any gradient tape and cut by stop_gradient, so nothing flows back.
    endpoints = {k: tf.stop_gradient(v) for k, v in trunk(to_input(images), training=False).items()}
    return endpoints, trunk.block3_units(endpoints) if lasso_units else ()

  def forward(images, training):
    endpoints, units = frozen(images)
    return probes(endpoints, units, training=training)

  # Variables (heads, optimizer slots) exist before any restore or traced step.
  forward(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8), False)
  optimizer.build(probes.trainable_variables)
  checkpoint = tf.train.Checkpoint(probes=probes, optimizer=optimizer)
  manager = restore_or_start(checkpoint, os.path.join(out_dir, 'checkpoints'), 'linear evaluation')
  start = int(optimizer.iterations.numpy())

  @tf.function
  def train_step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message='training label >= num_classes')
    endpoints, units = frozen(batch['image'])
    with tf.GradientTape() as tape:
      all_logits, penalty = probes(endpoints, units, training=True)
      losses, metrics = [], {}
      for key, logits in all_logits.items():
        losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
        tag = '' if key == MAIN else sources[key] + '/'
        metrics[f'{tag}loss'] = losses[-1]
        metrics[f'{tag}train_top1'] = tf.reduce_mean(tf.cast(correct_at_k(logits, labels, 1), tf.float32))
      decay = tf.add_n([tf.nn.l2_loss(h.dense.kernel) for h in probes.heads.values()])
      total = tf.add_n(losses) + cfg.weight_decay * decay + penalty
    variables = probes.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
    return total, metrics

  def alpha_summaries():
    alpha = probes.lasso.alpha().numpy()[0] if lasso_units else ()
    return {f'lasso/alpha_unit_{m + 1:02d}': float(a) for m, a in enumerate(alpha)}

  @tf.function(reduce_retracing=True)
  def predict(images):
    return forward(images, False)[0]

  writer = tf.summary.create_file_writer(out_dir)
  train_skipped = 0
  if start < cfg.steps:
    color = ColorJitter(cfg.brightness, tuple(cfg.contrast_range), tuple(cfg.saturation_range), cfg.max_hue)
    data = classification_dataset(
      train_spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size, training=True,
      seed=cfg.seed, color=color, label_offset=cfg.label_offset, data_dir=cfg.data_dir,
      shuffle_buffer=cfg.shuffle_buffer, start=start * cfg.batch_size,
    )  # fmt: skip
    train_skipped = train_loop(
      NAME, train_step, data, cfg, start=start, schedule=schedule, manager=manager, writer=writer,
      progress=progress, extra_summaries=alpha_summaries,
    )  # fmt: skip

  validation = classification_dataset(
    validation_spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.eval_batch_size,
    training=False, label_offset=cfg.label_offset, data_dir=cfg.data_dir,
  )  # fmt: skip
  scores, validation_count, validation_skipped = evaluate(validation, predict, num_classes)
  step = int(optimizer.iterations.numpy())
  with writer.as_default(step=step):
    for key, metrics in scores.items():
      for metric, value in metrics.items():
        tf.summary.scalar(f'{NAME}/{metric}' if key == MAIN else f'{NAME}/{sources[key]}/{metric}', value)
  writer.flush()
  main_name = 'lasso(block3 units)' if lasso_units else cfg.endpoint
  results = {
    'top1': scores[MAIN]['top1'],
    'top5': scores[MAIN]['top5'],
    'endpoint': main_name,
    'grid': grids[MAIN],
    'dims': dims[MAIN],
    'probes': {sources[k]: dict(scores[k], grid=grids[k], dims=dims[k]) for k in sources if k != MAIN},
    'protocol': {
      'trunk': 'frozen: inference-mode BatchNorm, no gradients',
      'features': f'{main_name} adaptive-max-pooled to {grids[MAIN]}x{grids[MAIN]} ({dims[MAIN]} dims)',
      'probe_grid_rule': f'largest square grid g with g*g*channels <= {cfg.probe_max_dims}, not above the map size',
      'feature_norm': cfg.feature_norm,
      'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}, colour jitter',
      'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
      'top5': f'label among the {min(TOP_K, num_classes)} highest scores (ties: lower class first)',
      'preprocessing': preprocessing,
      'init_source': init_source,
    },
    'counts': {
      'steps': step,
      'batch_size': cfg.batch_size,
      'num_classes': num_classes,
      'train_examples': train_count,
      'validation_examples': validation_count,
      'skipped_train_records': train_skipped,
      'skipped_validation_records': validation_skipped,
    },
  }
  if lasso_units:
    results['lasso_alpha'] = [float(a) for a in probes.lasso.alpha().numpy()[0]]
  path = backbone.write_results(model_dir, NAME, results)
  if progress:
    logging.info('linear: top1 %.4f, top5 %.4f over %d images -> %s', results['top1'], results['top5'],
                 validation_count, path)  # fmt: skip
  return results
