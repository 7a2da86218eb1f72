"""What Fast R-CNN (`fast_rcnn`) and Faster R-CNN (`detection_model`) share in training their box head.

* `make_roi_sampler`: Model Garden's `ROISampler` with the config's IoU rules (Fast R-CNN's
  config.py: 64 ROIs an image at most 25% foreground, foreground at IoU >= 0.5, background in
  [0.1, 0.5); the RPN config's Detectron default background floor is 0), the ground-truth boxes
  among the candidates (Fast R-CNN's `merge_roidbs`).
* `sampled_for_real` and `masked_class_loss`: the class loss over the sampler's real ROIs only.
  `ROISampler` always returns its `num_sampled_rois`, filling up with ROIs that are neither
  foreground nor background (padding, or IoU below the background floor) labelled background;
  Caffe's minibatch (Fast R-CNN's `roi_data_layer/minibatch.py`, py-faster-rcnn's
  `proposal_target_layer`) just holds fewer ROIs.
* `with_regularisers`: Caffe-style weight decay and the lasso penalty, summed into 'total_loss'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import tensorflow as tf
from official.vision.modeling.layers import roi_sampler
from official.vision.ops import box_ops

if TYPE_CHECKING:
  from mtssl_tf.evaluation.detection_config import DetectionEvalConfig


def with_regularisers(model: tf.keras.Model, losses: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """`losses` plus 'weight_decay', 'lasso_penalty' and 'total_loss' (their sum), for either detector.

  Weight decay is Caffe-style (wd * w added to the gradient) on conv and dense kernels only;
  the lasso penalty is the backbone's (`lasso_penalty()`, 0 without a lasso mix).
  """
  kernels = [v for v in model.trainable_variables if 'kernel' in v.name]
  losses = dict(losses, weight_decay=model.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in kernels]),
                lasso_penalty=model.backbone.lasso_penalty())  # fmt: skip
  losses['total_loss'] = tf.add_n(list(losses.values()))
  return losses


def make_roi_sampler(cfg: DetectionEvalConfig) -> roi_sampler.ROISampler:
  """The box head's training ROIs: proposals plus the ground-truth boxes, sampled by the config's IoU rules."""
  return roi_sampler.ROISampler(
    mix_gt_boxes=True,
    num_sampled_rois=cfg.roi_batch_size,
    foreground_fraction=cfg.roi_fg_fraction,
    foreground_iou_threshold=cfg.roi_fg_iou,
    background_iou_high_threshold=cfg.roi_bg_iou_high,
    background_iou_low_threshold=cfg.roi_bg_iou_low,
  )


def sampled_for_real(sampler: roi_sampler.ROISampler, rois: tf.Tensor, gt_boxes: tf.Tensor) -> tf.Tensor:
  """[B, K] bool: each sampled ROI is foreground or background by `sampler`'s IoU rules, not a filler.

  `ROISampler` always returns its `num_sampled_rois`; with too few candidates it fills up with
  ROIs that are neither (IoU below the background range, or padding), labelled background.
  Caffe's minibatch (Fast R-CNN's `roi_data_layer`, py-faster-rcnn's `proposal_target_layer`)
  just holds fewer ROIs, so these are the ones to leave out of the class loss.
  """
  iou = tf.reduce_max(box_ops.bbox_overlap(rois, tf.cast(gt_boxes, rois.dtype)), axis=-1)
  config = sampler.get_config()
  background = (iou >= config['background_iou_low_threshold']) & (iou < config['background_iou_high_threshold'])
  return (iou >= config['foreground_iou_threshold']) | background


def masked_class_loss(class_outputs: tf.Tensor, class_targets: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
  """Softmax cross-entropy averaged over the valid ROIs (Caffe's SoftmaxWithLoss over the minibatch's ROIs).

  With every ROI valid this is Model Garden's `FastrcnnClassLoss` (the mean over all ROIs).
  """
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(class_targets, tf.int32),
                                                        tf.cast(class_outputs, tf.float32))  # fmt: skip
  valid = tf.cast(valid, tf.float32)
  return tf.reduce_sum(loss * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
