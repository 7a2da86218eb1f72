"""Nonlinear probes: freeze AlexNet's conv1..K, retrain the rest from scratch (Noroozi et al. 2018, Table 6).

Noroozi et al. 2018 (§5.2, "Nonlinear Classification"; Table 6) evaluate "as done in [21]"
(Noroozi & Favaro 2016): "The learned weights from conv1 up to the displayed layer are
frozen. The rest of the network is randomly initialized and retrained ... All evaluations
are done with 10 croppings per image." Table 6 has one column per frozen prefix, conv1 to
conv5, fc6 and fc7, and reports top-1 on ImageNet validation. This module trains one AlexNet
per entry of `freeze_through` (each in `<out_dir>/<layer>/`, resumed from its own
checkpoints) and reports top-1 and top-5 per entry.

* Network. An AlexNet student folder (`--init=<transfer run>/student`, as `voc07_cls`
  reads it: `voc_classification.student_meta` / `AlexNetClassifier`) gives conv1..conv5
  (and fc6/fc7 when they are frozen); a pre-training run with an AlexNet trunk (`--init=<run>`
  or its checkpoint / SavedModel, `backbone.load_trunk`; Table 6's rows of self-supervised
  AlexNets, e.g. Jigsaw++ or Context trained on AlexNet) gives conv1..conv5 only (its fc
  layers belong to its task head, so conv1..conv5 are the columns it has), put into the
  standard AlexNet as Noroozi §5 and `voc07_cls` do: a Jigsaw tile network's stride-2 conv1
  kernels run at stride 4, deepcontext's padded conv1 runs unpadded (its README: evaluate in
  "a caffenet with the groups removed") and the trunk's own groups, width and BatchNorm are
  kept; `--init=random` is Table 6's Random row (an AlexNet of `width`/`batch_norm`,
  initialised on the training images by `evaluation.random_init`, Krähenbühl et al. 2016;
  with `random_init: fillers`, drawn with the fillers below, every layer). Layers up to K
  (with their BatchNorms) are frozen: not trained, and their BatchNorms run on their
  moving statistics (Keras runs a non-trainable BatchNorm in inference mode), so they are
  exactly the evaluated network's. Every later layer (conv(K+1)..conv5, fc6, fc7 and the
  new classifier fc8) is drawn afresh: weights N(0, std), constant biases, BatchNorms
  reset to the identity, with the fillers of the authors' released ImageNet classification
  net (MehdiNoroozi/JigsawPuzzleSolver `train_val_cfn_rec.prototxt`: conv std 0.01, biases
  0 / 1 / 0 / 1 / 1 for conv1-5; fc6/fc7 std 0.005, bias 1; fc8 std 0.01, bias 0).
* Solver (the same repository's `solver_cfn_rec.prototxt` and the prototxt's params):
  SGD momentum 0.9, base rate 0.01, step policy gamma 0.1 every 100,000 iterations,
  350,000 iterations, batch 256, weight decay 5e-4 on weights only (decay_mult 0 on
  biases), biases at twice the rate (lr_mult 2). Softmax cross-entropy.
* Input. Training: a random `crop_size` crop of the image resized to shorter side
  `image_size` (256), mirrored with probability 1/2 (Caffe's AlexNet data layer: random
  227 crop of a 256 x 256 image, mirror). Our documented departure: the shorter side is
  resized with the aspect kept (the project's ImageNet convention, as every other
  classification protocol here) instead of Caffe's warp to 256 x 256. The frozen fc6/fc7
  columns need `crop_size` equal to the student's input size (checked).
* Test: 10 crops (Noroozi 2018, Table 6 caption), laid out as Caffe's `oversample`
  (caffe/python/caffe/io.py): the four corner crops (top-left, top-right, bottom-left,
  bottom-right), the centre crop ((H - c) // 2, (W - c) // 2), then the same five mirrored
  left-right; the softmax probabilities of the ten are averaged (Caffe's classifier
  averages the `prob` blob over the crops). 'top1_1crop' is the centre crop alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import decode
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.evaluation import classification, random_init
from mtssl_tf.evaluation.classification import ClassifierProtocol, ClassifierTrainingConfig, check_training_fields
from mtssl_tf.evaluation.protocol import Column, Context, Trainee
from mtssl_tf.evaluation.voc_classification import AlexNetClassifier, VocClassificationConfig, student_meta
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk import alexnet as caffenet

NAME = 'nonlinear'
# Table 6's columns: the last frozen layer.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
CLASSIFIER = 'fc8'
NUM_CROPS = 10
CENTRE_CROP = 4  # Index of the unmirrored centre crop in `ten_crops`.
# (weight std, bias) of each re-initialised layer: JigsawPuzzleSolver train_val_cfn_rec.prototxt's fillers.
FILLERS = {'conv1': (0.01, 0.0), 'conv2': (0.01, 1.0), 'conv3': (0.01, 0.0), 'conv4': (0.01, 1.0),
           'conv5': (0.01, 1.0), 'fc6': (0.005, 1.0), 'fc7': (0.005, 1.0), CLASSIFIER: (0.01, 0.0)}  # fmt: skip


@dataclasses.dataclass
class NonlinearConfig(ClassifierTrainingConfig):
  """Nonlinear probes (module docstring); defaults are the authors' (JigsawPuzzleSolver cfn_rec solver and net).

  The labelled-image, SGD and loop fields come from `ClassifierTrainingConfig` (sources
  left empty read the synthetic world's classification images).

  Attributes:
    freeze_through: one training per entry: the last frozen layer (Table 6: conv1..fc7).
    fc_units: fc6/fc7 units before the network's width (AlexNet: 4096).
    dropout: dropout after fc6 and fc7 (AlexNet: 0.5).
    bias_lr_multiplier: biases' rate multiplier (the prototxt's lr_mult 2).
    width: channel multiplier of the random AlexNet (init=random only; a student keeps its own).
    batch_norm: BatchNorm in the random AlexNet (init=random only); False is the paper's
      network (CaffeNet's LRN), True our small-world option.
    crop_size: network input (Caffe's AlexNet data layer: 227).
    steps: iterations per entry (max_iter 350000).
    lr_decay_steps: staircase interval (stepsize 100000; gamma 0.1 is `lr_decay_factor`).
  """

  freeze_through: Tuple[str, ...] = LAYERS
  fc_units: int = 4096
  dropout: float = 0.5
  bias_lr_multiplier: float = 2.0
  width: float = 1.0
  batch_norm: bool = False
  crop_size: int = 227
  steps: int = 350_000
  lr_decay_steps: int = 100_000
  checkpoint_every_steps: int = 5000  # The solver's snapshot interval.

  def validate(self) -> None:
    check_training_fields(self, NAME)
    bad = [k for k in self.freeze_through if k not in LAYERS]
    if bad or not self.freeze_through or len(set(self.freeze_through)) != len(self.freeze_through):
      raise ConfigError(f'{NAME}.freeze_through: need distinct layers from {list(LAYERS)}, got '
                        f'{list(self.freeze_through)}')  # fmt: skip
    for key in ('fc_units', 'lr_decay_steps'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{NAME}.{key}: must be positive, got {getattr(self, key)}')
    if not 0 <= self.dropout < 1:
      raise ConfigError(f'{NAME}.dropout: must be in [0, 1), got {self.dropout}')
    if self.bias_lr_multiplier < 0 or self.width <= 0:
      raise ConfigError(f'{NAME}.bias_lr_multiplier / width: need >= 0 / > 0, got {self.bias_lr_multiplier}, '
                        f'{self.width}')  # fmt: skip


# ----------------------------------------------------------------------------- test crops


def ten_crops(image: tf.Tensor, crop: int) -> tf.Tensor:
  """uint8 [H, W, 3] (H, W >= crop) -> [10, crop, crop, 3] in Caffe's `oversample` order (module docstring)."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop),
             ((height - crop) // 2, (width - crop) // 2)]  # fmt: skip
  crops = tf.stack([tf.image.crop_to_bounding_box(image, y, x, crop, crop) for y, x in corners])
  crops = tf.concat([crops, tf.reverse(crops, [2])], 0)
  crops.set_shape([NUM_CROPS, crop, crop, 3])
  return crops


def eval_dataset(spec: str, cfg: NonlinearConfig) -> tf.data.Dataset:
  """Batches {'views': uint8 [B, 10, crop, crop, 3], 'label'} of the labelled images, in order, one pass."""
  options = ReadOptions(label_offset=cfg.label_offset, data_dir=cfg.data_dir or None)

  def process(record):
    image = classification.resize_shorter_side(decode.decode_rgb(record['encoded']), cfg.image_size)
    return {'views': ten_crops(image, cfg.crop_size), 'label': record['label']}

  ds = image_dataset(spec, options, process).filter(lambda x: x['label'] >= 0)
  return ds.batch(cfg.eval_batch_size).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- the network


def _layer(net, name: str) -> tf.keras.layers.Layer:
  if name == CLASSIFIER:
    return net.classifier
  return net.convs[name] if name in net.convs else net.fcs[name]


def reinitialise(net, names: List[str], seed: int) -> None:
  """Draws layers `names` of an AlexNet afresh (FILLERS; seeded per layer) and resets their BatchNorms."""
  for name in names:
    layer = _layer(net, name)
    std, bias = FILLERS[name]
    index = (*LAYERS, CLASSIFIER).index(name)
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, [seed, index], stddev=std))
    if layer.bias is not None:
      layer.bias.assign(tf.fill(layer.bias.shape, bias))
    norm = net.norms.get(name)
    if norm is not None:  # The identity: gamma 1, beta 0, moving mean 0, moving variance 1.
      for variable, value in ((norm.gamma, 1.0), (norm.beta, 0.0), (norm.moving_mean, 0.0),
                              (norm.moving_variance, 1.0)):  # fmt: skip
        if variable is not None:
          variable.assign(tf.fill(variable.shape, value))


def freeze(net, names: List[str]) -> None:
  """Makes layers `names` (and their BatchNorms, then in inference mode) non-trainable."""
  for name in names:
    _layer(net, name).trainable = False
    if name in net.norms:
      net.norms[name].trainable = False


class TrunkAlexNetClassifier(tf.keras.Model):
  """A run's AlexNet trunk conv1..conv5 (copied) in the standard AlexNet, with fc6, fc7 and fc8 (`net.classifier`).

  The standard variant at conv1 padding 0 whatever the trunk's variant and padding (module
  docstring), with the trunk's width, BatchNorm choice and groups, so that every conv kernel
  (and BatchNorm) fits and is copied; the fc layers are left for `reinitialise`.
  """

  def __init__(self, trunk_net, num_classes: int, cfg: NonlinearConfig, to_input: Callable[[tf.Tensor], tf.Tensor]):
    super().__init__(name='nonlinear_alexnet_classifier')
    self.to_input = to_input
    self.net = caffenet.standard_from(trunk_net, cfg.crop_size, f'{NAME}.crop_size', (cfg.fc_units,) * 2, cfg.dropout)
    self.net.classifier = tf.keras.layers.Dense(num_classes, name=CLASSIFIER)
    self(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8), training=False)  # Builds the classifier.

  def call(self, images, training=None):
    endpoints = self.net(self.to_input(images), training=training)
    # fc8 reads fc7 after its dropout (prototxt drop7 -> fc8), as the students' `transfer.models.AlexNet`.
    return tf.cast(self.net.classifier(self.net.dropout(endpoints['fc7'], training=training)), tf.float32)


