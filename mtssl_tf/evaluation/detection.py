"""PASCAL VOC 2007 detection transfer (Doersch & Zisserman 2017, §5): Faster R-CNN on the trunk.

Protocol: the trunk (blocks 1-3, stride 16) is the Faster R-CNN backbone, ResNet block 4
the per-proposal head on ROI crops, all weights fine-tuned on VOC07 trainval with
multi-scale training (random shorter side from `scales`) and horizontal flips; test mAP
at IoU 0.5 and 0.75, both with the VOC2007 11-point AP by default (`map_conventions`).
Block 4 is randomly initialised for self-supervised trunks and transferred from the
ImageNet-labels network (the supervised baseline's checkpoint), as §5 says
(`box_head_init`). With `use_lasso` a new lasso row mixes the block-3 units for both the
RPN and the ROI features. The model is built from Model Garden parts in
`detection_model`; this module holds the config, the input pipeline, the training loop
and the evaluation.

Input pipeline: `data.detection.detection_dataset` -> flip (normalised boxes) -> resize
the shorter side to the chosen scale, the longer side capped -> the trunk's
preprocessing -> zero-pad to the canvas of that scale and orientation (so a step is
traced once per canvas, not per image size) -> boxes in pixels of the resized image.

`run_detection` writes under `<model_dir>/eval/detection/`: TensorBoard scalars
(`detection/<name>`), `checkpoints/` (resumable) and `results.json`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from official.modeling.optimization import lr_schedule
from official.vision.ops import box_ops, preprocess_ops

from mtssl_tf.configs.base import ConfigError, validate_all
from mtssl_tf.data import pipeline
from mtssl_tf.data.detection import VOC_CLASSES, detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import backbone, voc_metrics
from mtssl_tf.evaluation.detection_model import STRIDE, FasterRCNN, build_detector
from mtssl_tf.evaluation.protocol import Column, Context, Protocol
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk import block4
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

NAME = 'detection'
BOX_HEAD_INITS = ('auto', 'random', 'checkpoint')


@dataclasses.dataclass
class DetectionEvalConfig(backbone.LassoMixConfig):
  """Faster R-CNN fine-tuning on VOC07 trainval, mAP on VOC07 test.

  Defaults follow py-faster-rcnn's end-to-end VOC07 recipe (Ren et al. 2015, its
  `config.py` and ResNet solvers) where the paper is silent, Detectron's ResNet C4
  practice where py-faster-rcnn has no ResNet counterpart, and Doersch & Zisserman §5
  for the multi-scale training.

  Attributes:
    train_source: `voc:<VOCdevkit>:trainval` or `tfds:voc/2007:trainval`; '' = the
      caller passes it.
    test_source: the same for `test`.
    num_classes: object classes (20 in VOC).
    scales: training shorter sides, one drawn per image (Doersch's multi-scale set;
      py-faster-rcnn trains at (600,)).
    max_side: cap of the training longer side (Detectron pairs this scale set with 2000;
      py-faster-rcnn uses 1000 with 600).
    test_scale: test shorter side (py-faster-rcnn: 600).
    test_max_side: test longer-side cap (py-faster-rcnn: 1000).
    flip: random horizontal flips in training (py-faster-rcnn: on).
    train_difficult: train on VOC `difficult` boxes too (py-faster-rcnn: off); images
      left without boxes are skipped, as py-faster-rcnn's `filter_roidb` does.
    max_instances: ground-truth boxes kept per image (VOC07 has at most 42).
    batch_size: images per step (py-faster-rcnn: 1; Fast R-CNN: 2).
    train_steps: steps (py-faster-rcnn VOC07: 70k at one image per step).
    learning_rate: base SGD learning rate (py-faster-rcnn: 0.001 for one image).
    momentum: SGD momentum (0.9).
    lr_decay_steps: steps where the rate is multiplied by `lr_decay` (py-faster-rcnn: 50k).
    lr_decay: decay factor (0.1).
    warmup_steps: linear warm-up from learning_rate * warmup_factor (Detectron: 500
      steps from 1/3; block 4 and the heads start random).
    warmup_factor: see `warmup_steps`.
    weight_decay: L2 on conv/dense kernels, Caffe convention (ResNet solvers: 1e-4).
    anchor_sizes: anchor sides in pixels at stride 16 (Faster R-CNN: 128, 256, 512).
    anchor_aspect_ratios: width/height ratios (Faster R-CNN: 0.5, 1, 2).
    rpn_filters: channels of the RPN 3x3 convolution (Faster R-CNN: 512).
    rpn_positive_iou: anchors at or above this IoU are positives (0.7).
    rpn_negative_iou: anchors below this IoU are negatives (0.3).
    rpn_batch_size: anchors sampled per image for the RPN loss (256).
    rpn_fg_fraction: largest positive fraction of them (0.5).
    rpn_pre_nms_top_k: training proposals kept before NMS (12000).
    rpn_post_nms_top_k: training proposals kept after NMS (2000).
    rpn_test_pre_nms_top_k: test proposals before NMS (6000).
    rpn_test_post_nms_top_k: test proposals after NMS (300).
    rpn_nms_iou: proposal NMS IoU (0.7).
    rpn_min_size: smallest proposal side in resized pixels (Detectron: 0; py-faster-rcnn 16).
    rpn_huber_delta: RPN smooth-L1 transition (py-faster-rcnn sigma 3 -> 1/9).
    roi_batch_size: ROIs sampled per image (py-faster-rcnn: 128; Detectron: 512).
    roi_fg_fraction: largest foreground fraction of them (0.25).
    roi_fg_iou: ROIs at or above this IoU with a box are foreground (0.5).
    roi_bg_iou_high: background ROIs have IoU below this (0.5) ...
    roi_bg_iou_low: ... and at or above this (Detectron: 0; py-faster-rcnn 0.1).
    roi_crop_size: ROI-align output side; block 4 strides it by 2 (14 -> 7x7, as the
      ResNet Faster R-CNN pools 14x14 before conv5).
    block4_units: residual units in the block-4 head (3 in ResNet-101).
    box_head_init: where block 4 (the box head) starts. 'checkpoint': transferred from
      the init source's trained block 4 (the supervised baseline's checkpoint holds it
      at `model/block4`), with its input convention (it crops the raw block-3 sum it
      was trained on) and its BatchNorm frozen like the trunk's; an error when the
      source has none. 'random': new, as for self-supervised trunks. 'auto' (default,
      the paper's §5: "transfer block 4 into the proposal categorization head ...
      except that we initialize [it] randomly" for self-supervised networks):
      'checkpoint' when the init source holds a block 4, else 'random'.
    frcnn_huber_delta: box-head smooth-L1 transition (sigma 1 -> 1).
    detection_score_threshold: test detections kept above this score (0.05).
    detection_nms_iou: per-class NMS IoU at test (py-faster-rcnn: 0.3).
    max_detections: detections per image (100).
    map_conventions: the mAP conventions computed, each at IoU 0.5 and 0.75 so both
      columns share one AP rule; the first is the headline (logged, `map_convention` in
      the results). 'voc07' (default first, the paper's: VOC2007 devkit / py-faster-rcnn
      `voc_eval` with `use_07_metric=True`: 11-point AP, +1 pixel IoU, IoU > threshold;
      keys end in `_VOC07_11point`) and 'od_api' (the TF Object Detection API's PASCAL
      metric: all-point AP, IoU >= threshold; keys without suffix), kept as a cross-check
      with TF detection code. See `voc_metrics`.
    use_lasso: heads read a learned lasso mix of the block-3 units (§3.2).
    lasso_l1_weight: L1 weight on the detection alpha row.
    lasso_init: 'last' (start from the plain trunk output) or 'uniform'.
    lasso_mix_norm: 'trunk' (the mix goes through the trunk's closing BN-ReLU, in block
      3's place) or 'per_consumer' (a new BN-ReLU); see `LassoConfig.mix_norm`.
    freeze_batch_norm: trunk BatchNorm in inference mode with fixed scale/offset (ResNet
      Faster R-CNN practice); the new layers' BatchNorm always trains.
    log_every_steps: console and TensorBoard interval (py-faster-rcnn displays every 20).
    checkpoint_every_steps: checkpoint interval (the final step is always saved).
    seed: seed of the data order, scale and flip draws and initialisers.
  """

  train_source: str = ''
  test_source: str = ''
  num_classes: int = 20
  scales: Tuple[int, ...] = (480, 576, 688, 864, 1200)
  max_side: int = 2000
  test_scale: int = 600
  test_max_side: int = 1000
  flip: bool = True
  train_difficult: bool = False
  max_instances: int = 100
  batch_size: int = 1
  train_steps: int = 70000
  learning_rate: float = 1e-3
  momentum: float = 0.9
  lr_decay_steps: Tuple[int, ...] = (50000,)
  lr_decay: float = 0.1
  warmup_steps: int = 500
  warmup_factor: float = 1.0 / 3.0
  weight_decay: float = 1e-4
  anchor_sizes: Tuple[float, ...] = (128.0, 256.0, 512.0)
  anchor_aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  rpn_filters: int = 512
  rpn_positive_iou: float = 0.7
  rpn_negative_iou: float = 0.3
  rpn_batch_size: int = 256
  rpn_fg_fraction: float = 0.5
  rpn_pre_nms_top_k: int = 12000
  rpn_post_nms_top_k: int = 2000
  rpn_test_pre_nms_top_k: int = 6000
  rpn_test_post_nms_top_k: int = 300
  rpn_nms_iou: float = 0.7
  rpn_min_size: float = 0.0
  rpn_huber_delta: float = 1.0 / 9.0
  roi_batch_size: int = 128
  roi_fg_fraction: float = 0.25
  roi_fg_iou: float = 0.5
  roi_bg_iou_high: float = 0.5
  roi_bg_iou_low: float = 0.0
  roi_crop_size: int = 14
  block4_units: int = 3
  box_head_init: str = 'auto'
  frcnn_huber_delta: float = 1.0
  detection_score_threshold: float = 0.05
  detection_nms_iou: float = 0.3
  max_detections: int = 100
  map_conventions: Tuple[str, ...] = (voc_metrics.VOC07, voc_metrics.OD_API)
  freeze_batch_norm: bool = True
  log_every_steps: int = 20
  checkpoint_every_steps: int = 5000
  seed: int = 0

  def validate(self) -> None:
    def fail(key: str, msg: str) -> None:
      raise ConfigError(f'{NAME}.{key}: {msg}')

    positive_ints = (
      'num_classes', 'max_side', 'test_scale', 'test_max_side', 'max_instances', 'batch_size', 'train_steps',
      'rpn_filters', 'rpn_batch_size', 'rpn_pre_nms_top_k', 'rpn_post_nms_top_k', 'rpn_test_pre_nms_top_k',
      'rpn_test_post_nms_top_k', 'roi_batch_size', 'block4_units', 'max_detections', 'log_every_steps',
      'checkpoint_every_steps',
    )  # fmt: skip
    for key in positive_ints:
      if getattr(self, key) < 1:
        fail(key, f'must be positive, got {getattr(self, key)}')
    if not self.scales or any(s < STRIDE for s in self.scales):
      fail('scales', f'need at least one shorter side of {STRIDE} pixels or more, got {list(self.scales)}')
    if self.max_side < max(self.scales):
      fail('max_side', f'must be at least the largest scale {max(self.scales)}, got {self.max_side}')
    if self.test_max_side < self.test_scale:
      fail('test_max_side', f'must be at least test_scale {self.test_scale}, got {self.test_max_side}')
    if self.learning_rate <= 0:
      fail('learning_rate', f'must be positive, got {self.learning_rate}')
    if not 0 <= self.momentum < 1:
      fail('momentum', f'must be in [0, 1), got {self.momentum}')
    if list(self.lr_decay_steps) != sorted(set(self.lr_decay_steps)) or any(s < 1 for s in self.lr_decay_steps):
      fail('lr_decay_steps', f'must be increasing positive steps, got {list(self.lr_decay_steps)}')
    if not 0 < self.lr_decay <= 1:
      fail('lr_decay', f'must be in (0, 1], got {self.lr_decay}')
    if self.warmup_steps < 0:
      fail('warmup_steps', f'must be >= 0, got {self.warmup_steps}')
    if not 0 < self.warmup_factor <= 1:
      fail('warmup_factor', f'must be in (0, 1], got {self.warmup_factor}')
    for key in ('weight_decay', 'lasso_l1_weight', 'rpn_min_size'):
      if getattr(self, key) < 0:
        fail(key, f'must be >= 0, got {getattr(self, key)}')
    for key in ('rpn_huber_delta', 'frcnn_huber_delta'):
      if getattr(self, key) <= 0:
        fail(key, f'must be positive, got {getattr(self, key)}')
    if not self.anchor_sizes or any(s <= 0 for s in self.anchor_sizes):
      fail('anchor_sizes', f'need positive sizes, got {list(self.anchor_sizes)}')
    if not self.anchor_aspect_ratios or any(r <= 0 for r in self.anchor_aspect_ratios):
      fail('anchor_aspect_ratios', f'need positive ratios, got {list(self.anchor_aspect_ratios)}')
    rpn = (self.rpn_negative_iou, self.rpn_positive_iou)
    if not 0 <= rpn[0] <= rpn[1] <= 1:
      fail('rpn_negative_iou', f'need 0 <= rpn_negative_iou <= rpn_positive_iou <= 1, got {rpn}')
    roi = (self.roi_bg_iou_low, self.roi_bg_iou_high, self.roi_fg_iou)
    if not 0 <= roi[0] <= roi[1] <= roi[2] <= 1:
      fail('roi_bg_iou_low', f'need 0 <= roi_bg_iou_low <= roi_bg_iou_high <= roi_fg_iou <= 1, got {roi}')
    for key in ('rpn_fg_fraction', 'roi_fg_fraction'):
      if not 0 < getattr(self, key) <= 1:
        fail(key, f'must be in (0, 1], got {getattr(self, key)}')
    for key in ('rpn_nms_iou', 'detection_nms_iou', 'detection_score_threshold'):
      if not 0 <= getattr(self, key) <= 1:
        fail(key, f'must be in [0, 1], got {getattr(self, key)}')
    if self.roi_crop_size < 2 or self.roi_crop_size % 2:
      fail('roi_crop_size', f'must be even (block 4 strides it by 2), got {self.roi_crop_size}')
    backbone.check_lasso_fields(self, NAME)
    if self.box_head_init not in BOX_HEAD_INITS:
      fail('box_head_init', f'must be one of {BOX_HEAD_INITS}, got {self.box_head_init!r}')
    conventions = list(self.map_conventions)
    if not conventions or len(set(conventions)) != len(conventions):
      fail('map_conventions', f'need distinct conventions, the headline first, got {conventions}')
    for convention in conventions:
      if convention not in voc_metrics.CONVENTIONS:
        fail('map_conventions', f'each must be one of {voc_metrics.CONVENTIONS}, got {convention!r}')


# --- Input pipeline -------------------------------------------------------------------------------


def _ceil_to_stride(x):
  return tf.cast(tf.math.ceil(tf.cast(x, tf.float32) / STRIDE) * STRIDE, tf.int32)


def transform(
  image: tf.Tensor,
  boxes: tf.Tensor,
  scale,
  max_side: int,
  flip,
  preprocess,
) -> Dict[str, tf.Tensor]:
  """Flips, resizes, preprocesses and pads one image; boxes go to resized pixels.

  Args:
    image: uint8 [H, W, 3].
    boxes: float [N, 4] normalised [ymin, xmin, ymax, xmax] (the reader's convention).
    scale: shorter side after resizing (int or scalar tensor).
    max_side: cap on the longer side (the shorter side shrinks to respect it).
    flip: bool (or scalar bool tensor): mirror left-right.
    preprocess: uint8 images -> trunk input (`backbone.input_fn`).

  Returns:
    {'image': float [Hc, Wc, 3] (zero-padded canvas: ceil16(scale) x ceil16(max_side),
     transposed for portrait images), 'image_shape': float [2] resized size,
     'boxes': float [N, 4] pixels of the resized image, 'canvas_key': int64 orientation
     (0 landscape, 1 portrait)}.
  """
  image, boxes = tf.cond(
    tf.convert_to_tensor(flip),
    lambda: (preprocess_ops.horizontal_flip_image(image), box_ops.horizontal_flip_boxes(boxes)),
    lambda: (image, boxes),
  )
  # A float scale: resize_image multiplies it with the float aspect ratio.
  resized, info = preprocess_ops.resize_image(image, size=tf.cast(scale, tf.float32), max_size=max_side)
  size = info[1]
  # Back to uint8 so both preprocessing modes (which expect uint8) see what the trunk saw.
  resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
  features = tf.cast(preprocess(resized), tf.float32)
  portrait = size[0] > size[1]
  short, long = _ceil_to_stride(scale), _ceil_to_stride(max_side)
  canvas_h = tf.where(portrait, long, short)
  canvas_w = tf.where(portrait, short, long)
  # Zero is the input mean of both preprocessing modes, as Model Garden pads after normalising.
  features = tf.image.pad_to_bounding_box(features, 0, 0, canvas_h, canvas_w)
  return {
    'image': features,
    'image_shape': size,
    'boxes': box_ops.denormalize_boxes(tf.reshape(boxes, [-1, 4]), size),
    'canvas_key': tf.cast(portrait, tf.int64),
  }


def train_dataset(
  cfg: DetectionEvalConfig, spec: str, preprocessing: str = 'rgb', start_step: int = 0
) -> tf.data.Dataset:
  """Batched, endless training batches for `FasterRCNN.train_losses`.

  Each image gets a scale and a flip drawn from a stateless generator keyed by
  (seed, element index), so a run's augmentation is reproducible. Batches are grouped
  by canvas (scale x orientation) so that each holds one shape. A resumed run
  (`start_step` > 0) does not replay the stream from its start: the file order seed and
  the draws are offset by `start_step`.

  Returns:
    Batches {'image', 'image_shape', 'gt_boxes' [B, M, 4] (-1 padded), 'gt_classes'
    int32 [B, M] 1-based (-1 padded), 'num_skipped'}.
  """
  preprocess = backbone.input_fn(preprocessing)
  scales = tf.constant(list(cfg.scales), tf.int32)
  ds = detection_dataset(spec, ReadOptions(shuffle_files=True, seed=cfg.seed + start_step))

  def keep_boxes(example):
    keep = tf.ones_like(example['difficult']) if cfg.train_difficult else tf.logical_not(example['difficult'])
    example = dict(example)
    example['boxes'] = tf.boolean_mask(example['boxes'], keep)
    example['classes'] = tf.boolean_mask(example['classes'], keep)
    return example

  def prepare(index, example):
    key = tf.stack([tf.constant(cfg.seed, tf.int64), index + start_step * cfg.batch_size])
    draws = tf.random.stateless_uniform([2], seed=key)
    scale_index = tf.minimum(tf.cast(draws[0] * len(cfg.scales), tf.int32), len(cfg.scales) - 1)
    flip = tf.logical_and(cfg.flip, draws[1] < 0.5)
    out = transform(example['image'], example['boxes'], scales[scale_index], cfg.max_side, flip, preprocess)
    classes = tf.cast(example['classes'], tf.int32) + 1  # 0 is background in the model.
    return {
      'image': out['image'],
      'image_shape': out['image_shape'],
      'gt_boxes': preprocess_ops.clip_or_pad_to_fixed_size(out['boxes'], cfg.max_instances, -1),
      'gt_classes': preprocess_ops.clip_or_pad_to_fixed_size(classes, cfg.max_instances, -1),
      'canvas_key': tf.cast(scale_index, tf.int64) * 2 + out['canvas_key'],
      pipeline.SKIPPED_KEY: example[pipeline.SKIPPED_KEY],
    }

  ds = ds.map(keep_boxes).filter(lambda e: tf.size(e['classes']) > 0).repeat().enumerate()
  ds = ds.map(prepare, num_parallel_calls=pipeline.AUTOTUNE)
  ds = ds.group_by_window(
    key_func=lambda e: e['canvas_key'],
    reduce_func=lambda _, window: window.batch(cfg.batch_size, drop_remainder=True),
    window_size=cfg.batch_size,
  )
  return ds.prefetch(2)


def eval_dataset(cfg: DetectionEvalConfig, spec: str, preprocessing: str = 'rgb') -> tf.data.Dataset:
  """Test images one per batch (as Faster R-CNN tests), with their original annotations.

  Returns:
    Batches of one: {'image', 'image_shape' (resized), 'original_shape' (decoded
    [H, W]), 'image_id', 'boxes' (normalised), 'classes' (0-based), 'difficult',
    'num_skipped'}.
  """
  preprocess = backbone.input_fn(preprocessing)

  def prepare(example):
    out = transform(example['image'], example['boxes'], cfg.test_scale, cfg.test_max_side, False, preprocess)
    keys = ('image_id', 'boxes', 'classes', 'difficult', pipeline.SKIPPED_KEY)
    original_shape = tf.shape(example['image'])[:2]
    return dict({k: example[k] for k in keys}, image=out['image'], image_shape=out['image_shape'],
                original_shape=original_shape)  # fmt: skip

  ds = detection_dataset(spec, ReadOptions(shuffle_files=False))
  return ds.map(prepare, num_parallel_calls=pipeline.AUTOTUNE).batch(1).prefetch(2)


# --- Training -------------------------------------------------------------------------------------


def learning_rate_schedule(cfg: DetectionEvalConfig) -> tf.keras.optimizers.schedules.LearningRateSchedule:
  """Step decay (x `lr_decay` at each of `lr_decay_steps`) after a linear warm-up."""
  rates = [cfg.learning_rate * cfg.lr_decay**i for i in range(len(cfg.lr_decay_steps) + 1)]
  schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay(list(cfg.lr_decay_steps), rates)
  if not cfg.warmup_steps:
    return schedule
  return lr_schedule.LinearWarmup(schedule, cfg.warmup_steps, cfg.learning_rate * cfg.warmup_factor)


def make_optimizer(cfg: DetectionEvalConfig) -> tf.keras.optimizers.Optimizer:
  """Momentum SGD on the schedule (weight decay is in the loss, Caffe style)."""
  return tf.keras.optimizers.SGD(learning_rate_schedule(cfg), momentum=cfg.momentum)


def make_train_step(model: FasterRCNN, optimizer: tf.keras.optimizers.Optimizer):
  """A tf.function: batch -> losses dict, applying one SGD update (traced once per canvas)."""
  variables = model.trainable_variables

  # No autograph: the step has no data-dependent Python control flow, and converting
  # the Model Garden layers' code dominated the tracing time.
  @tf.function(autograph=False)
  def step(batch):
    with tf.GradientTape() as tape:
      losses = model.train_losses(batch)
    grads = tape.gradient(losses['total_loss'], variables)
    optimizer.apply_gradients(zip(grads, variables))
    return losses

  return step


_STEP_KEYS = ('image', 'image_shape', 'gt_boxes', 'gt_classes')


_LOSSES = ('total_loss', 'rpn_score_loss', 'rpn_box_loss', 'frcnn_class_loss', 'frcnn_box_loss')


def _train(model: FasterRCNN, optimizer, tune: FineTune, dataset) -> Dict[str, float]:
  """Trains to `tune.steps` through the fine-tuning engine; returns the timing and skip counts."""
  step_fn = make_train_step(model, optimizer)
  # Keras's `learning_rate` (schedule=None) is the schedule at the optimizer's iterations.
  stats = tune.fit(lambda batch: step_fn({k: batch[k] for k in _STEP_KEYS}), dataset, log_keys=_LOSSES,
                   empty_message='the training source yields no batch (no image with a box?)')  # fmt: skip
  return {k: stats[k] for k in ('train_seconds', 'seconds_per_step', 'num_skipped_train')}


# --- Box head initialisation ---------------------------------------------------------------------


def resolve_box_head_init(cfg: DetectionEvalConfig, init_source: str) -> Tuple[str, str]:
  """Where block 4 starts: ('checkpoint', prefix holding it) or ('random', ''), from `cfg.box_head_init`.

  Args:
    cfg: the detection config.
    init_source: the trunk's source (`backbone.resolve_source` forms; '' or 'random'
      for a random trunk).

  Raises:
    ConfigError: 'checkpoint' asked of a source without a block 4, or a stored block 4
      whose unit count differs from `block4_units` (the key and the file are named).
  """
  if cfg.box_head_init == 'random':
    return 'random', ''
  kind, path = backbone.resolve_source(init_source)
  # A SavedModel's variables are a checkpoint with the same object paths (`backbone.load_trunk`).
  prefix = {'checkpoint': path, 'saved_model': os.path.join(path, 'variables', 'variables')}.get(kind, '')
  units = block4.stored_units(prefix) if prefix else 0
  if not units:
    if cfg.box_head_init == 'checkpoint':
      raise ConfigError(
        f"{NAME}.box_head_init: 'checkpoint' needs an init source holding a trained block 4 at "
        f"{block4.CHECKPOINT_PATH} (the supervised baseline's checkpoints do), but "
        f'{prefix or init_source or backbone.RANDOM!r} has none; use auto or random'
      )
    return 'random', ''
  if units != cfg.block4_units:
    raise ConfigError(
      f'{NAME}.block4_units: {cfg.block4_units}, but the block 4 that box_head_init: {cfg.box_head_init} transfers '
      f'from {prefix!r} has {units} units; set block4_units: {units}, or box_head_init: random'
    )
  return 'checkpoint', prefix


# --- Evaluation -----------------------------------------------------------------------------------


def detections_to_normalized(boxes: np.ndarray, image_shape: np.ndarray) -> np.ndarray:
  """Pixel boxes of the resized image -> normalised [ymin, xmin, ymax, xmax] clipped to [0, 1]."""
  height, width = float(image_shape[0]), float(image_shape[1])
  return np.clip(np.asarray(boxes, np.float64) / np.array([height, width, height, width]), 0.0, 1.0)


def evaluate(
  model: FasterRCNN,
  dataset: tf.data.Dataset,
  progress: bool = True,
  conventions: Sequence[str] = (voc_metrics.VOC07, voc_metrics.OD_API),
) -> Dict[str, Any]:
  """Detects on every test image and scores them with `voc_metrics.VOCEvaluation`.

  Args:
    model: the detector.
    dataset: `eval_dataset` batches.
    progress: log progress lines.
    conventions: mAP conventions, each computed at IoU 0.5 and 0.75.

  Returns:
    The evaluator's metrics (mAP and per-class AP of every convention at IoU 0.5 and
    0.75, 'conventions') and counts.
  """

  @tf.function(autograph=False)  # As the train step: nothing to convert, much faster to trace.
  def detect(images, image_shape):
    return model.detect(images, image_shape)

  evaluation = voc_metrics.VOCEvaluation(VOC_CLASSES[: model.num_classes], conventions)
  counts = {'num_test_images': 0, 'num_groundtruth_boxes': 0, 'num_difficult_boxes': 0, 'num_detections': 0}
  num_skipped, tick = 0, time.perf_counter()
  for batch in dataset:
    out = {k: v.numpy()[0] for k, v in detect(batch['image'], batch['image_shape']).items()}
    n = int(out['num_detections'])
    difficult = batch['difficult'][0].numpy().astype(bool)
    evaluation.add_image(
      batch['image_id'][0].numpy().decode(),
      batch['original_shape'][0].numpy(),
      batch['boxes'][0].numpy(),
      batch['classes'][0].numpy().astype(np.int64),
      detections_to_normalized(out['detection_boxes'][:n], batch['image_shape'][0].numpy()),
      out['detection_scores'][:n],
      out['detection_classes'][:n].astype(np.int64) - 1,  # The model's 1-based classes -> ours.
      groundtruth_difficult=difficult,
    )
    counts['num_test_images'] += 1
    counts['num_groundtruth_boxes'] += int(difficult.size)
    counts['num_difficult_boxes'] += int(difficult.sum())
    counts['num_detections'] += n
    num_skipped = max(num_skipped, int(batch[pipeline.SKIPPED_KEY][0]))
    if progress and counts['num_test_images'] % 500 == 0:
      logging.info('%s: detected on %d test images', NAME, counts['num_test_images'])
  if not counts['num_test_images']:
    raise ValueError(f'{NAME}: the test source holds no images')
  results = evaluation.evaluate()
  # Strict JSON has no NaN: classes without test ground truth get null.
  results = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in results.items()}
  results.update(counts, num_skipped_test=num_skipped, test_seconds=time.perf_counter() - tick)
  return results


def run_detection(
  cfg: DetectionEvalConfig,
  trunk: ResNetV2Trunk,
  model_dir: str,
  train_spec: str = '',
  test_spec: str = '',
  preprocessing: str = 'rgb',
  init_source: str = '',
  progress: bool = True,
) -> Dict[str, Any]:
  """Fine-tunes Faster R-CNN on VOC07 trainval, evaluates on test, writes results.json.

  Everything goes to `<model_dir>/eval/detection`: TensorBoard scalars
  (`detection/<loss>`, `detection/learning_rate`, `detection/steps_per_second`, and
  the final mAPs named as their result keys, e.g. `detection/mAP@0.5IOU_VOC07_11point`,
  `detection/mAP@0.75IOU_VOC07_11point`, and without suffix for 'od_api'),
  `checkpoints/` (resumed from when present) and `results.json`.

  Args:
    cfg: the protocol (validated here).
    trunk: a built trunk (`backbone.load_trunk`); fine-tuned in place.
    model_dir: the evaluated run's folder (or any output folder).
    train_spec: training source; default `cfg.train_source`.
    test_spec: test source; default `cfg.test_source`.
    preprocessing: the trunk's input convention, 'rgb' or 'harmonized'.
    init_source: where the trunk came from, recorded in the results; it also decides
      the box head's start under `box_head_init: auto` (see `resolve_box_head_init`).
    progress: log progress lines.

  Returns:
    The results: the `voc_metrics.VOCEvaluation` metrics (keys
    'PascalBoxes_Precision/mAP@<t>IOU_VOC07_11point' and 'PascalBoxes_Precision/mAP@<t>IOU'
    for t = 0.5, 0.75 and the chosen conventions, and per class), 'conventions',
    'map_convention' (the headline), 'box_head_init' ('checkpoint' or 'random') with
    'box_head_source' and 'box_head_input', counts, timing and the protocol.

  Raises:
    ConfigError: invalid config, no source, a box head init the source cannot give, or a
      trunk that is not ResNet-v2.
    FloatingPointError: a non-finite loss (the step is named).
    ValueError: a checkpoint that does not fit the config, or an empty source.
  """
  validate_all(cfg, NAME)
  train_spec, test_spec = train_spec or cfg.train_source, test_spec or cfg.test_source
  if not train_spec or not test_spec:
    raise ConfigError(f'{NAME}.{"train_source" if not train_spec else "test_source"}: no VOC source given')
  backbone.check_trunk_kind(NAME, trunk.kind, TRUNK_KINDS, TRUNK_NEEDS)
  box_head_init, box_head_source = resolve_box_head_init(cfg, init_source)
  out_dir = backbone.eval_dir(model_dir, NAME)
  tf.random.set_seed(cfg.seed)
  # A resumed run restores its own block 4 below, over the transferred one.
  model = build_detector(cfg, trunk, block4_checkpoint=box_head_source)
  if progress:
    logging.info('%s: box head (block 4) %s', NAME, f'from {box_head_source}' if box_head_source else 'random')
  optimizer = make_optimizer(cfg)
  tune = FineTune(NAME, out_dir, steps=cfg.train_steps, log_every_steps=cfg.log_every_steps,
                  checkpoint_every_steps=cfg.checkpoint_every_steps, progress=progress)  # fmt: skip
  # Slots exist before a restore, so a resumed momentum is restored, not re-created as 0.
  start = tune.restore(optimizer, model.trainable_variables, model=model)
  timing: Dict[str, float] = {}
  if start < cfg.train_steps:
    timing = _train(model, optimizer, tune, train_dataset(cfg, train_spec, preprocessing, start_step=start))
  results = evaluate(model, eval_dataset(cfg, test_spec, preprocessing), progress, cfg.map_conventions)
  steps = tune.step
  map_keys = {
    (convention, threshold): voc_metrics.mean_ap_key(convention, threshold)
    for convention in cfg.map_conventions
    for threshold in voc_metrics.VOCEvaluation.IOU_THRESHOLDS
  }
  tune.scalars({key.split('/', 1)[1]: results[key] for key in map_keys.values() if results.get(key) is not None})
  results.update(timing)
  results.update(
    steps=steps,
    scales=list(cfg.scales),
    max_side=cfg.max_side,
    test_scale=cfg.test_scale,
    test_max_side=cfg.test_max_side,
    flip=cfg.flip,
    batch_size=cfg.batch_size,
    use_lasso=cfg.use_lasso,
    lasso_mix_norm=cfg.lasso_mix_norm,
    freeze_batch_norm=cfg.freeze_batch_norm,
    train_difficult=cfg.train_difficult,
    map_convention=cfg.map_conventions[0],
    box_head_init=box_head_init,
    box_head_source=box_head_source,
    box_head_input=model.backbone.box_input,
    preprocessing=preprocessing,
    train_source=train_spec,
    test_source=test_spec,
  )
  if model.backbone.lasso is not None:
    results['lasso_alpha'] = [float(a) for a in model.backbone.lasso.alpha().numpy()[0]]
  if init_source:
    results['init'] = init_source
  path = backbone.write_results(model_dir, NAME, results)
  if progress:
    headline = cfg.map_conventions[0]
    logging.info(
      '%s: mAP (%s) @0.5 %s, @0.75 %s on %d images -> %s', NAME, headline, results.get(map_keys[headline, 0.5]),
      results.get(map_keys[headline, 0.75]), results['num_test_images'], path,
    )  # fmt: skip
  return results


# Faster R-CNN here runs block 3 at output stride 16 and a ResNet-v2 block 4 as box head
# (detection_model.py): ResNet-v2's structure. AlexNet / VGG16 are refused.
TRUNK_KINDS = ('resnet_v2',)
TRUNK_NEEDS = 'Faster R-CNN reads block 3 at output stride 16 and puts a ResNet-v2 block 4 on it'


class DetectionProtocol(Protocol):
  """Doersch & Zisserman §5: Faster R-CNN on PASCAL VOC07, trunk fine-tuned."""

  name = NAME
  summary = 'Faster R-CNN on PASCAL VOC07 trainval -> test, trunk fine-tuned (mAP, 11-point and all-point)'
  config_class = DetectionEvalConfig
  world_sources = ('detection_trainval', 'detection_test')
  headline = (
    'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.5IOU',
    'PascalBoxes_Precision/mAP@0.75IOU',
  )
  # In pairs sharing one AP rule: the paper's 11-point (VOC2007 devkit) at IoU 0.5 and
  # 0.75, then the OD API's all-point AP at both (see voc_metrics.py).
  columns = (
    Column('VOC07 mAP@0.5 11-pt (%)', 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point', 100.0, 1),
    Column('VOC07 mAP@0.75 11-pt (%)', 'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point', 100.0),
    Column('VOC07 mAP@0.5 all-pt (%)', 'PascalBoxes_Precision/mAP@0.5IOU', 100.0),
    Column('VOC07 mAP@0.75 all-pt (%)', 'PascalBoxes_Precision/mAP@0.75IOU', 100.0),
  )

  def run(self, ctx: Context) -> Dict[str, Any]:
    backbone.check_trunk_kind(NAME, ctx.config.trunk.kind, TRUNK_KINDS, TRUNK_NEEDS)  # Before loading anything.
    return run_detection(ctx.section, ctx.trunk(), ctx.model_dir, ctx.train_spec, ctx.test_spec,
                         preprocessing=ctx.preprocessing, init_source=ctx.init, progress=ctx.progress)  # fmt: skip
