"""The `detection` protocol's input pipeline: training batches and test images at one or several scales.

`data.detection.detection_dataset` -> flip (normalised boxes) -> resize the shorter side
to the chosen scale, the longer side capped -> the trunk's preprocessing -> zero-pad to
the canvas of that scale and orientation (so a step is traced once per canvas, not per
image size) -> boxes in pixels of the resized image. Canvas sides are multiples of the
detector's stride (16), which every backbone's feature grid relies on.

With a `proposals.ProposalStore` (Fast R-CNN on selective search) each element also carries
its image's proposals, looked up by image id, flipped and resized with the image, as pixel
boxes padded with -1 to `max_proposals` (the best-ranked first when an image has more).
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence

import tensorflow as tf
from official.vision.ops import box_ops, preprocess_ops

from mtssl_tf.data import pipeline
from mtssl_tf.data.detection import detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.detection_config import DetectionEvalConfig
from mtssl_tf.evaluation.detection_model import STRIDE
from mtssl_tf.evaluation.proposals import ProposalStore


def _ceil_to_stride(x):
  return tf.cast(tf.math.ceil(tf.cast(x, tf.float32) / STRIDE) * STRIDE, tf.int32)


def lookup_proposals(store: ProposalStore, max_proposals: int, image_id: tf.Tensor) -> tf.Tensor:
  """An image's normalised proposals [max_proposals, 4], -1 padded (a missing id fails naming the cache)."""
  boxes = tf.numpy_function(functools.partial(store.lookup, max_proposals=max_proposals), [image_id], tf.float32)
  return tf.ensure_shape(boxes, [max_proposals, 4])


def transform(
  image: tf.Tensor,
  boxes: tf.Tensor,
  scale,
  max_side: int,
  flip,
  preprocess,
  proposals: Optional[tf.Tensor] = None,
) -> Dict[str, tf.Tensor]:
  """Flips, resizes, preprocesses and pads one image; boxes go to resized pixels.

  Args:
    image: uint8 [H, W, 3].
    boxes: float [N, 4] normalised [ymin, xmin, ymax, xmax] (the reader's convention).
    scale: shorter side after resizing (int or scalar tensor).
    max_side: cap on the longer side (the shorter side shrinks to respect it).
    flip: bool (or scalar bool tensor): mirror left-right.
    preprocess: uint8 images -> trunk input (`backbone.input_fn`).
    proposals: optional normalised [P, 4] boxes, -1 padded; they follow the image.

  Returns:
    {'image': float [Hc, Wc, 3] (zero-padded canvas: ceil16(scale) x ceil16(max_side),
     transposed for portrait images), 'image_shape': float [2] resized size,
     'boxes': float [N, 4] pixels of the resized image, 'canvas_key': int64 orientation
     (0 landscape, 1 portrait)}, and 'proposals' [P, 4] in pixels (padding kept at -1)
     when given.
  """
  if proposals is not None:
    valid = tf.reduce_max(proposals, axis=-1, keepdims=True) >= 0.0
  image, boxes = tf.cond(
    tf.convert_to_tensor(flip),
    lambda: (preprocess_ops.horizontal_flip_image(image), box_ops.horizontal_flip_boxes(boxes)),
    lambda: (image, boxes),
  )
  if proposals is not None:
    proposals = tf.cond(tf.convert_to_tensor(flip), lambda: box_ops.horizontal_flip_boxes(proposals), lambda: proposals)
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
  out = {
    'image': features,
    'image_shape': size,
    'boxes': box_ops.denormalize_boxes(tf.reshape(boxes, [-1, 4]), size),
    'canvas_key': tf.cast(portrait, tf.int64),
  }
  if proposals is not None:
    out['proposals'] = tf.where(valid, box_ops.denormalize_boxes(proposals, size), -1.0)
  return out


