"""Faster R-CNN on the self-supervised trunk, assembled from Model Garden's `official.vision`.

Doersch & Zisserman (2017, §5) evaluate on PASCAL VOC 2007 detection with Faster R-CNN:
the trunk (blocks 1-3, stride 16) is the backbone, ResNet block 4 is the per-proposal
head applied to ROI-pooled features (randomly initialised for self-supervised trunks,
transferred from the ImageNet-labels network), and everything is fine-tuned. This is the
ResNet "C4" Faster R-CNN of He et al. (2016).

`official.vision.modeling.maskrcnn_model.MaskRCNNModel` (no mask head) runs exactly
that graph when given a backbone returning one pyramid level and a detection head that
runs block 4, so the detector is that model with our parts plugged in:

* backbone: `DetectionBackbone`, the trunk at stride 16 (or its lasso mix, §3.2)
  returned as `{'4': features}`, level 4 being log2 of the stride, the key the
  official layers use;
* RPN: `heads.dense_prediction_heads.RPNHead` at level 4 only;
* proposals, sampling, ROI crops and post-processing: `layers.MultilevelROIGenerator`,
  `layers.ROISampler`, `layers.MultilevelROIAligner` (14x14 crops) and
  `layers.DetectionGenerator` (per-class NMS);
* box head: `Block4BoxHead`, our `Block4` (stride 2: 14x14 -> 7x7) then average pooling
  then `heads.instance_heads.DetectionHead` with no extra convs or fcs (its class and
  box layers with the Fast R-CNN initialisers). Its ROI crops come from the RPN's
  features (`final`: block 3 after BN-ReLU) when block 4 is new, and from the raw
  block-3 sum (the `block3` endpoint, which a trained ResNet-v2 block 4 reads) when
  block 4 is transferred (`build_detector(..., block4_checkpoint=...)`);
* anchors: `ops.anchor_generator.AnchorGenerator` (explicit sizes: Faster R-CNN's
  128/256/512 are octaves apart, which `ops.anchor.Anchor`'s 2^(i/n) scales cannot
  express); RPN targets: `ops.anchor.RpnAnchorLabeler`; losses:
  `losses.maskrcnn_losses`.

Other networks plug in as `FasterRCNN(cfg, backbone=..., detection_head=...)` with the same
interfaces: `detection_convnet` puts AlexNet / VGG16 there under Fast R-CNN's fc6/fc7 head.

RPN targets are assigned in the train step rather than the input pipeline: the
labeler needs static anchor counts, and multi-scale training gives each batch its
own canvas size, which only a traced step knows statically.

All boxes inside the model are pixel [ymin, xmin, ymax, xmax] of the resized image.
Classes are 1-based (0 is background); the trunk variables stay the trunk's own
(`model.backbone.trunk`), so `backbone.load_trunk` fills them before the model is
built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

import tensorflow as tf
from official.vision.losses import maskrcnn_losses
from official.vision.modeling import maskrcnn_model
from official.vision.modeling.heads import dense_prediction_heads, instance_heads
from official.vision.modeling.layers import detection_generator, roi_aligner, roi_generator
from official.vision.ops import anchor

from mtssl_tf import compat
from mtssl_tf.evaluation import roi_training
from mtssl_tf.trunk import lasso as lasso_lib
from mtssl_tf.trunk.block4 import Block4, load_block4
from mtssl_tf.trunk.lasso import LassoMix
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

if TYPE_CHECKING:  # The config lives with the evaluation, which imports this module.
  from mtssl_tf.evaluation.detection_config import DetectionEvalConfig

# Model Garden's AnchorGenerator, named AnchorGeneratorv1 on the current line (mtssl_tf/compat.py).
_AnchorGenerator = compat.anchor_generator_class()
STRIDE = 16
LEVEL = '4'  # log2(STRIDE): the one feature level, keyed as official.vision keys pyramid levels.
# Backbone output read by the ROI aligner instead of LEVEL when present (the RPN reads LEVEL).
BOX_INPUT_KEY = 'box_head_input'
# What the box head's ROI crops are cut from: the RPN's BN-ReLU features, or the raw block-3 sum.
BOX_HEAD_INPUTS = ('final', 'block3')
LOSS_NAMES = ('rpn_score_loss', 'rpn_box_loss', 'frcnn_class_loss', 'frcnn_box_loss')


class DetectionBackbone(tf.keras.Model):
  """The trunk at output stride 16 as a one-level feature pyramid `{'4': features}`.

  Without lasso the features are the trunk's `final` endpoint (block 3 after BN-ReLU).
  With lasso they are a new, learned lasso row mixing every block-3 unit, then BN-ReLU
  (`lasso_mix_norm`: the trunk's own closing BN in block 3's place by default, or a new
  one), as the pre-training heads read it (`MultiTaskModel.features`); the pre-training
  alphas are not loaded because detection is a new consumer. With `box_input='block3'`
  the output also holds, at `BOX_INPUT_KEY`, the same features before that BN-ReLU (the
  `block3` endpoint, or the raw lasso mix), for a transferred block 4.
  """

  def __init__(
    self,
    trunk: ResNetV2Trunk,
    use_lasso: bool = False,
    lasso_l1_weight: float = 1e-3,
    lasso_init: str = 'last',
    lasso_mix_norm: str = 'trunk',
    freeze_batch_norm: bool = True,
    box_input: str = 'final',
    name: str = 'backbone',
  ):
    """Wraps a built trunk.

    Args:
      trunk: the (loaded) trunk; it stays reachable as `self.trunk`.
      use_lasso: read a lasso mix of the block-3 units instead of `final`.
      lasso_l1_weight: L1 weight on the new alpha row.
      lasso_init: 'last' or 'uniform' (see `lasso.initial_alpha`).
      lasso_mix_norm: 'trunk' (the mix goes through the trunk's closing BN-ReLU, in
        block 3's place, as `LassoConfig.mix_norm` says of §3.2) or 'per_consumer' (a new BN-ReLU).
      freeze_batch_norm: run the trunk's BatchNorm layers in inference mode with
        fixed scale and offset, as ResNet Faster R-CNN implementations do (one or two
        images per step give poor batch statistics). New layers keep training theirs.
      box_input: 'final' (the box head crops the features above) or 'block3' (it crops
        them before their closing BN-ReLU, returned at `BOX_INPUT_KEY`).
      name: model name.

    Raises:
      ValueError: an unknown `box_input`.
    """
    super().__init__(name=name)
    if box_input not in BOX_HEAD_INPUTS:
      raise ValueError(f'box_input must be one of {BOX_HEAD_INPUTS}, got {box_input!r}')
    self.box_input = box_input
    self.trunk = trunk
    self.freeze_batch_norm = freeze_batch_norm
    if freeze_batch_norm:
      freeze_batch_norms(trunk)
    self.lasso = None
    self.lasso_norm = None
    if use_lasso:
      self.lasso = LassoMix(1, trunk.num_units, lasso_l1_weight, lasso_init, consumer_names=['detection'], name='lasso')
      self.lasso_norm = lasso_lib.consumer_norm(lasso_mix_norm, 'lasso_bn')

  @property
  def output_channels(self) -> int:
    """Channels of the level-4 features (the trunk's block-3 width)."""
    return self.trunk.output_channels

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    """Preprocessed images [B, H, W, 3] -> {'4': float32 [B, ceil(H/16), ceil(W/16), C]} (+ BOX_INPUT_KEY)."""
    trunk_training = False if self.freeze_batch_norm else training
    # A 'trunk' lasso mix takes block 3's place before the closing BN-ReLU, which then sees only it.
    final = self.lasso is None or self.lasso_norm is not None
    endpoints = self.trunk(images, training=trunk_training, output_stride=STRIDE, final=final)
    if self.lasso is None:
      raw, features = endpoints['block3'], endpoints['final']
    else:
      raw = self.lasso(self.trunk.block3_units(endpoints), consumer=0)
      if self.lasso_norm is not None:
        features = tf.nn.relu(self.lasso_norm(tf.cast(raw, tf.float32), training=training))
      else:
        features = lasso_lib.final_activation(self.trunk, raw, trunk_training)
    # The heads run in float32 whatever the trunk's precision policy.
    out = {LEVEL: tf.cast(features, tf.float32)}
    if self.box_input == 'block3':
      out[BOX_INPUT_KEY] = tf.cast(raw, tf.float32)
    return out

  def lasso_penalty(self) -> tf.Tensor:
    """The L1 penalty of the detection alpha row (0 without lasso)."""
    return self.lasso.penalty(0) if self.lasso is not None else tf.constant(0.0)


class BoxInputROIAligner(roi_aligner.MultilevelROIAligner):
  """`MultilevelROIAligner` on the backbone's `BOX_INPUT_KEY` features when present, else on level 4.

  `MaskRCNNModel` hands the RPN and the ROI aligner the same feature dict; this lets the
  box head crop the raw block-3 sum a transferred block 4 expects while the RPN keeps
  reading the normalised level-4 features.
  """

  def call(self, features: Mapping[str, tf.Tensor], boxes: tf.Tensor, training: bool = None):
    return super().call({LEVEL: features.get(BOX_INPUT_KEY, features[LEVEL])}, boxes, training=training)


class Block4BoxHead(tf.keras.layers.Layer):
  """Per-ROI head: ResNet block 4 on the ROI crops, global average pool, class + box layers.

  Block 4's first unit strides by 2, so the 14x14 crops become 7x7, as in the ResNet
  Faster R-CNN; the pooled vector feeds `instance_heads.DetectionHead` (no convs, no
  fcs), which holds the (num_classes + 1)-way classifier and the per-class box
  regressor with Fast R-CNN's N(0, 0.01) / N(0, 0.001) initialisers.
  """

  def __init__(
    self, trunk: ResNetV2Trunk, num_classes: int, block4_units: int = 3, freeze_batch_norm: bool = False, **kwargs
  ):
    """Creates the layers.

    Args:
      trunk: the trunk, for block 4's width and BatchNorm settings.
      num_classes: object classes, without background.
      block4_units: residual units of block 4 (3 in ResNet-50/101).
      freeze_batch_norm: run block 4's BatchNorm in inference mode with fixed scale and
        offset, as the trunk's (for a transferred block 4, whose statistics are trained;
        a new block 4 has none and trains them).
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    kwargs.setdefault('name', 'block4_head')
    super().__init__(**kwargs)
    self.block4 = Block4(trunk.config, units=block4_units, stride=2, name='block4')
    self.freeze_batch_norm = freeze_batch_norm
    if freeze_batch_norm:
      freeze_batch_norms(self.block4)
    self.box_head = instance_heads.DetectionHead(num_classes=num_classes + 1, num_convs=0, num_fcs=0, name='box_head')

  def call(self, roi_features, training=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """[B, N, S, S, C] ROI crops -> class logits [B, N, K + 1], box deltas [B, N, 4 (K + 1)]."""
    _, num_rois, height, width, channels = roi_features.shape.as_list()
    x = tf.reshape(roi_features, [-1, height, width, channels])
    x = self.block4(x, training=False if self.freeze_batch_norm else training)
    x = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])
    # DetectionHead flattens [B, N, h, w, C]; a 1x1 "crop" makes that the pooled vector.
    x = tf.reshape(x, [-1, num_rois, 1, 1, x.shape[-1]])
    return self.box_head(x, training=training)

  def variable_groups(self) -> Dict[str, List[tf.Variable]]:
    """Trainable variables: block4, box_head."""
    return {'block4': list(self.block4.trainable_variables), 'box_head': list(self.box_head.trainable_variables)}


class FasterRCNN(maskrcnn_model.MaskRCNNModel):
  """MaskRCNNModel without masks, plus the anchor, target and loss plumbing of a train step.

  Call it as the parent: `model(images, image_shape, anchor_boxes, gt_boxes, gt_classes,
  training)`; `train_losses(batch)` and `detect(images, image_shape)` wrap that.
  """

  def __init__(
    self,
    cfg: DetectionEvalConfig,
    trunk: Optional[ResNetV2Trunk] = None,
    transferred_block4: bool = False,
    backbone: Optional[tf.keras.Model] = None,
    detection_head: Optional[tf.keras.layers.Layer] = None,
    **kwargs,
  ):
    """Builds the components from the config (variables are created on the first call).

    Args:
      cfg: the detection config (RPN, ROI and detection settings are read).
      trunk: the loaded ResNet-v2 trunk, under `DetectionBackbone` and `Block4BoxHead`;
        None when `backbone` and `detection_head` are given.
      transferred_block4: block 4 will be filled from a trained network: its ROI crops
        come from the raw block-3 sum it was trained on, and its BatchNorm is frozen
        as the trunk's is (`cfg.freeze_batch_norm`). Otherwise block 4 is new: it crops
        the RPN's features and trains its BatchNorm.
      backbone: another backbone with `DetectionBackbone`'s interface (`{'4': features}`
        at stride 16, `trunk`, `lasso`, `lasso_norm`, `box_input`, `lasso_penalty()`),
        e.g. `detection_convnet.ConvDetectionBackbone`.
      detection_head: its box head (ROI crops -> class logits, box deltas; `variable_groups()`).
      **kwargs: passed to `MaskRCNNModel`.

    Raises:
      ValueError: neither a trunk nor a backbone and head, or both.
    """
    if (trunk is None) == (backbone is None) or (backbone is None) != (detection_head is None):
      raise ValueError('FasterRCNN: give a ResNet-v2 trunk, or a backbone and a detection head')
    if backbone is None:
      backbone = DetectionBackbone(
        trunk,
        use_lasso=cfg.use_lasso,
        lasso_l1_weight=cfg.lasso_l1_weight,
        lasso_init=cfg.lasso_init,
        lasso_mix_norm=cfg.lasso_mix_norm,
        freeze_batch_norm=cfg.freeze_batch_norm,
        box_input='block3' if transferred_block4 else 'final',
      )
      detection_head = Block4BoxHead(
        trunk, cfg.num_classes, cfg.block4_units, freeze_batch_norm=transferred_block4 and cfg.freeze_batch_norm
      )
    num_anchors = len(cfg.anchor_sizes) * len(cfg.anchor_aspect_ratios)
    super().__init__(
      backbone=backbone,
      decoder=None,
      rpn_head=dense_prediction_heads.RPNHead(
        min_level=int(LEVEL),
        max_level=int(LEVEL),
        num_anchors_per_location=num_anchors,
        num_convs=1,
        num_filters=cfg.rpn_filters,
        name='rpn_head',
      ),
      detection_head=detection_head,
      roi_generator=roi_generator.MultilevelROIGenerator(
        pre_nms_top_k=cfg.rpn_pre_nms_top_k,
        pre_nms_min_size_threshold=cfg.rpn_min_size,
        nms_iou_threshold=cfg.rpn_nms_iou,
        num_proposals=cfg.rpn_post_nms_top_k,
        test_pre_nms_top_k=cfg.rpn_test_pre_nms_top_k,
        test_pre_nms_min_size_threshold=cfg.rpn_min_size,
        test_nms_iou_threshold=cfg.rpn_nms_iou,
        test_num_proposals=cfg.rpn_test_post_nms_top_k,
      ),
      roi_sampler=roi_training.make_roi_sampler(cfg),
      roi_aligner=BoxInputROIAligner(crop_size=cfg.roi_crop_size, sample_offset=0.5),
      detection_generator=detection_generator.DetectionGenerator(
        apply_nms=True,
        pre_nms_score_threshold=cfg.detection_score_threshold,
        nms_iou_threshold=cfg.detection_nms_iou,
        max_num_detections=cfg.max_detections,
        # Per-class NMS as Fast/Faster R-CNN test, in one op (combined_non_max_suppression):
        # 'v1' unrolls a graph per class and image, slow to trace.
        nms_version='batched',
      ),
      min_level=int(LEVEL),
      max_level=int(LEVEL),
      **kwargs,
    )
    self.num_classes = cfg.num_classes
    self.rpn_batch_size = cfg.rpn_batch_size
    self.anchor_generator = _AnchorGenerator(
      anchor_sizes={LEVEL: float(cfg.anchor_sizes[0])},
      scales=[float(s) / cfg.anchor_sizes[0] for s in cfg.anchor_sizes],
      aspect_ratios=[float(r) for r in cfg.anchor_aspect_ratios],
      strides={LEVEL: STRIDE},
    )
    self.rpn_labeler = anchor.RpnAnchorLabeler(
      match_threshold=cfg.rpn_positive_iou,
      unmatched_threshold=cfg.rpn_negative_iou,
      rpn_batch_size_per_im=cfg.rpn_batch_size,
      rpn_fg_fraction=cfg.rpn_fg_fraction,
    )
    self.rpn_score_loss = maskrcnn_losses.RpnScoreLoss(cfg.rpn_batch_size)
    self.rpn_box_loss = maskrcnn_losses.RpnBoxLoss(cfg.rpn_huber_delta)
    self.frcnn_box_loss = maskrcnn_losses.FastrcnnBoxLoss(cfg.frcnn_huber_delta)
    self.weight_decay = cfg.weight_decay

  def call(self, images, image_shape, anchor_boxes=None, gt_boxes=None, gt_classes=None, training=None):
    """`MaskRCNNModel.call` (no masks), whose training outputs also hold the sampled ROIs at 'sampled_rois'.

    The class loss needs them to leave the sampler's fillers out (`roi_training.sampled_for_real`). Running the
    parent's box pass here, inside Keras' `__call__`, keeps the training flag reaching every layer.
    """
    outputs, intermediate = self._call_box_outputs(
      images=images,
      image_shape=image_shape,
      anchor_boxes=anchor_boxes,
      gt_boxes=gt_boxes,
      gt_classes=gt_classes,
      training=training,
    )
    if training and gt_boxes is not None:
      outputs['sampled_rois'] = intermediate['current_rois']
    return outputs

  def anchors(self, height: int, width: int) -> Dict[str, tf.Tensor]:
    """Anchors of a [height, width] canvas: {'4': [ceil(h/16), ceil(w/16), A * 4]} pixel boxes."""
    return self.anchor_generator([height, width])

  def rpn_targets(self, anchors: Mapping[str, tf.Tensor], gt_boxes: tf.Tensor, gt_classes: tf.Tensor):
    """RPN score and box targets per image, by `RpnAnchorLabeler` (IoU 0.7 / 0.3, 256 sampled).

    Args:
      anchors: `anchors()` of the batch's canvas.
      gt_boxes: [B, M, 4] pixel boxes, padded with -1.
      gt_classes: [B, M] classes, padded with -1 (entries <= 0 are ignored).

    Returns:
      ({'4': int [B, h, w, A]} scores: 1 positive, 0 negative, -1 ignored;
       {'4': float [B, h, w, 4 A]} box targets).
    """
    scores, boxes = [], []
    # The batch is static (1-2 images); the labeler works on one image's boxes.
    for i in range(gt_boxes.shape[0]):
      valid = gt_classes[i] > 0
      score, box = self.rpn_labeler.label_anchors(
        anchors,
        tf.boolean_mask(gt_boxes[i], valid),
        tf.cast(tf.boolean_mask(gt_classes[i], valid)[:, None], tf.float32),
      )
      scores.append(score[LEVEL])
      boxes.append(box[LEVEL])
    return {LEVEL: tf.stack(scores)}, {LEVEL: tf.stack(boxes)}

  def _batch_anchors(self, images: tf.Tensor) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
    _, height, width, _ = images.shape.as_list()
    anchors = self.anchors(height, width)
    batch = tf.shape(images)[0]
    return anchors, {k: tf.tile(v[None], [batch, 1, 1, 1]) for k, v in anchors.items()}

  def train_losses(self, batch: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """One training forward pass: the four Faster R-CNN losses, regularisers and the total.

    Args:
      batch: {'image': [B, H, W, 3] preprocessed (H, W static), 'image_shape': [B, 2]
        resized (unpadded) sizes, 'gt_boxes': [B, M, 4] pixel, 'gt_classes': [B, M]
        1-based, both padded with -1}.

    Returns:
      Scalars: the `LOSS_NAMES`, 'weight_decay', 'lasso_penalty' and 'total_loss'.
    """
    anchors, batch_anchors = self._batch_anchors(batch['image'])
    score_targets, box_targets = self.rpn_targets(anchors, batch['gt_boxes'], batch['gt_classes'])
    outputs = self(
      batch['image'],
      image_shape=batch['image_shape'],
      anchor_boxes=batch_anchors,
      gt_boxes=batch['gt_boxes'],
      gt_classes=batch['gt_classes'],
      training=True,
    )
    losses = {
      'rpn_score_loss': self.rpn_score_loss(outputs['rpn_scores'], score_targets),
      'rpn_box_loss': self.rpn_box_loss(outputs['rpn_boxes'], box_targets),
      'frcnn_class_loss': roi_training.masked_class_loss(
        outputs['class_outputs'],
        outputs['class_targets'],
        roi_training.sampled_for_real(self.roi_sampler[0], outputs['sampled_rois'], batch['gt_boxes']),
      ),
      'frcnn_box_loss': self.frcnn_box_loss(outputs['box_outputs'], outputs['class_targets'], outputs['box_targets']),
    }
    return roi_training.with_regularisers(self, losses)

  def detect(self, images: tf.Tensor, image_shape: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Inference: images [B, H, W, 3] (H, W static), image_shape [B, 2] -> detections.

    Returns:
      {'detection_boxes': [B, D, 4] pixel boxes of the resized image,
       'detection_scores': [B, D], 'detection_classes': int [B, D] 1-based,
       'num_detections': int [B]}, D = max_detections.
    """
    _, batch_anchors = self._batch_anchors(images)
    outputs = self(images, image_shape=image_shape, anchor_boxes=batch_anchors, training=False)
    keys = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')
    return {k: outputs[k] for k in keys}

  def variable_groups(self) -> Dict[str, List[tf.Variable]]:
    """Trainable variables by part: trunk, lasso, rpn, then the box head's (block4 / fc, box_head)."""
    lasso = [part for part in (self.backbone.lasso, self.backbone.lasso_norm) if part is not None]
    return {
      'trunk': list(self.backbone.trunk.trainable_variables),
      'lasso': [v for part in lasso for v in part.trainable_variables],
      'rpn': list(self.rpn_head.trainable_variables),
      **self.detection_head[0].variable_groups(),
    }


def build_detector(cfg: DetectionEvalConfig, trunk: ResNetV2Trunk, block4_checkpoint: str = '') -> FasterRCNN:
  """The Faster R-CNN with all variables created (one small inference pass).

  Variables exist before any step is traced, so optimizer slots can be built and a
  checkpoint restored eagerly.

  Args:
    cfg: the detection config.
    trunk: the loaded trunk.
    block4_checkpoint: a checkpoint prefix holding a trained block 4 at
      `block4.CHECKPOINT_PATH` (the supervised baseline's) to transfer into the box head;
      '' keeps block 4 randomly initialised.

  Raises:
    ValueError: `block4_checkpoint` holds no block 4, or one that does not fit (named).
  """
  model = FasterRCNN(cfg, trunk, transferred_block4=bool(block4_checkpoint))
  create_variables(model)
  if block4_checkpoint:
    load_block4(model.detection_head[0].block4, block4_checkpoint)
  return model


def create_variables(model: FasterRCNN, size: int = 2 * STRIDE) -> None:
  """Creates every variable of `model` by one inference pass on a blank `size` x `size` canvas."""
  model.detect(tf.zeros([1, size, size, 3]), tf.constant([[size, size]], tf.float32))


def freeze_batch_norms(module: tf.Module) -> None:
  """BatchNorm layers under `module` stop training their scale and offset (and run in inference mode where asked)."""
  for layer in module.submodules:
    if isinstance(layer, tf.keras.layers.BatchNormalization):
      layer.trainable = False
