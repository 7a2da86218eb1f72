"""Shared by the classification evaluations (linear probes, supervised baseline, student and its probes).

Data (resize, crops, colour jitter, the labelled-image pipeline), recall@k metrics,
config checks and `ClassifierProtocol`, their shared steps over the fine-tuning engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.evaluation.protocol import Context, FineTuneProtocol
from mtssl_tf.train.finetune import FineTune, LoopConfig, SGDConfig

TOP_K = 5


@dataclasses.dataclass
class LabelledImagesConfig(Config):
  """Where labelled images come from and how they are cut, shared by the classification protocols.

  Attributes:
    train_source: training images (`tfrecord:`, `folder:`, `list:`, `tfds:` spec); '' = the
      synthetic world's (or the caller passes it).
    validation_source: validation images, likewise.
    data_dir: tensorflow-datasets data directory for `tfds:` sources.
    label_offset: subtracted from labels (1 for Model Garden ImageNet).
    num_classes: 0 counts the training labels once (max label + 1).
    image_size: images are resized to this shorter side (ImageNet convention: 256).
    crop_size: side of the random (train) and centre (test) crop (224).
    batch_size: training batch.
    eval_batch_size: validation batch.
    shuffle_buffer: decoded images in the shuffle buffer.
    seed: data order, crops and jitter.
  """

  train_source: str = ''
  validation_source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  num_classes: int = 0
  image_size: int = 256
  crop_size: int = 224
  batch_size: int = 256
  eval_batch_size: int = 100
  shuffle_buffer: int = 1000
  seed: int = 0


@dataclasses.dataclass
class ClassifierTrainingConfig(LabelledImagesConfig, SGDConfig, LoopConfig):
  """Labelled images, momentum SGD and the step loop.

  The fields the linear probes, the supervised baseline and the student probes share;
  each adds its own and may change a default.
  """


def check_training_fields(cfg: ClassifierTrainingConfig, section: str) -> None:
  """Checks the shared fields of a `ClassifierTrainingConfig`, naming `<section>.<key>`."""
  cfg.check_loop(section)
  cfg.check_sgd(section)
  for key in ('batch_size', 'eval_batch_size', 'shuffle_buffer'):
    if getattr(cfg, key) < 1:
      raise ConfigError(f'{section}.{key}: must be positive, got {getattr(cfg, key)}')
  for key in ('num_classes', 'label_offset'):
    if getattr(cfg, key) < 0:
      raise ConfigError(f'{section}.{key}: must be >= 0, got {getattr(cfg, key)}')
  if cfg.crop_size < 32:
    raise ConfigError(f'{section}.crop_size: must be at least 32 pixels, got {cfg.crop_size}')
  if cfg.image_size < cfg.crop_size:
    raise ConfigError(f'{section}.image_size: must be >= crop_size ({cfg.crop_size}), got {cfg.image_size}')


# ----------------------------------------------------------------------------- pooling and metrics


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


def make_softmax_step(
  logits_fn: Callable[[tf.Tensor], tf.Tensor],
  variables: List[tf.Variable],
  optimizer: tf.keras.optimizers.Optimizer,
  num_classes: int,
  weight_decay: float,
  labels_name: str = 'training label',
) -> Callable:
  """batch -> (loss + decay, {'loss', 'train_top1'}): one momentum-SGD update of a softmax classifier (a tf.function).

  The supervised baseline's and the transfer student's step: softmax cross-entropy,
  L2 weight decay on every kernel among `variables`; variables off the loss path (no
  gradient) are left alone.

  Args:
    logits_fn: uint8 images -> logits, in training mode.
    variables: the trained variables.
    optimizer: applies the update.
    num_classes: classes; a larger label is an error naming `labels_name`.
    weight_decay: the L2 weight.
    labels_name: what the labels are, in that error.
  """
  kernels = [v for v in variables if 'kernel' in v.name]

  @tf.function
  def train_step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=f'{labels_name} >= num_classes')
    with tf.GradientTape() as tape:
      logits = logits_fn(batch['image'])
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      total = loss + weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
    grads = tape.gradient(total, variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    return total, {'loss': loss, 'train_top1': tf.reduce_mean(tf.cast(correct_at_k(logits, labels, 1), tf.float32))}

  return train_step


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


# ----------------------------------------------------------------------------- the protocols' shared steps


class ClassifierProtocol(FineTuneProtocol):
  """The classification protocols' shared steps over the fine-tuning engine.

  Linear probes, the supervised baseline, nonlinear probes, and the transfer student and
  its probes: training batches are `classification_dataset` views of `ctx.train_spec`
  (`augmentation` picks the jitter and flips), progress names loss and train top-1, and
  `test_heads` scores recall@1/@5 of every head on one centre crop per validation image.
  """

  log_keys = ('loss', 'train_top1')
  empty_message = 'the training source yields no batch'

  def augmentation(self, cfg: Config) -> Tuple[Optional[ColorJitter], bool]:
    """(colour jitter or None, random horizontal flips) of the training views."""
    return None, False

  def count_classes(self, ctx: Context, count_images: bool = False) -> None:
    """Sets `num_classes` (the config's, else max label + 1) and `train_count` (images, when counted)."""
    cfg = ctx.section
    self.num_classes, self.train_count = cfg.num_classes, None
    if not self.num_classes or count_images:
      self.train_count, labels = count_labels(ctx.train_spec, cfg.label_offset, cfg.data_dir)
      self.num_classes = self.num_classes or labels

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    cfg = ctx.section
    color, flip = self.augmentation(cfg)
    # The student's pseudo-labels have no label offset or tfds directory (its config has neither field).
    return classification_dataset(
      ctx.train_spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size, training=True,
      seed=cfg.seed, color=color, flip=flip, label_offset=getattr(cfg, 'label_offset', 0),
      data_dir=getattr(cfg, 'data_dir', ''), shuffle_buffer=cfg.shuffle_buffer, start=start * cfg.batch_size,
    )  # fmt: skip

  def test_heads(
    self, ctx: Context, tune: FineTune, stats: Dict[str, Any], predict: Callable, tags: Dict[str, str]
  ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Any]]:
    """Scores every head of `predict` on the validation set and writes `<tag>/top1`, `<tag>/top5` scalars.

    Args:
      ctx: the context (`test_spec` is the validation source).
      tune: the engine, after training.
      stats: `FineTune.fit`'s statistics ({} when nothing was trained).
      predict: uint8 images -> {head: logits}.
      tags: head -> summary tag prefix ('' for bare `top1` / `top5`).

    Returns:
      ({head: {'top1', 'top5'}}, the counts: steps, batch_size, num_classes, train_examples,
      validation_examples, skipped train and validation records).
    """
    cfg = ctx.section
    validation = classification_dataset(
      ctx.test_spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.eval_batch_size,
      training=False, label_offset=cfg.label_offset, data_dir=cfg.data_dir,
    )  # fmt: skip
    scores, validation_count, validation_skipped = evaluate(validation, predict, self.num_classes)
    tune.scalars({f'{tags[k]}/{m}' if tags[k] else m: v for k, values in scores.items() for m, v in values.items()})
    counts = {
      'steps': tune.step,
      'batch_size': cfg.batch_size,
      'num_classes': self.num_classes,
      'train_examples': self.train_count,
      'validation_examples': validation_count,
      'skipped_train_records': stats.get('num_skipped_train', 0),
      'skipped_validation_records': validation_skipped,
    }
    return scores, counts