def train_dataset(
  cfg: DetectionEvalConfig,
  spec: str,
  preprocessing: str = 'rgb',
  start_step: int = 0,
  proposals: Optional[ProposalStore] = None,
) -> tf.data.Dataset:
  """Batched, endless training batches for `FasterRCNN.train_losses`.

  Each image gets a scale and a flip drawn from a stateless generator keyed by
  (seed, element index), so a run's augmentation is reproducible. Batches are grouped
  by canvas (scale x orientation) so that each holds one shape. A resumed run
  (`start_step` > 0) does not replay the stream from its start: the file order seed and
  the draws are offset by `start_step`.

  Returns:
    Batches {'image', 'image_shape', 'gt_boxes' [B, M, 4] (-1 padded), 'gt_classes'
    int32 [B, M] 1-based (-1 padded), 'num_skipped'}, and 'proposals' [B, P, 4] with a store.
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
    boxes = lookup_proposals(proposals, cfg.max_proposals, example['image_id']) if proposals is not None else None
    out = transform(example['image'], example['boxes'], scales[scale_index], cfg.max_side, flip, preprocess, boxes)
    classes = tf.cast(example['classes'], tf.int32) + 1  # 0 is background in the model.
    extra = {'proposals': out['proposals']} if proposals is not None else {}
    return {
      **extra,
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


def eval_dataset(
  cfg: DetectionEvalConfig, spec: str, preprocessing: str = 'rgb', proposals: Optional[ProposalStore] = None
) -> tf.data.Dataset:
  """Test images one per batch (as Faster R-CNN tests), with their original annotations.

  Returns:
    Batches of one: {'image', 'image_shape' (resized), 'original_shape' (decoded
    [H, W]), 'image_id', 'boxes' (normalised), 'classes' (0-based), 'difficult',
    'num_skipped'}, and 'proposals' (pixels of the resized image) with a store.
  """
  preprocess = backbone.input_fn(preprocessing)

  def prepare(example):
    boxes = lookup_proposals(proposals, cfg.max_proposals, example['image_id']) if proposals is not None else None
    out = transform(example['image'], example['boxes'], cfg.test_scale, cfg.test_max_side, False, preprocess, boxes)
    keys = ('image_id', 'boxes', 'classes', 'difficult', pipeline.SKIPPED_KEY)
    extra = {'proposals': out['proposals']} if proposals is not None else {}
    original_shape = tf.shape(example['image'])[:2]
    return dict({k: example[k] for k in keys}, image=out['image'], image_shape=out['image_shape'],
                original_shape=original_shape, **extra)  # fmt: skip

  ds = detection_dataset(spec, ReadOptions(shuffle_files=False))
  return ds.map(prepare, num_parallel_calls=pipeline.AUTOTUNE).batch(1).prefetch(2)


def multiscale_eval_dataset(
  scales: Sequence[int],
  max_side: int,
  spec: str,
  preprocessing: str = 'rgb',
  proposals: Optional[ProposalStore] = None,
  max_proposals: int = 0,
) -> tf.data.Dataset:
  """Test images one per batch, each at every one of `scales` (an image pyramid, as Fast R-CNN's multi-scale test).

  Returns:
    Batches of one: `eval_dataset`'s keys but 'image' / 'image_shape', and for each
    scale index i 'image_<i>' (its canvas) and 'image_shape_<i>' (its resized size), and with
    a store 'proposals_<i>' (the proposals in that level's pixels; `max_proposals` of them).
  """
  preprocess = backbone.input_fn(preprocessing)

  def prepare(example):
    out = {k: example[k] for k in ('image_id', 'boxes', 'classes', 'difficult', pipeline.SKIPPED_KEY)}
    out['original_shape'] = tf.shape(example['image'])[:2]
    boxes = lookup_proposals(proposals, max_proposals, example['image_id']) if proposals is not None else None
    for i, scale in enumerate(scales):
      level = transform(example['image'], example['boxes'], scale, max_side, False, preprocess, boxes)
      out[f'image_{i}'], out[f'image_shape_{i}'] = level['image'], level['image_shape']
      if proposals is not None:
        out[f'proposals_{i}'] = level['proposals']
    return out

  ds = detection_dataset(spec, ReadOptions(shuffle_files=False))
  return ds.map(prepare, num_parallel_calls=pipeline.AUTOTUNE).batch(1).prefetch(2)
