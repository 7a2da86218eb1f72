"""The supervised "ImageNet labels" baseline (Doersch & Zisserman 2017, §5).

The full ResNet-v2 (trunk blocks 1-3, `Block4` on the trunk's `block3` output, global
average pooling, one linear softmax layer) is trained from random initialisation on
labels with momentum SGD. The learning rate is multiplied by 0.94 every 2 epochs,
staircase (Doersch's baseline; TF-slim's `train_image_classifier` defaults). Training
sees a random crop of the image resized to shorter side `image_size`, randomly
flipped; validation reports recall@1 and @5 on one centre crop.

The checkpoints in `<model_dir>/eval/supervised/checkpoints` hold the trunk at the
object path `model/trunk`, the same as a pre-training checkpoint, so every other
evaluation can start from the supervised trunk:
`backbone.load_trunk('<model_dir>/eval/supervised', trunk_config)`. Block 4 sits at
`model/block4` (`block4.CHECKPOINT_PATH`), where the detection evaluation finds it and
transfers it into its box head (Doersch §5; `detection.box_head_init`). A `config.yaml`
with the `trunk` section sits beside them for `backbone.run_trunk_config`. The trunk's
closing BatchNorm (the `final` endpoint) gets no gradient here, since block 4 reads
`block3`, but its moving statistics are learned, so `final` is still well scaled.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict

import tensorflow as tf
import yaml
from absl import logging

from mtssl_tf.configs.base import ConfigError, to_plain, validate_all
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import backbone, classification
from mtssl_tf.evaluation.protocol import Context, Protocol
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk.block4 import Block4
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

NAME = 'supervised'


@dataclasses.dataclass
class SupervisedConfig(classification.ClassifierTrainingConfig):
  """The supervised baseline.

  The labelled-image, SGD and loop fields come from `ClassifierTrainingConfig`, with He
  et al. 2016's ImageNet schedule as defaults here.

  Attributes:
    epoch_size: training images per epoch, for the decay schedule; 0 counts them once.
    flip: random horizontal flips at training.
    steps: training steps (90 ImageNet epochs at batch 256, He et al. 2016).
    learning_rate: initial momentum-SGD learning rate (He et al. 2016: 0.1 at batch 256).
    lr_decay_factor: the learning rate is multiplied by this every `epochs_per_decay` (0.94).
    epochs_per_decay: staircase interval in epochs (2).
    weight_decay: L2 weight decay on every kernel (He et al. 2016: 1e-4).
    seed: initialisation (`run_supervised` sets the global Python/NumPy/TF seeds), data
      order and crops.
  """

  epoch_size: int = 0
  flip: bool = True
  steps: int = 450_000
  learning_rate: float = 0.1
  lr_decay_factor: float = 0.94
  epochs_per_decay: float = 2.0
  weight_decay: float = 1e-4

  def validate(self) -> None:
    classification.check_training_fields(self, NAME)
    if self.epoch_size < 0:
      raise ConfigError(f'supervised.epoch_size: must be >= 0 (0 counts the images), got {self.epoch_size}')
    if self.epochs_per_decay <= 0:
      raise ConfigError(f'supervised.epochs_per_decay: must be positive, got {self.epochs_per_decay}')


def learning_rate_schedule(
  cfg: SupervisedConfig, epoch_size: int
) -> tf.keras.optimizers.schedules.LearningRateSchedule:
  """lr * decay ** floor(step / (epochs_per_decay * epoch_size / batch_size)), the step counting from 0."""
  steps_per_decay = cfg.epochs_per_decay * epoch_size / cfg.batch_size
  return tf.keras.optimizers.schedules.ExponentialDecay(
    cfg.learning_rate, steps_per_decay, cfg.lr_decay_factor, staircase=True
  )


class SupervisedModel(tf.keras.Model):
  """Trunk (blocks 1-3) + block 4 + global average pool + linear softmax."""

  def __init__(self, trunk_config: TrunkConfig, num_classes: int, precision: str = 'float32'):
    """Creates the layers; `trunk` is an attribute so checkpoints hold it at `model/trunk`."""
    super().__init__(name='supervised')
    self.trunk = ResNetV2Trunk(trunk_config, precision=precision)
    self.block4 = Block4(trunk_config, dtype=precision)
    self.classifier = tf.keras.layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01), name='logits', dtype='float32'
    )

  def call(self, images, training=None):
    x = self.block4(self.trunk(images, training=training)['block3'], training=training)
    return self.classifier(tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]))


def run_supervised(
  cfg: SupervisedConfig,
  trunk_config: TrunkConfig,
  model_dir: str,
  train_spec: str = '',
  validation_spec: str = '',
  preprocessing: str = 'rgb',
  precision: str = 'float32',
  progress: bool = True,
) -> Dict:
  """Trains the supervised baseline (resuming its last checkpoint), evaluates it, writes results.json.

  Everything goes to `<model_dir>/eval/supervised` (see the module docstring).

  Args:
    cfg: the protocol.
    trunk_config: shape of the trunk (block 4 follows its width).
    model_dir: run folder.
    train_spec: training source (overrides `cfg.train_source`).
    validation_spec: validation source (overrides `cfg.validation_source`).
    preprocessing: 'rgb' or 'harmonized' input.
    precision: Keras dtype policy of trunk and block 4 ('float32' or 'mixed_bfloat16';
      there is no loss scaling for 'mixed_float16').
    progress: log progress lines.

  Returns:
    The results: top1, top5, `trunk_source` (for `backbone.load_trunk`), `protocol`, `counts`.

  Raises:
    ConfigError: a bad config value (named).
    ValueError: an unsupported precision, or a checkpoint that does not fit the config.
    FloatingPointError: a non-finite loss, naming the step.
  """
  validate_all(cfg)
  validate_all(trunk_config)
  # The baseline is blocks 1-3 plus a ResNet-v2 block 4 (Doersch's "ImageNet labels" row).
  backbone.check_trunk_kind(NAME, trunk_config.kind, ('resnet_v2',), 'it trains ResNet-v2 blocks 1-4 on labels')
  if precision not in ('float32', 'mixed_bfloat16'):
    raise ValueError(f"supervised baseline: precision must be 'float32' or 'mixed_bfloat16', got {precision!r}")
  train_spec, validation_spec = classification.resolve_sources(cfg, train_spec, validation_spec, NAME)
  out_dir = backbone.eval_dir(model_dir, NAME)
  to_input = backbone.input_fn(preprocessing)
  epoch_size, num_classes = cfg.epoch_size, cfg.num_classes
  if not epoch_size or not num_classes:
    counted, labels = classification.count_labels(train_spec, cfg.label_offset, cfg.data_dir)
    epoch_size, num_classes = epoch_size or counted, num_classes or labels
  with tf.io.gfile.GFile(os.path.join(out_dir, 'config.yaml'), 'w') as f:
    yaml.safe_dump({'trunk': to_plain(trunk_config), NAME: to_plain(cfg)}, f, sort_keys=False)

  tf.keras.utils.set_random_seed(cfg.seed)
  model = SupervisedModel(trunk_config, num_classes, precision)
  model(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False)
  schedule = learning_rate_schedule(cfg, epoch_size)
  optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)
  kernels = [v for v in model.trainable_variables if 'kernel' in v.name]
  tune = FineTune(NAME, out_dir, steps=cfg.steps, log_every_steps=cfg.log_every_steps,
                  checkpoint_every_steps=cfg.checkpoint_every_steps, progress=progress)  # fmt: skip
  tune.restore(optimizer, model.trainable_variables, model=model)

  @tf.function
  def train_step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message='training label >= num_classes')
    with tf.GradientTape() as tape:
      logits = model(to_input(batch['image']), training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      total = loss + cfg.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
    grads = tape.gradient(total, model.trainable_variables)
    # The trunk's closing BatchNorm is not on the loss path (block 4 reads `block3`).
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
    return total, {
      'loss': loss,
      'train_top1': tf.reduce_mean(tf.cast(classification.correct_at_k(logits, labels, 1), tf.float32)),
    }

  @tf.function(reduce_retracing=True)
  def predict(images):
    return {NAME: model(to_input(images), training=False)}

  writer = tune.writer
  scores, validation_count, train_skipped, validation_skipped = classification.train_and_evaluate(
    tune, cfg, train_step, predict, num_classes, train_spec, validation_spec, schedule=schedule, flip=cfg.flip,
  )  # fmt: skip
  step = int(optimizer.iterations.numpy())
  with writer.as_default(step=step):
    for metric, value in scores[NAME].items():
      tf.summary.scalar(f'{NAME}/{metric}', value)
  writer.flush()
  results = {
    'top1': scores[NAME]['top1'],
    'top5': scores[NAME]['top5'],
    'trunk_source': out_dir,
    'checkpoint': tune.latest_checkpoint,
    'protocol': {
      'model': 'ResNet-v2 trunk (blocks 1-3) + block 4 + global average pool + linear softmax, from random init',
      'optimizer': f'momentum SGD {cfg.momentum}, lr {cfg.learning_rate} x {cfg.lr_decay_factor} every '
      f'{cfg.epochs_per_decay:g} epochs (staircase), weight decay {cfg.weight_decay:g}',
      'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}'
      + (', horizontal flip' if cfg.flip else ''),
      'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
      'preprocessing': preprocessing,
    },
    'counts': {
      'steps': step,
      'batch_size': cfg.batch_size,
      'epoch_size': epoch_size,
      'epochs': step * cfg.batch_size / epoch_size,
      'num_classes': num_classes,
      'validation_examples': validation_count,
      'skipped_train_records': train_skipped,
      'skipped_validation_records': validation_skipped,
    },
  }
  path = backbone.write_results(model_dir, NAME, results)
  if progress:
    logging.info('supervised baseline: top1 %.4f, top5 %.4f -> %s', results['top1'], results['top5'], path)
  return results


class SupervisedProtocol(Protocol):
  """The "ImageNet labels" row: block 1-4 trained from scratch on labels, then scored."""

  name = NAME
  summary = 'the "ImageNet labels" baseline: the trunk and block 4 trained on labels (ignores --init)'
  config_class = SupervisedConfig
  source_fields = ('train_source', 'validation_source')
  world_sources = ('images_train', 'images_validation')
  headline = ('top1', 'top5')
  uses_init = False

  def run(self, ctx: Context) -> Dict:
    return run_supervised(ctx.section, ctx.config.trunk, ctx.model_dir, ctx.train_spec, ctx.test_spec,
                          precision=ctx.precision, progress=ctx.progress)  # fmt: skip