def _trunk_network(ctx: Context, through: str, num_classes: int) -> Tuple[TrunkAlexNetClassifier, str]:
  """The network of a run's AlexNet trunk (`TrunkAlexNetClassifier`) and its description."""
  cfg: NonlinearConfig = ctx.section
  kind = ctx.trunk_config.kind  # The run's own (backbone.load_layered reads its config.yaml).
  if kind != 'alexnet':
    raise ConfigError(f"init: {NAME} (Noroozi Table 6) needs an AlexNet student folder (<transfer run>/student), a "
                      f"run with an AlexNet trunk or 'random'; {ctx.init!r} has trunk.kind {kind!r}")  # fmt: skip
  if LAYERS.index(through) > LAYERS.index('conv5'):
    raise ConfigError(f"{NAME}.freeze_through: {through} is not in the AlexNet trunk of run {ctx.init} (its fc "
                      "layers belong to its task head); a run's trunk has the conv1..conv5 columns")  # fmt: skip
  trunk = ctx.trunk()
  model = TrunkAlexNetClassifier(trunk.net, num_classes, cfg, ctx.input_fn())
  net = trunk.net
  return model, (f'AlexNet trunk of {ctx.init} ({net.variant} variant, conv1 padding {net.conv1_padding}, groups '
                 f'{net.groups}) in the standard AlexNet')  # fmt: skip


