"""VOC12 semantic segmentation by fine-tuning an FCN (Noroozi et al. 2018, Table 3 "Segm.").

Noroozi et al. 2018 (§5, "Fine-Tuning on PASCAL VOC"): "We also report semantic
segmentation result on VOC2012 dataset using the framework of [19]" (Long, Shelhamer &
Darrell 2015, FCN; github shelhamer/fcn.berkeleyvision.org). For AlexNet that framework
is `voc-fcn-alexnet` (net.py, solver.prototxt, solve.py, score.py); its constants are the
defaults here:

* Network: FCN-32s on the evaluated network (`segmentation_model.py`): the conv layers
  copied, fc6/fc7 as convolutions, a 21-way 1x1 score layer, a fixed bilinear stride-32
  upsampling and a crop to the image. Every layer but the upsampling is trained.
* Data: whole images, one per forward pass, no augmentation (`VOCSegDataLayer`: the
  reference trains on SBD `train` and tests on `seg11valid`; the paper says VOC2012, so
  the shipped config reads VOC2012 `train` -> `val`, and any `vocseg:` split can be named).
  `mirror` adds random flips (off, as the reference).
* Loss: softmax cross-entropy over the pixels, void (255) ignored, divided by the number
  of non-void pixels (`SoftmaxWithLoss` normalize=True: the reference's fix "FCN-AlexNet
  is trained with normalized loss", commit 2963aa0); `loss_normalization: none` sums
  instead, the VGG FCN-32s variant (voc-fcn32s/solver.prototxt: lr 1e-10, momentum 0.99,
  iter_size 1), which then needs those solver values too.
* Solver (voc-fcn-alexnet/solver.prototxt): SGD, momentum 0.9, fixed lr 1e-4, weight
  decay 5e-4, gradients accumulated over iter_size 20 images and averaged (Caffe scales
  accumulated diffs by 1 / iter_size), 100,000 iterations (solve.py: 25 x 4,000). Caffe's
  parameter multipliers of net.py: lr 1, decay 1 for every weight and bias, except
  score_fr's bias (lr 2, no decay).
* Scores (score.py): a confusion matrix `fast_hist` (rows ground truth, columns
  prediction; void and out-of-range labels left out) summed over the whole test set;
  pixel accuracy = trace / total, mean accuracy = mean over classes of diag / row, IoU =
  diag / (row + col - diag), mean IU = their mean (classes with no pixels in either
  are left out of the means, as nanmean), frequency-weighted IU. The reference scores
  every 4,000 iterations; this protocol scores once, after training.

Departures (named config choices): BatchNorm layers of a student (the reference has
none) keep their pre-trained statistics while fine-tuning (`freeze_bn_statistics`):
with one image per pass and 100 pixels of padding, batch statistics would be mostly
padding. fc6/fc7 are drawn afresh (N(0, 0.01), bias 0.1, voc07_cls's draw; Noroozi §5)
rather than copied from an ImageNet classifier as the reference does; `copy_fc` copies
the student's instead.

Noroozi report (Table 3, VOC12 segmentation mean IU %): Jigsaw++ 38.1, CC+Jigsaw++ 40.0,
CC+vgg-Jigsaw++ 42.6, CC+HOG 39.2, supervised (ImageNet labels) 48.0, random 19.8.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import pipeline
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.segmentation import SEG_CLASSES, segmentation_dataset
from mtssl_tf.evaluation import random_init
from mtssl_tf.evaluation.protocol import Column, Context, NetworkFineTuneProtocol
from mtssl_tf.evaluation.segmentation_model import AlexNetFCN, TrunkFCN, layer_multipliers
from mtssl_tf.evaluation.voc_classification import student_meta
from mtssl_tf.train.finetune import FineTune, LoopConfig, SGDConfig

NAME = 'voc12_seg'
NORMALIZATIONS = ('valid', 'none')
NETWORKS = ('auto', 'alexnet')


@dataclasses.dataclass
class SegmentationConfig(LoopConfig, SGDConfig):
  """FCN fine-tuning on VOC segmentation (module docstring); defaults are voc-fcn-alexnet's.

  Attributes:
    train_source: `vocseg:<VOC folder>:<split>`; '' = the synthetic world's 'segmentation_train'.
    test_source: the scored split; '' = the world's 'segmentation_val'.
    num_classes: score channels (VOC: 21 with background).
    network: 'auto' (an AlexNet student folder's AlexNet, else the trunk of `init`,
      AlexNet or ResNet-v2 by trunk.kind); 'alexnet' with init 'random' builds a randomly initialised AlexNet (the
      "Random" row of Table 3).
    alexnet_width: that random AlexNet's width multiplier.
    input_pad: zero pixels around the image before conv1 (net.py: pad=100).
    fc6_kernel: fc6's kernel side (net.py: 6, AlexNet's pool5 side at 227 px).
    fc_units: fc6/fc7 channels before the student's width multiplier (4096).
    dropout: after fc6 and fc7 (net.py: 0.5).
    copy_fc: copy the student's fc6/fc7 (reshaped to convolutions) instead of new ones.
    init_stddev: std of new fc6/fc7 weights (voc07_cls's N(0, 0.01)).
    init_bias: bias of new fc6/fc7 (voc07_cls's 0.1).
    iter_size: images whose gradients are averaged per step (solver.prototxt: 20).
    loss_normalization: 'valid' divides each image's loss by its non-void pixels
      (normalize=True); 'none' sums them (the voc-fcn32s variant).
    lr_decay_steps: the rate is multiplied by `lr_decay_factor` every this many steps;
      0 keeps it fixed (lr_policy "fixed").
    bias_lr_multiplier: score_fr's bias rate (net.py: lr_mult 2).
    freeze_bn_statistics: BatchNorm layers use their stored statistics while training.
    mirror: flip training images (and labels) left-right with probability 1/2.
    seed: training order, flips and new layers.
    input_scale: images are resized by this factor before the network (bilinear; training labels nearest) and the
      test scores are read back at each label's own size (logits resized bilinearly, then argmax), so the confusion
      matrix always counts the dataset's own pixels. 1 = the reference: its data layers (VOCSegDataLayer, as
      pascalcontext_layers.py) reshape the net to each image's own size, never resizing, and VOC's objects span
      several output strides. Other values are our choice, for a miniature's small scenes (docs/mini, BUILD.md).
  """

  train_source: str = ''
  test_source: str = ''
  num_classes: int = len(SEG_CLASSES)
  network: str = 'auto'
  alexnet_width: float = 1.0
  input_pad: int = 100
  fc6_kernel: int = 6
  fc_units: int = 4096
  dropout: float = 0.5
  copy_fc: bool = False
  init_stddev: float = 0.01
  init_bias: float = 0.1
  iter_size: int = 20
  loss_normalization: str = 'valid'
  lr_decay_steps: int = 0
  bias_lr_multiplier: float = 2.0
  freeze_bn_statistics: bool = True
  mirror: bool = False
  seed: int = 0
  input_scale: float = 1.0
  # The shared pieces' defaults, set to voc-fcn-alexnet/solver.prototxt's.
  steps: int = 100000
  log_every_steps: int = 20
  checkpoint_every_steps: int = 4000
  learning_rate: float = 1e-4
  momentum: float = 0.9
  lr_decay_factor: float = 1.0
  weight_decay: float = 5e-4

  def validate(self) -> None:
    self.check_loop(NAME)
    self.check_sgd(NAME)
    for key in ('num_classes', 'fc6_kernel', 'fc_units', 'iter_size'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{NAME}.{key}: must be positive, got {getattr(self, key)}')
    for key in ('input_pad', 'lr_decay_steps', 'bias_lr_multiplier', 'init_stddev'):
      if getattr(self, key) < 0:
        raise ConfigError(f'{NAME}.{key}: must be >= 0, got {getattr(self, key)}')
    if not 0 <= self.dropout < 1:
      raise ConfigError(f'{NAME}.dropout: must be in [0, 1), got {self.dropout}')
    if self.loss_normalization not in NORMALIZATIONS:
      raise ConfigError(f'{NAME}.loss_normalization: must be one of {NORMALIZATIONS}, got {self.loss_normalization!r}')
    if self.network not in NETWORKS:
      raise ConfigError(f'{NAME}.network: must be one of {NETWORKS}, got {self.network!r}')
    for key in ('alexnet_width', 'input_scale'):
      if getattr(self, key) <= 0:
        raise ConfigError(f'{NAME}.{key}: must be positive, got {getattr(self, key)}')


# ----------------------------------------------------------------------------- scores


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [C, C] counts, rows ground truth, columns prediction; labels outside [0, C) (void) left out (fast_hist)."""
  labels, predictions = np.asarray(labels).reshape(-1).astype(np.int64), np.asarray(predictions).reshape(-1)
  keep = (labels >= 0) & (labels < num_classes)
  flat = num_classes * labels[keep] + predictions[keep].astype(np.int64)
  return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(hist: np.ndarray) -> Dict[str, Any]:
  """score.py's numbers from a confusion matrix: pixel_accuracy, mean_accuracy, iou [C], mean_iou, fw_iou.

  Per-class values are NaN for classes without pixels (accuracy: none in the ground
  truth; IoU: none in ground truth or prediction) and left out of the means.
  """
  hist = np.asarray(hist, np.float64)
  diag, rows, cols = np.diag(hist), hist.sum(1), hist.sum(0)
  with np.errstate(divide='ignore', invalid='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # nanmean of no classes: NaN, said in the docstring.
    accuracy = diag / rows
    iou = diag / (rows + cols - diag)
    total = hist.sum()
    frequency = rows / total if total else np.zeros_like(rows)
    present = frequency > 0
    return {
      'pixel_accuracy': float(diag.sum() / total) if total else float('nan'),
      'mean_accuracy': float(np.nanmean(accuracy)),
      'iou': iou,
      'mean_iou': float(np.nanmean(iou)),
      'fw_iou': float((frequency[present] * iou[present]).sum()),
    }


# ----------------------------------------------------------------------------- data


def scaled_size(size: tf.Tensor, scale: float) -> tf.Tensor:
  """int32 [2]: an image side pair times `scale`, rounded, at least 1."""
  return tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)


def resize_uint8(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """uint8 image(s) [.., H, W, 3] resized bilinearly to `size`, rounded back to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, size)), 0.0, 255.0), tf.uint8)


def rescale(image: tf.Tensor, label: tf.Tensor, scale: float) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 image [H, W, 3] (bilinear) and label [H, W] (nearest, so void and class ids stay exact) times `scale`."""
  if scale == 1.0:
    return image, label
  size = scaled_size(tf.shape(label), scale)
  image = resize_uint8(image, size)
  label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
  return image, label


def training_dataset(spec: str, cfg: SegmentationConfig, start_step: int = 0) -> tf.data.Dataset:
  """Endless steps {'image': uint8 [iter_size, h, w, 3], 'label': uint8 [.., h, w], 'size': int32 [.., 2]}.

  Images of a step are padded to the largest (image 0, label void) and `size` holds each
  one's own size; the step cuts them out again, so padding never reaches the network.
  Order (file shuffling) and flips are seeded; a run resumed at `start_step` shuffles with
  a seed offset by it (as voc07_cls: new orders, not a replay of the first part).
  """
  options = ReadOptions(shuffle_files=True, seed=cfg.seed + start_step)
  first = start_step * cfg.iter_size

  def prepare(k, x):
    image, label = x['image'], x['label']
    if cfg.mirror:
      u = tf.random.stateless_uniform([], tf.stack([tf.cast(cfg.seed, tf.int64), k + first]))
      image, label = tf.cond(u < 0.5, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])), lambda: (image, label))
    image, label = rescale(image, label, cfg.input_scale)
    out = {'image': image, 'label': label, 'size': tf.shape(label)}
    if pipeline.SKIPPED_KEY in x:
      out[pipeline.SKIPPED_KEY] = x[pipeline.SKIPPED_KEY]
    return out

  ds = segmentation_dataset(spec, options).repeat().enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = {'image': tf.constant(0, tf.uint8), 'label': tf.constant(255, tf.uint8), 'size': 0,
             pipeline.SKIPPED_KEY: tf.constant(0, tf.int64)}  # fmt: skip
  padding = {k: v for k, v in padding.items() if k in ds.element_spec}
  return ds.padded_batch(cfg.iter_size, padding_values=padding, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- training and test


def pixel_loss(logits: tf.Tensor, label: tf.Tensor, normalization: str) -> tf.Tensor:
  """Softmax cross-entropy of logits [H, W, C] against label [H, W], void (>= C) ignored; summed or per valid pixel."""
  label = tf.cast(label, tf.int32)
  valid = label < tf.shape(logits)[-1]
  per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(valid, label, 0), logits=logits)
  total = tf.reduce_sum(tf.where(valid, per_pixel, 0.0))
  if normalization == 'none':
    return total
  return total / tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)  # Caffe: max(1, count).


