"""Fast R-CNN on precomputed proposals (Girshick 2015), the detector of Noroozi et al. 2018 Table 3.

`detection_model.FasterRCNN` generates its proposals with an RPN; this model takes them as an
input, as Fast R-CNN does with R-CNN's selective-search boxes (`proposals`), and has no RPN.
The rest is the same network and the same Model Garden parts, so the two differ only in where
the ROIs come from:

* backbone and box head: any pair with `FasterRCNN`'s interfaces (for AlexNet / VGG16:
  `detection_convnet.ConvDetectionBackbone` and `FCBoxHead`, Fast R-CNN's CaffeNet head);
* training ROIs: the image's proposals plus its ground-truth boxes (Fast R-CNN's
  `merge_roidbs`), sampled by `layers.ROISampler` (`roi_batch_size` per image, at most
  `roi_fg_fraction` foreground at IoU >= `roi_fg_iou`, background in [`roi_bg_iou_low`,
  `roi_bg_iou_high`); Fast R-CNN's config.py: 64, 0.25, 0.5, [0.1, 0.5));
* losses: softmax cross-entropy over the sampled ROIs that are foreground or background by
  those rules. The sampler always returns `roi_batch_size` ROIs; when an image has too few
  candidates it fills up with padded or ignored ones labelled background, where Fast R-CNN's
  minibatch simply holds fewer ROIs (`roi_data_layer/minibatch.py`), so those are masked out
  of the class loss; the box loss is Model Garden's (foreground only), box targets with the
  weights (10, 10, 5, 5) (`REGRESSION_WEIGHTS`, py-faster-rcnn's BBOX_NORMALIZE_STDS 0.1 / 0.2;
  Fast R-CNN itself normalised by the training set's target statistics);
* test (`scored_boxes`, then `detection_scales.proposal_detector`): softmax class
  probabilities and class-specific regressed boxes for every proposal, clipped to the image,
  as `lib/fast_rcnn/test.py` `im_detect`; the per-class NMS and cap run after the scales are
  merged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

import tensorflow as tf
from official.vision.losses import maskrcnn_losses
from official.vision.ops import box_ops

from mtssl_tf.evaluation.detection_model import BoxInputROIAligner
from mtssl_tf.evaluation.roi_training import make_roi_sampler, masked_class_loss, sampled_for_real, with_regularisers

if TYPE_CHECKING:
  from mtssl_tf.evaluation.detection_config import DetectionEvalConfig

# Model Garden's default Faster R-CNN box coding (MaskRCNNModel's first cascade weights).
REGRESSION_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LOSS_NAMES = ('frcnn_class_loss', 'frcnn_box_loss')


class FastRCNN(tf.keras.Model):
  """A backbone, ROI crops of given proposals, a box head; losses and scored boxes."""

  def __init__(self, cfg: DetectionEvalConfig, backbone: tf.keras.Model, detection_head: tf.keras.layers.Layer):
    """Builds the parts (variables are created on the first call).

    Args:
      cfg: the detection config (ROI sampling, crop size, losses and weight decay are read).
      backbone: `{'4': features}` at stride 16 with `FasterRCNN`'s backbone interface
        (`trunk`, `lasso`, `lasso_norm`, `box_input`, `lasso_penalty()`).
      detection_head: ROI crops [B, N, S, S, C] -> (class logits [B, N, K + 1], box deltas
        [B, N, 4 (K + 1)]), with `variable_groups()`.
    """
    super().__init__(name='fast_rcnn')
    self.backbone = backbone
    self.detection_head = [detection_head]  # A list, as MaskRCNNModel keeps it (`variable_groups` callers).
    self.roi_sampler = make_roi_sampler(cfg)
    self.roi_aligner = BoxInputROIAligner(crop_size=cfg.roi_crop_size, sample_offset=0.5)
    self.frcnn_box_loss = maskrcnn_losses.FastrcnnBoxLoss(cfg.frcnn_huber_delta)
    self.num_classes = cfg.num_classes
    self.weight_decay = cfg.weight_decay

  def call(self, images: tf.Tensor, rois: tf.Tensor, training=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Canvases [B, H, W, 3] and pixel ROIs [B, N, 4] -> class logits [B, N, K + 1], box deltas [B, N, 4 (K + 1)]."""
    features = self.backbone(images, training=training)
    roi_features = self.roi_aligner(features, rois, training=training)
    return self.detection_head[0](roi_features, training=training)

  def train_losses(self, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """One training forward pass: the Fast R-CNN losses, regularisers and the total.

    Args:
      batch: {'image' [B, H, W, 3], 'proposals' [B, P, 4] pixel boxes of the resized image
        (-1 padded), 'gt_boxes' [B, M, 4] pixel, 'gt_classes' [B, M] 1-based (both -1 padded)}.

    Returns:
      Scalars: the `LOSS_NAMES`, 'weight_decay', 'lasso_penalty' and 'total_loss'.
    """
    rois, matched_boxes, matched_classes, _ = self.roi_sampler(
      batch['proposals'], batch['gt_boxes'], batch['gt_classes']
    )
    rois = tf.stop_gradient(rois)
    box_targets = box_ops.encode_boxes(matched_boxes, rois, weights=REGRESSION_WEIGHTS)
    background = tf.equal(matched_classes, 0)[..., None]
    box_targets = tf.where(background, tf.zeros_like(box_targets), box_targets)  # No regression for background.
    class_outputs, box_outputs = self(batch['image'], rois, training=True)
    losses = {
      'frcnn_class_loss': masked_class_loss(
        class_outputs, matched_classes, sampled_for_real(self.roi_sampler, rois, batch['gt_boxes'])
      ),
      'frcnn_box_loss': self.frcnn_box_loss(box_outputs, matched_classes, box_targets),
    }
    return with_regularisers(self, losses)

  def scored_boxes(self, images: tf.Tensor, image_shape: tf.Tensor, rois: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Test: every ROI's class probabilities and class-specific boxes (`im_detect`).

    Args:
      images: canvases [B, H, W, 3].
      image_shape: [B, 2] resized (unpadded) sizes, to clip the boxes to.
      rois: [B, N, 4] pixel proposals of the resized image, -1 padded.

    Returns:
      {'scores': [B, N, K] softmax probabilities of the K object classes (0 for padded
       ROIs), 'boxes': [B, N, K, 4] regressed pixel boxes of the resized image, clipped}.
    """
    class_outputs, box_outputs = self(images, rois, training=False)
    probs = tf.nn.softmax(tf.cast(class_outputs, tf.float32))[..., 1:]
    valid = tf.reduce_max(rois, axis=-1, keepdims=True) >= 0.0
    probs = tf.where(valid, probs, tf.zeros_like(probs))
    shape = tf.shape(box_outputs)
    deltas = tf.reshape(tf.cast(box_outputs, tf.float32), [shape[0], shape[1], self.num_classes + 1, 4])[:, :, 1:]
    anchors = tf.tile(rois[:, :, None, :], [1, 1, self.num_classes, 1])
    boxes = box_ops.decode_boxes(deltas, anchors, weights=REGRESSION_WEIGHTS)
    boxes = box_ops.clip_boxes(boxes, image_shape[:, None, None, :])
    return {'scores': probs, 'boxes': boxes}

  def variable_groups(self) -> Dict[str, List[tf.Variable]]:
    """Trainable variables by part: trunk, lasso, then the box head's (as `FasterRCNN`, without rpn)."""
    lasso = [part for part in (self.backbone.lasso, self.backbone.lasso_norm) if part is not None]
    return {
      'trunk': list(self.backbone.trunk.trainable_variables),
      'lasso': [v for part in lasso for v in part.trainable_variables],
      **self.detection_head[0].variable_groups(),
    }


def create_variables(model: FastRCNN, size: int) -> None:
  """Creates every variable of `model` by one test pass on a blank `size` x `size` canvas with one ROI."""
  rois = tf.constant([[[0.0, 0.0, float(size), float(size)]]])
  model.scored_boxes(tf.zeros([1, size, size, 3]), tf.constant([[size, size]], tf.float32), rois)
