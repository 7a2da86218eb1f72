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
from typing import Any, Dict

import tensorflow as tf
import yaml

from mtssl_tf.configs.base import ConfigError, to_plain, validate_all
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import backbone, classification
from mtssl_tf.evaluation.classification import ClassifierProtocol
from mtssl_tf.evaluation.protocol import Context, Trainee
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
    seed: initialisation (`SupervisedProtocol` sets the global Python/NumPy/TF seeds), data
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


class SupervisedProtocol(ClassifierProtocol):
  """The "ImageNet labels" row: block 1-4 trained from scratch on labels, then scored.

  Everything goes to `<model_dir>/eval/supervised` (see the module docstring). Results:
  top1, top5, `trunk_source` (for `backbone.load_trunk`), `protocol`, `counts`. The
  precision is float32 or mixed_bfloat16 (there is no loss scaling for mixed_float16).
  """

  name = NAME
  summary = 'the "ImageNet labels" baseline: the trunk and block 4 trained on labels (ignores --init)'
  config_class = SupervisedConfig
  source_fields = ('train_source', 'validation_source')
  world_sources = ('images_train', 'images_validation')
  headline = ('top1', 'top5')
  uses_init = False

  def prepare(self, ctx: Context) -> Context:
    validate_all(ctx.section)
    validate_all(ctx.trunk_config)
    # The baseline is blocks 1-3 plus a ResNet-v2 block 4 (Doersch's "ImageNet labels" row).
    backbone.check_trunk_kind(NAME, ctx.trunk_config.kind, ('resnet_v2',), 'it trains ResNet-v2 blocks 1-4 on labels')
    if ctx.precision not in ('float32', 'mixed_bfloat16'):
      raise ValueError(f"supervised baseline: precision must be 'float32' or 'mixed_bfloat16', got {ctx.precision!r}")
    return ctx

  def augmentation(self, cfg: SupervisedConfig):
    return None, cfg.flip

  def build(self, ctx: Context) -> Trainee:
    cfg: SupervisedConfig = ctx.section
    self.count_classes(ctx, count_images=not cfg.epoch_size)
    self.epoch_size = cfg.epoch_size or self.train_count
    with tf.io.gfile.GFile(os.path.join(ctx.out_dir, 'config.yaml'), 'w') as f:
      yaml.safe_dump({'trunk': to_plain(ctx.trunk_config), NAME: to_plain(cfg)}, f, sort_keys=False)
    tf.keras.utils.set_random_seed(cfg.seed)
    self.model = SupervisedModel(ctx.trunk_config, self.num_classes, ctx.precision)
    self.model(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False)
    return Trainee({'model': self.model}, self.model.trainable_variables)

  def schedule(self, ctx: Context):
    return learning_rate_schedule(ctx.section, self.epoch_size)

  def train_step(self, ctx: Context, trainee: Trainee, optimizer):
    model, to_input = self.model, ctx.input_fn()
    # The trunk's closing BatchNorm is not on the loss path (block 4 reads `block3`): it gets no update.
    return classification.make_softmax_step(lambda images: model(to_input(images), training=True),
                                            model.trainable_variables, optimizer, self.num_classes,
                                            ctx.section.weight_decay)  # fmt: skip

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: SupervisedConfig = ctx.section
    model, to_input = self.model, ctx.input_fn()

    @tf.function(reduce_retracing=True)
    def predict(images):
      return {NAME: model(to_input(images), training=False)}

    scores, counts = self.test_heads(ctx, tune, stats, predict, {NAME: ''})
    del counts['train_examples']  # The epoch size stands for it.
    counts.update(epoch_size=self.epoch_size, epochs=tune.step * cfg.batch_size / self.epoch_size)
    return {
      'top1': scores[NAME]['top1'],
      'top5': scores[NAME]['top5'],
      'trunk_source': ctx.out_dir,
      'checkpoint': tune.latest_checkpoint,
      'protocol': {
        'model': 'ResNet-v2 trunk (blocks 1-3) + block 4 + global average pool + linear softmax, from random init',
        'optimizer': f'momentum SGD {cfg.momentum}, lr {cfg.learning_rate} x {cfg.lr_decay_factor} every '
        f'{cfg.epochs_per_decay:g} epochs (staircase), weight decay {cfg.weight_decay:g}',
        'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}'
        + (', horizontal flip' if cfg.flip else ''),
        'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
        'preprocessing': ctx.preprocessing,
      },
      'counts': counts,
    }


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
  """`SupervisedProtocol` for a trunk shape, outside `mtssl-eval`; sources default to the section's.

  Raises:
    ConfigError: a bad config value or a missing source (named).
    ValueError: an unsupported precision, or a checkpoint that does not fit the config.
    FloatingPointError: a non-finite loss, naming the step.
  """
  ctx = SupervisedProtocol.direct_context(
    cfg, model_dir, train_spec, validation_spec, trunk_config=trunk_config, preprocessing=preprocessing,
    precision=precision, progress=progress,
  )  # fmt: skip
  return SupervisedProtocol().run(ctx)