def check_columns(ctx: Context, columns) -> None:
  """Refuses, before any column trains, fc columns that a pre-training run's trunk does not have.

  A student folder has fc6/fc7 and 'random' draws them; a run's AlexNet trunk stops at
  conv5 (its fc layers belong to its task head), so Table 6's fc columns do not exist
  for it (the paper prints '-' there for Jigsaw++).
  """
  if student_meta(ctx.init) or ctx.init == 'random':
    return
  fc = [c for c in columns if LAYERS.index(c) > LAYERS.index('conv5')]
  if fc:
    conv = [c for c in columns if c not in fc]
    raise ConfigError(f'{NAME}.freeze_through: {fc} not in the AlexNet trunk of run {ctx.init} (its fc layers '
                      "belong to its task head); a run's trunk has the conv1..conv5 columns: "
                      f'--override=nonlinear.freeze_through=[{",".join(conv) or "conv5"}]')  # fmt: skip


def build_network(
  ctx: Context, through: str, num_classes: int, init_batches: Optional[Callable[[], Iterable]] = None
) -> Tuple[tf.keras.Model, str]:
  """The AlexNet of one Table 6 column: frozen up to `through`, the rest drawn afresh.

  Args:
    ctx: the context (`init` names the network).
    through: the last frozen layer.
    num_classes: fc8's outputs.
    init_batches: makes training batches for a random network's data-dependent initialisation
      (`evaluation.random_init`, before the trained layers are re-drawn); None: fillers only.

  Raises:
    ConfigError: an init that is neither an AlexNet student folder, a run with an AlexNet
      trunk nor 'random'; frozen fc layers that do not fit the student (crop size, fc
      units) or that a run's trunk does not have.
  """
  cfg: NonlinearConfig = ctx.section
  from mtssl_tf.transfer.models import AlexNet

  meta = student_meta(ctx.init)
  k = LAYERS.index(through)
  # A student or the random network go through voc07_cls's AlexNetClassifier, which copies conv1-conv5 (and
  # fc6/fc7 when copy_fc) from them; a run's trunk through `TrunkAlexNetClassifier` (its groups may differ).
  shell = VocClassificationConfig(num_classes=num_classes, crop_size=cfg.crop_size, fc_units=cfg.fc_units,
                                  dropout=cfg.dropout, copy_fc=k >= LAYERS.index('fc6'), seed=cfg.seed)  # fmt: skip
  if meta:
    if meta.get('architecture') != 'alexnet':
      raise ConfigError(f'init: student {ctx.init} is a {meta.get("architecture")!r}; {NAME} (Noroozi Table 6) '
                        'probes AlexNet students')  # fmt: skip
    if through in ('fc6', 'fc7'):
      units = meta.get('kwargs', {}).get('fc_units', 4096)
      if cfg.crop_size != meta.get('input_size') or cfg.fc_units != units:
        raise ConfigError(f"{NAME}.crop_size / fc_units: freezing {through} keeps the student's fc layers, which "
                          f"need its input size {meta.get('input_size')} and fc units {units}; got {cfg.crop_size}, "
                          f'{cfg.fc_units}')  # fmt: skip
    from mtssl_tf.transfer.student import load_student

    model, source, fresh_from = (
      AlexNetClassifier(load_student(ctx.init), meta, shell),
      f'AlexNet student {ctx.init}',
      k + 1,
    )
  elif ctx.init == 'random':
    meta = {'kwargs': {'width': cfg.width, 'batch_norm': cfg.batch_norm}}
    student = AlexNet(1, width=cfg.width, batch_norm=cfg.batch_norm, fc_units=cfg.fc_units)
    student(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False)
    model = AlexNetClassifier(student, meta, shell)
    note = random_init.initialise(ctx, model.net, init_batches, model.network_input) if init_batches else ''
    # Data-dependent: the frozen layers keep it, the trained ones are re-drawn below as for every network.
    fresh_from = k + 1 if note else 0
    source = f'random AlexNet ({note})' if note else 'random AlexNet (the fillers, every layer)'
  else:
    (model, source), fresh_from = _trunk_network(ctx, through, num_classes), k + 1
  reinitialise(model.net, list(LAYERS[fresh_from:]) + [CLASSIFIER], cfg.seed)
  freeze(model.net, list(LAYERS[: k + 1]))
  return model, f'{source}: conv1..{through} frozen, {", ".join(LAYERS[k + 1 :] + (CLASSIFIER,))} new'