def make_train_step(model: tf.keras.Model, optimizer, cfg: SegmentationConfig, variables: List[tf.Variable]):
  """batch -> (loss + decay, {'loss'}): iter_size images' gradients averaged, Caffe's decay and multipliers."""
  multipliers = layer_multipliers(model, variables, cfg.bias_lr_multiplier)
  decayed = [v for v, d in zip(variables, multipliers['decayed']) if d]
  decayed_ids = {id(v) for v in decayed}

  # One trace for every step: steps differ in padded size, so the sides are left unknown.
  signature = [tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([None, None, None], tf.uint8),
               tf.TensorSpec([None, 2], tf.int32)]  # fmt: skip

  @tf.function(input_signature=signature)
  def update(images, labels, sizes):
    count = tf.shape(images)[0]
    grads = [tf.zeros_like(v) for v in variables]
    total = tf.constant(0.0)
    for i in tf.range(count):
      h, w = sizes[i, 0], sizes[i, 1]
      with tf.GradientTape() as tape:
        logits = model(images[i : i + 1, :h, :w], training=True)[0]
        loss = pixel_loss(logits, labels[i, :h, :w], cfg.loss_normalization)
      step_grads = tape.gradient(loss, variables)
      grads = [a if g is None else a + g for a, g in zip(grads, step_grads)]
      total += loss
    scale = 1.0 / tf.cast(count, tf.float32)
    grads = [g * scale + (cfg.weight_decay * v if id(v) in decayed_ids else 0.0) for g, v in zip(grads, variables)]
    optimizer.apply_gradients([(g * m, v) for g, m, v in zip(grads, multipliers['lr'], variables)])
    decay = tf.add_n([tf.nn.l2_loss(v) for v in decayed]) if decayed else tf.constant(0.0)
    return total * scale + cfg.weight_decay * decay, total * scale

  def step(batch):
    total, loss = update(batch['image'], batch['label'], batch['size'])
    return total, {'loss': loss}

  return step


