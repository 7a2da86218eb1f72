"""VOC07 multi-label classification by fine-tuning every layer (Noroozi et al. 2018, Tables 1-3).

Noroozi et al. 2018 (§5, "Fine-Tuning on PASCAL VOC") evaluate classification "on VOC2007
using the framework of [16]" (Krähenbühl, Doersch, Donahue & Darrell 2016, "Data-dependent
initializations", released as github philkr/voc-classification): "the weights of the
convolutional layers of the target AlexNet model are copied from the corresponding layers
of the AlexNet model trained on the pretext task, and the fully connected layers are
randomly initialized" (§5). This module is that protocol; the constants below are the
defaults of philkr/voc-classification `src/train_cls.py` (commit c2097796):

* Network. The conv layers come from the network under evaluation and every layer is
  trained (`--train-from` None: `setLR(t, 1, 2)`, `setDecay(t, 1, 1)` on every layer, i.e.
  biases at twice the rate, weights and biases decayed). For an AlexNet student folder
  (`mtssl-transfer`'s `<run>/student` or `<run>/distill`, `student.json` architecture
  'alexnet': CaffeNet's layers, `transfer.models.AlexNet`) conv1..conv5
  (with their BatchNorms, if the student has them) are copied and new fc6, fc7 (4096 units
  times the student's width, ReLU, dropout 0.5, as AlexNet's) and fc8 (20 outputs) are
  drawn from N(0, 0.01) with bias 0.1. That is Noroozi §5's rule ("the fully connected
  layers are randomly initialized") with the reference's draw: `train_cls.py` itself
  copies fc6/fc7 and re-initialises only the layers after `--random-from drop7` (fc8)
  that way; `copy_fc` selects that variant (fc6/fc7 and their BatchNorms copied from
  the student, which needs the student's crop size and fc units). For our ResNet-v2 trunk
  (blocks 1-3) the head is a documented choice: global average pooling of `final` (block
  3 after BN-ReLU) and a new linear fc8 drawn the same way, the classifier form of He et
  al.'s ResNets (a trunk has no fc6/fc7 to copy or re-create). `freeze_conv1` keeps the
  first conv fixed (off by default: the reference trains all layers; Noroozi lock conv1
  only for detection).
* Loss. 20 sigmoid cross-entropies summed over classes, divided by the batch size;
  entries of 'difficult'-only classes are ignored (`python_layers.SigmoidCrossEntropyLoss`
  with `ignore_label=255`; `data.VOCData` maps the devkit's 0 = difficult to 255). The
  targets follow the VOC07 devkit from the boxes (`svm.image_targets`): 1 if a
  non-difficult box of the class is in the image, ignore if only difficult ones are,
  0 otherwise.
* Solver (`train_cls.py` arguments and its `Solver(...)` call): SGD, momentum 0.9
  (`solver.py`'s SGD default), base rate 0.001, batch 16, 80,000 iterations, step policy
  gamma 0.5 every 10,000, weight decay 1e-6, gradients clipped to global L2 norm 10
  (Caffe's `clip_gradients`, applied to the loss gradients before decay is added).
* Input (`transform_param` of the data layer, and philkr/caffe's TransformationLayer):
  a square window of side s * crop (s uniform in [0.5, 2], capped so the window fits the
  image), at a uniform position, mirrored with probability 1/2, bilinearly resampled to
  crop x crop (227 for AlexNet, `model.input_dim`). Pixels go through the network's own
  input convention (the trunk's `preprocessing`, or [-1, 1] RGB for a student) in place
  of Caffe's BGR mean subtraction.
* Test. The reference runs the same random transformation at test time and sums the
  fc8 scores of N_CROP in (1, 10) passes. Here each test image gets `test_views` random
  views drawn exactly as in training, from a stateless seed (seed, image index), and its
  score is the MEAN of the views' logits (the same ranking as the reference's sum);
  'mAP_1view' reports the first view alone (N_CROP = 1).
* AP. The brief of this project asks for VOC07's 11-point AP per class
  (`voc_metrics.eleven_point_average_precision`), difficult-only images left out: that
  is 'mAP'. The reference itself reports sklearn's non-interpolated average precision
  with scores lowered by 1e-5 at positives, so that tied scores rank negatives first;
  'mAP_reference' is that AP, and both use the same pessimistic tie rule. mAP is the mean
  over classes with test positives (the reference averages all 20; VOC07 test has
  positives for all 20).

Noroozi report (Table 3, VOC07 classification mAP %): Jigsaw++ 69.8, CC+Jigsaw++ 69.9,
CC+vgg-Jigsaw++ 72.5, CC+HOG 70.2, supervised (ImageNet labels) 79.9, random 53.3 (as
reported by Pathak et al. 2016, their ref. [27]).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import pipeline
from mtssl_tf.data.detection import VOC_CLASSES, detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import random_init, voc_metrics
from mtssl_tf.evaluation.protocol import Column, Context, NetworkFineTuneProtocol
from mtssl_tf.evaluation.svm import IGNORE, PRESENT, VocSourcesConfig, image_targets, mean_ap
from mtssl_tf.train.finetune import FineTune, LoopConfig, SGDConfig
from mtssl_tf.trunk import alexnet as caffenet

NAME = 'voc07_cls'


@dataclasses.dataclass
class VocClassificationConfig(VocSourcesConfig, LoopConfig, SGDConfig):
  """VOC07 classification fine-tuning (module docstring); defaults are philkr/voc-classification's.

  The data fields come from `VocSourcesConfig`, the loop and optimizer ones from
  `LoopConfig` and `SGDConfig`.

  Attributes:
    crop_size: network input side (227: Caffe AlexNet's input_dim).
    min_scale: smallest window side, in crops (train_cls.py --min-scale 0.5).
    max_scale: largest window side, in crops (--max-scale 2.0), capped by the image.
    test_views: random views averaged per test image (the reference's N_CROP = 10).
    batch_size: images per step (-bs 16).
    lr_decay_steps: the rate is multiplied by `lr_decay_factor` every this many steps
      (Solver stepsize 10000, gamma 0.5).
    clip_gradient_norm: global L2 norm the loss gradients are clipped to (clip_gradients 10);
      0 disables.
    bias_lr_multiplier: biases' rate multiplier (setLR(t, 1, 2)).
    freeze_conv1: keep the first conv layer fixed (the reference trains it).
    copy_fc: AlexNet students: copy fc6/fc7 too (train_cls.py's --random-from drop7); False
      draws them afresh (Noroozi §5).
    fc_units: AlexNet fc6/fc7 units before the student's width multiplier.
    dropout: dropout rate after AlexNet's fc6 and fc7.
    init_stddev: std of the new fc layers' weights (train_cls.py: N(0, 0.01)).
    init_bias: the new fc layers' bias (train_cls.py: 0.1).
    shuffle_buffer: training examples shuffled together.
    seed: training order and test views.
  """

  crop_size: int = 227
  min_scale: float = 0.5
  max_scale: float = 2.0
  test_views: int = 10
  batch_size: int = 16
  lr_decay_steps: int = 10000
  clip_gradient_norm: float = 10.0
  bias_lr_multiplier: float = 2.0
  freeze_conv1: bool = False
  copy_fc: bool = False
  fc_units: int = 4096
  dropout: float = 0.5
  init_stddev: float = 0.01
  init_bias: float = 0.1
  shuffle_buffer: int = 1000
  seed: int = 0
  # The shared pieces' defaults, set to train_cls.py's (module docstring).
  steps: int = 80000
  checkpoint_every_steps: int = 5000
  learning_rate: float = 0.001
  lr_decay_factor: float = 0.5
  weight_decay: float = 1e-6

  def validate(self) -> None:
    self.check_loop(NAME)
    self.check_sgd(NAME)
    for key in ('num_classes', 'crop_size', 'test_views', 'batch_size', 'lr_decay_steps', 'fc_units', 'shuffle_buffer'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{NAME}.{key}: must be positive, got {getattr(self, key)}')
    if not 0 < self.min_scale <= self.max_scale:
      raise ConfigError(f'{NAME}.min_scale, max_scale: need 0 < min <= max, got {self.min_scale}, {self.max_scale}')
    if not 0 <= self.dropout < 1:
      raise ConfigError(f'{NAME}.dropout: must be in [0, 1), got {self.dropout}')
    for key in ('clip_gradient_norm', 'bias_lr_multiplier', 'init_stddev'):
      if getattr(self, key) < 0:
        raise ConfigError(f'{NAME}.{key}: must be >= 0, got {getattr(self, key)}')


# ----------------------------------------------------------------------------- views and data


def random_view(image: tf.Tensor, crop: int, min_scale: float, max_scale: float, u: tf.Tensor) -> tf.Tensor:
  """One view of the module docstring from four uniforms `u` in [0, 1): scale, y, x, mirror.

  The window side is s * crop with s = lo + u[0] (hi - lo), hi = min(max_scale, H / crop,
  W / crop), lo = min(min_scale, hi); its top-left corner is u[1] (H - side), u[2] (W - side);
  it is mirrored when u[3] < 0.5. Its side pixels are sampled bilinearly at crop evenly spaced
  positions from its first to its last pixel (a window of side crop at an integer corner is
  copied exactly). Returns uint8 [crop, crop, 3].
  """
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  hi = tf.minimum(tf.cast(max_scale, tf.float32), tf.reduce_min(size) / crop)
  lo = tf.minimum(tf.cast(min_scale, tf.float32), hi)
  side = tf.clip_by_value((lo + u[0] * (hi - lo)) * crop, 1.0, tf.reduce_min(size))
  y0, x0 = u[1] * (size[0] - side), u[2] * (size[1] - side)
  # crop_and_resize maps box coordinate c to pixel c * (H - 1): samples y0 + i (side - 1) / (crop - 1).
  last = tf.maximum(size - 1.0, 1.0)
  box = tf.stack([y0 / last[0], x0 / last[1], (y0 + side - 1.0) / last[0], (x0 + side - 1.0) / last[1]])
  view = tf.image.crop_and_resize(tf.cast(image, tf.float32)[None], box[None], [0], [crop, crop])[0]
  view = tf.cond(u[3] < 0.5, lambda: tf.reverse(view, [1]), lambda: view)
  return tf.cast(tf.round(tf.clip_by_value(view, 0.0, 255.0)), tf.uint8)


def eval_views(image: tf.Tensor, index: tf.Tensor, cfg: VocClassificationConfig) -> tf.Tensor:
  """uint8 [test_views, crop, crop, 3]: view v uses the stateless uniforms of seed (cfg.seed, index)'s row v."""
  seed = tf.stack([tf.cast(cfg.seed, tf.int64), tf.cast(index, tf.int64)])
  u = tf.random.stateless_uniform([cfg.test_views, 4], seed)
  return tf.stack(
    [random_view(image, cfg.crop_size, cfg.min_scale, cfg.max_scale, u[v]) for v in range(cfg.test_views)]
  )


def _targets(x: Dict[str, tf.Tensor], num_classes: int) -> tf.Tensor:
  return image_targets(x['classes'], x['difficult'], num_classes)


def training_dataset(spec: str, cfg: VocClassificationConfig, start_step: int = 0) -> tf.data.Dataset:
  """Endless batches {'image': uint8 random views, 'targets': int32 [B, classes] (1 / 0 / -1 ignore)}.

  Reproducible: file order and shuffling are seeded, and example k of the stream gets the
  stateless uniforms of seed (cfg.seed, k). A run resumed at `start_step` shuffles with a
  seed offset by it and continues the example count, so it does not replay the views the
  first part of the run saw (the examples are not the ones an uninterrupted run would
  have drawn; skipping the stream would decode every image seen so far).
  """
  options = ReadOptions(data_dir=cfg.data_dir or None, shuffle_files=True, seed=cfg.seed + start_step)
  first = start_step * cfg.batch_size

  def view(k, x):
    u = tf.random.stateless_uniform([4], tf.stack([tf.cast(cfg.seed, tf.int64), k + first]))
    out = {'image': random_view(x['image'], cfg.crop_size, cfg.min_scale, cfg.max_scale, u),
           'targets': _targets(x, cfg.num_classes)}  # fmt: skip
    if pipeline.SKIPPED_KEY in x:
      out[pipeline.SKIPPED_KEY] = x[pipeline.SKIPPED_KEY]
    return out

  ds = detection_dataset(spec, options).repeat().shuffle(cfg.shuffle_buffer, seed=cfg.seed + start_step)
  ds = ds.enumerate().map(view, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(spec: str, cfg: VocClassificationConfig, batch_size: int) -> tf.data.Dataset:
  """Batches {'views': uint8 [B, test_views, crop, crop, 3], 'targets': [B, classes]}, in file order."""
  ds = detection_dataset(spec, ReadOptions(data_dir=cfg.data_dir or None)).enumerate()
  ds = ds.map(lambda i, x: {'views': eval_views(x['image'], i, cfg), 'targets': _targets(x, cfg.num_classes)})
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def average_views(logits_fn: Callable[[tf.Tensor], tf.Tensor], views: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """[B, V, crop, crop, 3] -> (mean of the V views' logits [B, C], the first view's logits [B, C])."""
  shape = tf.shape(views)
  flat = tf.reshape(views, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))
  logits = tf.cast(logits_fn(flat), tf.float32)
  logits = tf.reshape(logits, [shape[0], shape[1], -1])
  return tf.reduce_mean(logits, axis=1), logits[:, 0]


# ----------------------------------------------------------------------------- AP


def _ranked(scores: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, int]:
  """Positives in rank order (descending score; ties: negatives first, the reference's -1e-5 * gt), and count."""
  keep = targets != IGNORE
  scores, positive = np.asarray(scores, np.float64)[keep], targets[keep] == PRESENT
  order = np.lexsort((positive, -scores))
  return positive[order], int(positive.sum())


def eleven_point_ap(scores: np.ndarray, targets: np.ndarray) -> float:
  """VOC07 11-point AP of one class (targets 1 / 0 / -1 ignored); NaN without positives."""
  ranked, count = _ranked(scores, targets)
  if not count:
    return float('nan')
  precision, recall = voc_metrics.precision_recall(ranked, count)
  return voc_metrics.eleven_point_average_precision(precision, recall)


def reference_ap(scores: np.ndarray, targets: np.ndarray) -> float:
  """Non-interpolated AP (sklearn's average_precision_score, as train_cls.py): mean precision at each positive."""
  ranked, count = _ranked(scores, targets)
  if not count:
    return float('nan')
  precision = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
  return float(precision[ranked].sum() / count)


# ----------------------------------------------------------------------------- networks


def _new_fc_initializers(cfg: VocClassificationConfig) -> Dict[str, Any]:
  return {'kernel_initializer': tf.keras.initializers.RandomNormal(stddev=cfg.init_stddev, seed=cfg.seed),
          'bias_initializer': tf.keras.initializers.Constant(cfg.init_bias)}  # fmt: skip


class TrunkClassifier(tf.keras.Model):
  """ResNet-v2 trunk -> global average pooling of `final` -> new linear fc8 (the documented head choice)."""

  def __init__(self, trunk, cfg: VocClassificationConfig, to_input: Callable[[tf.Tensor], tf.Tensor]):
    super().__init__(name='voc07_trunk_classifier')
    self.trunk = trunk
    self.fc8 = tf.keras.layers.Dense(cfg.num_classes, name='fc8_cls', dtype='float32', **_new_fc_initializers(cfg))
    self._to_input = to_input

  def call(self, images, training=None):
    final = self.trunk(self._to_input(images), training=training)['final']
    return self.fc8(tf.reduce_mean(tf.cast(final, tf.float32), axis=[1, 2]))

  def conv1_variables(self) -> List[tf.Variable]:
    norm = self.trunk.first_norm  # Any trunk kind (trunk.registry's interface).
    return list(self.trunk.first_conv.trainable_variables) + (list(norm.trainable_variables) if norm else [])


class AlexNetClassifier(tf.keras.Model):
  """A student AlexNet's conv1..conv5 (copied) + new fc6, fc7 (ReLU, dropout) and fc8."""

  def __init__(self, student, meta: Dict[str, Any], cfg: VocClassificationConfig,
               to_input: Optional[Callable[[tf.Tensor], tf.Tensor]] = None):  # fmt: skip
    """Copies `student`'s conv layers (a student, or a run's AlexNet trunk network: the same layers).

    Args:
      student: has `convs`, `norms` (and `fcs` for `copy_fc`), `width`, `batch_norm`.
      meta: the student's `student.json` ({} for a run's trunk).
      cfg: the protocol's config.
      to_input: uint8 images -> network input; None: [-1, 1] RGB, the students' convention.
    """
    super().__init__(name='voc07_alexnet_classifier')
    self.to_input = to_input
    from mtssl_tf.transfer.models import AlexNet

    # The student's own shape (CaffeNet layers, `transfer.models.AlexNet`): width, BatchNorm or LRN, and conv
    # groups (a deepcontext-style Context trunk has none); conv1's padding is not copied: classification runs
    # the standard unpadded stride-4 conv1 (Noroozi §5), its 11x11 weights fit either way.
    self.net = AlexNet(cfg.num_classes, width=student.width, batch_norm=student.batch_norm, dropout=cfg.dropout,
                       fc_units=cfg.fc_units, name='alexnet', groups=getattr(student, 'groups', 2))  # fmt: skip
    caffenet.build_at(self.net, cfg.crop_size, f'{NAME}.crop_size')
    caffenet.copy_conv_layers(student, self.net)  # Copied: the conv layers (and BatchNorms) of the evaluated network.
    fresh = [self.net.classifier]
    if cfg.copy_fc:
      for fc in ('fc6', 'fc7'):
        try:
          self.net.fcs[fc].set_weights(student.fcs[fc].get_weights())
          if fc in self.net.norms:
            self.net.norms[fc].set_weights(student.norms[fc].get_weights())
        except ValueError as e:
          raise ConfigError(f'{NAME}.copy_fc: the student\'s {fc} does not fit (crop_size {cfg.crop_size} vs '
                            f'its {meta.get("input_size")}, fc_units {cfg.fc_units}): {e}') from None  # fmt: skip
    else:
      fresh = [self.net.fcs['fc6'], self.net.fcs['fc7'], self.net.classifier]
    init = _new_fc_initializers(cfg)
    for layer in fresh:  # New: drawn afresh.
      layer.kernel.assign(init['kernel_initializer'](layer.kernel.shape))
      if layer.bias is not None:
        layer.bias.assign(tf.fill(layer.bias.shape, cfg.init_bias))

  def network_input(self, images: tf.Tensor) -> tf.Tensor:
    """uint8 images -> the network's input."""
    from mtssl_tf.trunk.inputs import preprocess

    return preprocess(images, 'rgb') if self.to_input is None else self.to_input(images)

  def call(self, images, training=None):
    from mtssl_tf.transfer.models import LOGITS

    return tf.cast(self.net(self.network_input(images), training=training)[LOGITS], tf.float32)

  def conv1_variables(self) -> List[tf.Variable]:
    norm = self.net.norms.get('conv1')
    return list(self.net.convs['conv1'].trainable_variables) + (list(norm.trainable_variables) if norm else [])


def student_meta(init: str) -> Dict[str, Any]:
  """The `student.json` of a transfer student folder, or {} when `init` is not one."""
  from mtssl_tf.transfer.student import META

  path = os.path.join(init, META) if init else ''
  if not path or not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def build_classifier(ctx: Context) -> Tuple[tf.keras.Model, str]:
  """The network to fine-tune and a description of where its conv layers came from."""
  cfg: VocClassificationConfig = ctx.section
  meta = student_meta(ctx.init)
  if meta and meta.get('architecture') != 'resnet_v2_trunk':
    if meta.get('architecture') != 'alexnet':
      raise ConfigError(f'init: student {ctx.init} is a {meta.get("architecture")!r}; {NAME} fine-tunes AlexNet '
                        'students and ResNet-v2 trunks')  # fmt: skip
    from mtssl_tf.transfer.student import load_student

    model = AlexNetClassifier(load_student(ctx.init), meta, cfg)
    fcs = 'fc6/fc7 copied, new fc8' if cfg.copy_fc else 'new fc6/fc7/fc8'
    return model, f'AlexNet student conv1-conv5 from {ctx.init}; {fcs}'
  trunk = ctx.trunk()
  if trunk.kind == 'alexnet':
    # Noroozi §5: the conv layers of the AlexNet trained on the pretext task go into the standard
    # AlexNet (a Jigsaw tile network's stride-2 conv1 weights too: same kernel shape, stride 4 here),
    # fc layers new. A run's trunk has no fc6/fc7 of its own to copy (they are its task's head).
    if cfg.copy_fc:
      raise ConfigError(f'{NAME}.copy_fc: the AlexNet trunk of run {ctx.init} has no fc6/fc7 (they belong to its '
                        'task head); copy_fc needs a student folder')  # fmt: skip
    model = AlexNetClassifier(trunk.net, {}, cfg, ctx.input_fn())
    return model, (f'AlexNet trunk ({trunk.net.variant} variant) conv1-conv5 from {ctx.init} in the standard '
                   'AlexNet; new fc6/fc7/fc8')  # fmt: skip
  model = TrunkClassifier(trunk, cfg, ctx.input_fn())
  model(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8), training=False)
  return model, f'{trunk.kind} trunk from {ctx.init}; global average pooling of final, new fc8'


# ----------------------------------------------------------------------------- training and test


def make_train_step(model: tf.keras.Model, optimizer, cfg: VocClassificationConfig, variables: List[tf.Variable]):
  """batch -> (loss + decay, {'loss'}): one SGD update in Caffe's order (clip, add decay, bias rate x2)."""
  decayed = [v for v in variables if 'kernel' in v.name or 'bias' in v.name]  # Caffe decays weights and biases.
  multipliers = [cfg.bias_lr_multiplier if 'bias' in v.name else 1.0 for v in variables]

  @tf.function
  def step(batch):
    targets = tf.cast(batch['targets'], tf.float32)
    mask = tf.cast(batch['targets'] != IGNORE, tf.float32)
    with tf.GradientTape() as tape:
      logits = model(batch['image'], training=True)
      per_entry = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets * mask, logits=logits) * mask
      loss = tf.reduce_sum(per_entry) / tf.cast(tf.shape(logits)[0], tf.float32)
    grads = tape.gradient(loss, variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    if cfg.clip_gradient_norm > 0:
      grads, _ = tf.clip_by_global_norm(grads, cfg.clip_gradient_norm)
    decay_ids = {id(v) for v in decayed}
    grads = [g + cfg.weight_decay * v if id(v) in decay_ids else g for g, v in zip(grads, variables)]
    optimizer.apply_gradients([(g * m, v) for g, m, v in zip(grads, multipliers, variables)])
    decay = tf.add_n([tf.nn.l2_loss(v) for v in decayed]) if decayed else tf.constant(0.0)
    return loss + cfg.weight_decay * decay, {'loss': loss}

  return step


def evaluate(model: tf.keras.Model, dataset: tf.data.Dataset) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean-of-views scores [N, C], first-view scores [N, C], targets [N, C]) over the test set."""

  @tf.function(reduce_retracing=True)
  def scores(views):
    return average_views(lambda images: model(images, training=False), views)

  mean, first, targets = [], [], []
  for batch in dataset:
    m, f = scores(batch['views'])
    mean.append(m.numpy())
    first.append(f.numpy())
    targets.append(batch['targets'].numpy())
  if not targets:
    raise ValueError(f'{NAME}: the test source holds no images')
  return np.concatenate(mean), np.concatenate(first), np.concatenate(targets)


def per_class(ap_fn, scores: np.ndarray, targets: np.ndarray) -> List[float]:
  """`ap_fn` of each class column."""
  return [ap_fn(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]


class Voc07ClassificationProtocol(NetworkFineTuneProtocol):
  """Noroozi et al. 2018 Tables 1-3 / Krähenbühl et al. 2016: VOC07 classification, every layer fine-tuned.

  Writes `<out_dir>/results.json` and `test_scores.npz`, resuming from `<out_dir>/checkpoints`.
  """

  name = NAME
  summary = 'VOC07 multi-label classification, every layer fine-tuned (Krähenbühl et al. 2016), 10-view mAP'
  config_class = VocClassificationConfig
  world_sources = ('detection_trainval', 'detection_test')
  headline = ('mAP', 'mAP_1view', 'mAP_reference')
  columns = (Column('VOC07 cls mAP (%)', 'mAP', 100.0),)
  make_step = staticmethod(make_train_step)
  dataset = staticmethod(training_dataset)

  def network(self, ctx: Context) -> Tuple[tf.keras.Model, str]:
    model, source = build_classifier(ctx)
    if isinstance(model, AlexNetClassifier):  # A random one is initialised on the training views, every layer.
      note = random_init.initialise(
        ctx, model.net, lambda: training_dataset(ctx.train_spec, ctx.section), model.network_input
      )
      source = f'{source}; {note}' if note else source
    return model, source

  def frozen_variables(self, ctx: Context) -> List[tf.Variable]:
    return self.model.conv1_variables() if ctx.section.freeze_conv1 else []

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: VocClassificationConfig = ctx.section
    mean_scores, first_scores, targets = evaluate(self.model, eval_dataset(ctx.test_spec, cfg, cfg.batch_size))
    aps = per_class(eleven_point_ap, mean_scores, targets)
    names = list(VOC_CLASSES[: cfg.num_classes]) + [str(i) for i in range(len(VOC_CLASSES), cfg.num_classes)]
    results = {
      'mAP': mean_ap(aps),
      'mAP_1view': mean_ap(per_class(eleven_point_ap, first_scores, targets)),
      'mAP_reference': mean_ap(per_class(reference_ap, mean_scores, targets)),
      'ap': dict(zip(names, aps)),
      'protocol': {
        'network': self.source,
        'trained': 'every layer' + (' but conv1' if cfg.freeze_conv1 else ''),
        'loss': 'sigmoid cross-entropy summed over classes / batch; difficult-only classes ignored',
        'train_view': f'square window of side s*{cfg.crop_size}, s~U[{cfg.min_scale}, {cfg.max_scale}] capped to the '
        'image, uniform position, mirrored with p=1/2, resampled bilinearly',  # fmt: skip
        'test': f"mean of {cfg.test_views} random views' logits (seeded per image)",
        'ap': 'VOC07 11-point per class over non-ignored images, ties ranked negatives first; mAP over classes '
        'with test positives; mAP_reference: non-interpolated AP (philkr/voc-classification)',  # fmt: skip
        'solver': f'SGD momentum {cfg.momentum}, lr {cfg.learning_rate} x{cfg.lr_decay_factor} every '
        f'{cfg.lr_decay_steps}, batch {cfg.batch_size}, decay {cfg.weight_decay}, clip {cfg.clip_gradient_norm}',
        'init_source': ctx.init,
        'preprocessing': ctx.preprocessing,
      },
      'counts': {
        'steps': tune.step,
        'test_images': int(len(targets)),
        'num_classes': cfg.num_classes,
        'test_positives': (targets == PRESENT).sum(0).tolist(),
      },  # fmt: skip
      'train': stats,
    }
    tune.scalars({k: results[k] for k in self.headline if np.isfinite(results[k])})
    np.savez(os.path.join(ctx.out_dir, 'test_scores.npz'), scores=mean_scores, first_view=first_scores, targets=targets)
    return results