# ----------------------------------------------------------------------------- training and test


def _is_bias(variable: tf.Variable) -> bool:
  return variable.name.split('/')[-1].startswith('bias')


def make_train_step(model, optimizer, cfg: NonlinearConfig, num_classes: int):
  """batch -> (loss + decay, {'loss', 'train_top1'}): softmax loss, decay on weights, biases at x rate."""
  variables = model.trainable_variables
  kernels = [v for v in variables if 'kernel' in v.name]  # decay_mult 1 on weights, 0 on biases.
  multipliers = [cfg.bias_lr_multiplier if _is_bias(v) else 1.0 for v in variables]

  @tf.function
  def step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message='training label >= num_classes')
    with tf.GradientTape() as tape:
      logits = model(batch['image'], training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      decay = tf.add_n([tf.nn.l2_loss(k) for k in kernels]) if kernels else tf.constant(0.0)
      total = loss + cfg.weight_decay * decay
    grads = tape.gradient(total, variables)
    optimizer.apply_gradients([(g * m, v) for g, m, v in zip(grads, multipliers, variables) if g is not None])
    top1 = tf.reduce_mean(tf.cast(classification.correct_at_k(logits, labels, 1), tf.float32))
    return total, {'loss': loss, 'train_top1': top1}

  return step


def evaluate(model, dataset: tf.data.Dataset, num_classes: int) -> Dict[str, float]:
  """{'top1', 'top5' (mean softmax of the 10 crops), 'top1_1crop' (centre crop), 'images'} over `dataset`."""

  @tf.function(reduce_retracing=True)
  def scores(views):
    shape = tf.shape(views)
    logits = model(tf.reshape(views, tf.concat([[shape[0] * NUM_CROPS], shape[2:]], 0)), training=False)
    logits = tf.reshape(tf.cast(logits, tf.float32), [shape[0], NUM_CROPS, -1])
    return tf.reduce_mean(tf.nn.softmax(logits), axis=1), logits[:, CENTRE_CROP]

  hits = np.zeros(3)
  total = 0
  for batch in dataset:
    labels = batch['label']
    if int(tf.reduce_max(labels)) >= num_classes:
      raise ValueError(f'{NAME}: validation label {int(tf.reduce_max(labels))} >= num_classes {num_classes}')
    probs, centre = scores(batch['views'])
    for i, (s, k) in enumerate(((probs, 1), (probs, classification.TOP_K), (centre, 1))):
      hits[i] += float(tf.reduce_sum(tf.cast(classification.correct_at_k(s, labels, k), tf.float32)))
    total += int(tf.shape(labels)[0])
  if not total:
    raise ValueError(f'{NAME}: the validation source holds no labelled images')
  return {'top1': hits[0] / total, 'top5': hits[1] / total, 'top1_1crop': hits[2] / total, 'images': total}


class NonlinearProtocol(ClassifierProtocol):
  """Noroozi et al. 2018 Table 6: AlexNet frozen through conv1..fc7, the rest retrained, 10-crop top-1.

  One training per `freeze_through` entry, each in `<out_dir>/<layer>/` (summaries
  `nonlinear/<layer>/<metric>`, checkpoints, resumed); results.json holds them all.
  """

  name = NAME
  summary = 'AlexNet frozen through conv1..fc7, the rest retrained on labels, 10-crop top-1 (Noroozi Table 6)'
  config_class = NonlinearConfig
  source_fields = ('train_source', 'validation_source')
  world_sources = ('images_train', 'images_validation')
  headline = tuple(f'{layer}_top1' for layer in LAYERS)
  columns = tuple(Column(f'IN nonlinear {layer} top-1 (%)', f'{layer}_top1', 100.0) for layer in LAYERS)
  max_to_keep = 1

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: NonlinearConfig = self.prepare(ctx).section
    check_columns(ctx, cfg.freeze_through)
    self.count_classes(ctx)
    columns = {}
    for through in cfg.freeze_through:
      self.through = through
      columns[through] = self.train_and_score(ctx, f'{NAME}/{through}', os.path.join(ctx.out_dir, through))
    results: Dict[str, Any] = {}
    for through, scores in columns.items():
      for key in ('top1', 'top5', 'top1_1crop'):
        results[f'{through}_{key}'] = scores[key]
    results.update({
      'layers': columns,
      'protocol': {
        'frozen': 'conv1 up to the column layer (with BatchNorms, in inference mode); later layers and fc8 drawn '
        'afresh (JigsawPuzzleSolver train_val_cfn_rec fillers) and trained',
        'solver': f'SGD momentum {cfg.momentum}, lr {cfg.learning_rate} x{cfg.lr_decay_factor} every '
        f'{cfg.lr_decay_steps}, batch {cfg.batch_size}, weight decay {cfg.weight_decay} (weights), biases x'
        f'{cfg.bias_lr_multiplier} rate',
        'train_view': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}, mirrored with p=1/2',
        'test': f'mean softmax of 10 crops (4 corners + centre, and mirrors) of shorter side {cfg.image_size}; '
        'top1_1crop: the centre crop',
        'init_source': ctx.init,
      },
      'counts': {'num_classes': self.num_classes, 'train_examples': self.train_count, 'steps': cfg.steps},
    })  # fmt: skip
    self.report(ctx, results, ctx.write_results(results))
    return results

  def augmentation(self, cfg: NonlinearConfig):
    return None, True

  def build(self, ctx: Context) -> Trainee:
    tf.keras.utils.set_random_seed(ctx.section.seed)
    self.model, self.source = build_network(ctx, self.through, self.num_classes, lambda: self.train_data(ctx, 0))
    return Trainee({'model': self.model}, self.model.trainable_variables)

  def train_step(self, ctx: Context, trainee: Trainee, optimizer):
    return make_train_step(self.model, optimizer, ctx.section, self.num_classes)

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    """One column's scores (`evaluate`), with its step count, network and training statistics."""
    scores = evaluate(self.model, eval_dataset(ctx.test_spec, ctx.section), self.num_classes)
    tune.scalars({k: v for k, v in scores.items() if k != 'images'})
    if ctx.progress:
      logging.info('%s %s: top1 %.4f (1 crop %.4f), top5 %.4f', NAME, self.through, scores['top1'],
                   scores['top1_1crop'], scores['top5'])  # fmt: skip
    return dict(scores, steps=tune.step, network=self.source, train=stats)