def evaluate(model: tf.keras.Model, spec: str, num_classes: int, input_scale: float = 1.0) -> Tuple[np.ndarray, int]:
  """(confusion matrix over every image of `spec`, number of images), each image whole, in file order.

  With `input_scale` != 1 the image is resized before the network and its logits are resized back to the label's
  size before the argmax, so the counts are always over the dataset's own pixels.
  """

  @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8), tf.TensorSpec([None, None], tf.uint8)])
  def image_hist(image, label):
    if input_scale != 1.0:
      image = resize_uint8(image, scaled_size(tf.shape(label), input_scale))
    logits = model(image, training=False)[0]
    if input_scale != 1.0:
      logits = tf.image.resize(logits, tf.shape(label))
    prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)
    label = tf.cast(label, tf.int32)
    keep = label < num_classes
    flat = tf.boolean_mask(num_classes * label + prediction, keep)
    return tf.math.bincount(flat, minlength=num_classes**2, maxlength=num_classes**2, dtype=tf.int64)

  hist, images = np.zeros(num_classes**2, np.int64), 0
  for x in segmentation_dataset(spec).prefetch(tf.data.AUTOTUNE):
    hist += image_hist(x['image'][None], x['label']).numpy()
    images += 1
  if not images:
    raise ValueError(f'{NAME}: the test source {spec!r} holds no images')
  return hist.reshape(num_classes, num_classes), images


def build_network(ctx: Context) -> Tuple[tf.keras.Model, str]:
  """The FCN to fine-tune and a description of where its layers came from."""
  cfg: SegmentationConfig = ctx.section
  meta = student_meta(ctx.init)
  fcs = 'fc6/fc7 copied' if cfg.copy_fc else 'new fc6/fc7'
  if meta and meta.get('architecture') != 'resnet_v2_trunk':
    if meta.get('architecture') != 'alexnet':
      raise ConfigError(f'init: student {ctx.init} is a {meta.get("architecture")!r}; {NAME} fine-tunes AlexNet '
                        'students and ResNet-v2 trunks')  # fmt: skip
    from mtssl_tf.transfer.student import load_student

    return AlexNetFCN(load_student(ctx.init), cfg), f'FCN-32s on AlexNet student conv1-conv5 from {ctx.init}; {fcs}'
  if cfg.network == 'alexnet':
    if ctx.init != 'random':
      raise ConfigError(f'{NAME}.network: alexnet reads an AlexNet student folder (--init=<run>/student) or builds a '
                        f'random one (--init=random); {ctx.init!r} is neither')  # fmt: skip
    from mtssl_tf.transfer.models import build_model

    student = build_model('alexnet', 1, 227, width=cfg.alexnet_width, batch_norm=False)
    student(tf.zeros([1, 227, 227, 3]), training=False)
    return AlexNetFCN(student, cfg), f'FCN-32s on a randomly initialised AlexNet (width {cfg.alexnet_width}); {fcs}'
  kind = ctx.trunk_config.kind
  if kind == 'alexnet':  # A pre-training run's AlexNet trunk (registry ConvNetTrunk around trunk.alexnet.AlexNet).
    return AlexNetFCN(ctx.trunk().net, cfg), f'FCN-32s on the AlexNet trunk conv1-conv5 from {ctx.init}; {fcs}'
  if kind != 'resnet_v2':
    raise ConfigError(f'trunk.kind: {NAME} runs its FCN on AlexNet (students or trunks) and ResNet-v2 trunks, '
                      f'not {kind!r}')  # fmt: skip
  model = TrunkFCN(ctx.trunk(), cfg, ctx.input_fn())
  return model, f'FCN on the ResNet-v2 trunk from {ctx.init}: score_fr on final, bilinear x{model.stride}'


class Voc12SegmentationProtocol(NetworkFineTuneProtocol):
  """Noroozi et al. 2018 Table 3 "Segm." / Long et al. 2015: VOC12 segmentation with FCN-32s, mean IU.

  Writes `<out_dir>/results.json` and `confusion.npz`, resuming from `<out_dir>/checkpoints`.
  """

  name = NAME
  summary = 'VOC12 semantic segmentation, FCN-32s on the evaluated network, every layer fine-tuned, mean IU'
  config_class = SegmentationConfig
  world_sources = ('segmentation_train', 'segmentation_val')
  headline = ('mIoU', 'pixel_accuracy', 'mean_accuracy')
  columns = (Column('VOC12 seg mIoU (%)', 'mIoU', 100.0),)
  make_step = staticmethod(make_train_step)
  dataset = staticmethod(training_dataset)

  def network(self, ctx: Context) -> Tuple[tf.keras.Model, str]:
    self.empty_message = f'the training source yields fewer than iter_size ({ctx.section.iter_size}) images'
    model, source = build_network(ctx)
    if isinstance(model, AlexNetFCN):  # A random one is initialised on the training images (conv1..fc7).
      note = random_init.initialise(ctx, model, lambda: training_dataset(ctx.train_spec, ctx.section), None)
      source = f'{source}; {note}' if note else source
    return model, source

  def schedule(self, ctx: Context):
    return super().schedule(ctx) if ctx.section.lr_decay_steps else ctx.section.learning_rate  # 0: lr_policy fixed.

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: SegmentationConfig = ctx.section
    hist, images = evaluate(self.model, ctx.test_spec, cfg.num_classes, cfg.input_scale)
    scores = segmentation_scores(hist)
    names = list(SEG_CLASSES[: cfg.num_classes]) + [str(i) for i in range(len(SEG_CLASSES), cfg.num_classes)]
    results = {
      'mIoU': scores['mean_iou'],
      'pixel_accuracy': scores['pixel_accuracy'],
      'mean_accuracy': scores['mean_accuracy'],
      'fw_iou': scores['fw_iou'],
      'iou': {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, scores['iou'])},
      'protocol': {
        'network': self.source,
        'trained': 'every layer but the bilinear upsampling'
        + ('; BatchNorm statistics kept' if cfg.freeze_bn_statistics else ''),  # fmt: skip
        'loss': f'softmax cross-entropy per pixel, void ignored, '
        f'{"/ non-void pixels" if cfg.loss_normalization == "valid" else "summed"}, averaged over {cfg.iter_size} '
        'images per step',
        'input': 'whole images, one per pass'
        + (f', resized x{cfg.input_scale} (scored at the label size)' if cfg.input_scale != 1.0 else '')
        + (', mirrored with p=1/2' if cfg.mirror else ''),
        'scores': 'confusion matrix over the test set (score.py fast_hist); mean IU, mean accuracy over classes with '
        'pixels',
        'solver': f'SGD momentum {cfg.momentum}, lr {cfg.learning_rate}'
        + (f' x{cfg.lr_decay_factor} every {cfg.lr_decay_steps}' if cfg.lr_decay_steps else ' fixed')
        + f', decay {cfg.weight_decay}, iter_size {cfg.iter_size}',
        'init_source': ctx.init,
        'preprocessing': ctx.preprocessing,
      },
      'counts': {
        'steps': tune.step,
        'test_images': images,
        'test_pixels': int(hist.sum()),
        'classes_in_test': int((hist.sum(1) > 0).sum()),
      },
      'train': stats,
    }
    keys = ('mIoU', 'pixel_accuracy', 'mean_accuracy', 'fw_iou')
    tune.scalars({k: results[k] for k in keys if np.isfinite(results[k])})
    np.savez(os.path.join(ctx.out_dir, 'confusion.npz'), confusion=hist, classes=np.asarray(names))
    return results
