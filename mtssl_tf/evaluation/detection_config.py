"""The `detection` protocol's config: Faster R-CNN on VOC07, on a ResNet-v2 trunk or an AlexNet / VGG16 network.

One section serves both papers. Its defaults are Doersch & Zisserman's (§5: a ResNet-v2
trunk, block 4 as box head; py-faster-rcnn / Detectron where the paper is silent);
configs/eval/detection_alexnet.yaml sets Noroozi et al. 2018's Table 3 settings for an
AlexNet (Fast R-CNN's: multi-scale training, conv1 frozen, lr 0.001 / 10 every third of
training, biases at twice the rate, single- and multi-scale test), which the fields
`freeze_conv1`, `lr_decay_fractions`, `bias_lr_multiplier`, `test_scales` and
`test_scales_max_side` exist for. Which network runs is decided by the evaluated source
(`detection.DetectionProtocol`), not here.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.evaluation import backbone, voc_metrics
from mtssl_tf.evaluation.detection_model import STRIDE

NAME = 'detection'
BOX_HEAD_INITS = ('auto', 'random', 'checkpoint')
# Where the ROIs come from: Faster R-CNN's RPN (Doersch §5), or Fast R-CNN's selective search (Noroozi Table 3).
PROPOSALS = ('rpn', 'selective_search')
PROPOSAL_MODES = ('fast', 'quality')


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
    roi_crop_size: ROI-align output side; the box head halves it: ResNet block 4 strides it
      by 2 (14 -> 7x7, as the ResNet Faster R-CNN pools 14x14 before conv5), the AlexNet /
      VGG16 head max-pools it 2x2 (12 -> 6x6, Fast R-CNN's CaffeNet roi_pool5; 14 -> 7x7 its VGG16's).
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
    freeze_conv1: keep the first convolution (and its BatchNorm) fixed. Fast R-CNN's default
      (models/CaffeNet/train.prototxt: conv1 lr_mult 0), which Noroozi §5 keeps for every row
      of Table 3 ("We have locked the first layer in all cases"); off for Doersch's ResNet.
    bias_lr_multiplier: learning-rate multiplier of every bias (Fast R-CNN's prototxts:
      lr_mult 2 on biases; 1 = Detectron-style ResNet practice, the default).
    lr_decay_fractions: where the rate drops, as fractions of `train_steps`; when given they
      replace `lr_decay_steps` (Noroozi §5: 150K iterations, / 10 every 50K: (1/3, 2/3)).
    test_scales: a second, multi-scale test at these shorter sides (Fast R-CNN's
      experiments/cfgs/multiscale.yml: 480, 576, 688, 864, 1200), reported beside the
      single-scale one at `test_scale` under `multiscale_` keys; () = single-scale only.
      How the scales' detections are merged: `detection_scales`.
    test_scales_max_side: longer-side cap of the multi-scale test (multiscale.yml: 2000).
    fc_units: fc6 / fc7 units of an AlexNet / VGG16 box head, before the network's width
      multiplier (Fast R-CNN's CaffeNet and VGG16: 4096).
    fc_dropout: dropout after fc6 and fc7 of that head (Fast R-CNN's prototxts: 0.5).
    proposals: 'rpn' (default: Faster R-CNN, the RPN trained with the rest; Doersch §5) or
      'selective_search' (Fast R-CNN on precomputed selective-search boxes, as Noroozi et
      al.'s Table 3 ran it; AlexNet / VGG16 networks; `fast_rcnn`, `proposals`). The rpn_*
      and anchor fields apply to 'rpn' only, the proposal_* fields to 'selective_search'.
    max_proposals: proposals kept per image, best-ranked first (R-CNN's fast mode gives about
      2000 on VOC; Fast R-CNN's `top_k` 2000).
    proposal_mode: selective search 'fast' (R-CNN's VOC boxes: HSV and Lab, k 50 and 100,
      two strategies) or 'quality'.
    proposal_min_box_side: boxes narrower or shorter than this many pixels of the original
      image are dropped (R-CNN's minBoxWidth 20).
    proposal_max_image_side: images are searched with their longer side at most this (0: full
      size, as R-CNN on VOC); boxes are returned in the original frame.
    proposal_seed: seed of selective search's pseudo-random ranking.
    proposal_cache_dir: where the proposal caches live ('' = `<model_dir>/eval/detection/proposals`);
      point several evaluations of one source at one directory to compute the boxes once.
    proposal_workers: processes computing proposals (0: one per CPU).
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
  freeze_conv1: bool = False
  bias_lr_multiplier: float = 1.0
  lr_decay_fractions: Tuple[float, ...] = ()
  test_scales: Tuple[int, ...] = ()
  test_scales_max_side: int = 2000
  fc_units: int = 4096
  fc_dropout: float = 0.5
  proposals: str = 'rpn'
  max_proposals: int = 2000
  proposal_mode: str = 'fast'
  proposal_min_box_side: int = 20
  proposal_max_image_side: int = 0
  proposal_seed: int = 0
  proposal_cache_dir: str = ''
  proposal_workers: int = 0

  def decay_steps(self) -> List[int]:
    """The steps where the rate drops: `lr_decay_fractions` of `train_steps` when given, else `lr_decay_steps`."""
    if self.lr_decay_fractions:
      return [int(round(f * self.train_steps)) for f in self.lr_decay_fractions]
    return list(self.lr_decay_steps)

  def validate(self) -> None:
    def fail(key: str, msg: str) -> None:
      raise ConfigError(f'{NAME}.{key}: {msg}')

    positive_ints = (
      'num_classes', 'max_side', 'test_scale', 'test_max_side', 'max_instances', 'batch_size', 'train_steps',
      'rpn_filters', 'rpn_batch_size', 'rpn_pre_nms_top_k', 'rpn_post_nms_top_k', 'rpn_test_pre_nms_top_k',
      'rpn_test_post_nms_top_k', 'roi_batch_size', 'block4_units', 'max_detections', 'log_every_steps',
      'checkpoint_every_steps', 'test_scales_max_side', 'fc_units', 'max_proposals', 'proposal_min_box_side',
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
    fractions = list(self.lr_decay_fractions)
    if fractions and (fractions != sorted(set(fractions)) or not 0 < fractions[0] or fractions[-1] >= 1):
      fail('lr_decay_fractions', f'must be increasing fractions in (0, 1), got {fractions}')
    decay = self.decay_steps()
    if fractions and (len(set(decay)) != len(decay) or decay[0] < 1):
      fail('lr_decay_fractions', f'{fractions} of train_steps {self.train_steps} give steps {decay}: not distinct')
    if self.test_scales and any(s < STRIDE for s in self.test_scales):
      fail('test_scales', f'need shorter sides of {STRIDE} pixels or more, got {list(self.test_scales)}')
    if self.test_scales and self.test_scales_max_side < max(self.test_scales):
      fail('test_scales_max_side', f'must be at least the largest test scale {max(self.test_scales)}, '
           f'got {self.test_scales_max_side}')  # fmt: skip
    if self.bias_lr_multiplier <= 0:
      fail('bias_lr_multiplier', f'must be positive, got {self.bias_lr_multiplier}')
    if not 0 <= self.fc_dropout < 1:
      fail('fc_dropout', f'must be in [0, 1), got {self.fc_dropout}')
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
      fail('roi_crop_size', f'must be even (the box head halves it), got {self.roi_crop_size}')
    backbone.check_lasso_fields(self, NAME)
    if self.box_head_init not in BOX_HEAD_INITS:
      fail('box_head_init', f'must be one of {BOX_HEAD_INITS}, got {self.box_head_init!r}')
    conventions = list(self.map_conventions)
    if not conventions or len(set(conventions)) != len(conventions):
      fail('map_conventions', f'need distinct conventions, the headline first, got {conventions}')
    for convention in conventions:
      if convention not in voc_metrics.CONVENTIONS:
        fail('map_conventions', f'each must be one of {voc_metrics.CONVENTIONS}, got {convention!r}')
    if self.proposals not in PROPOSALS:
      fail('proposals', f'must be one of {PROPOSALS}, got {self.proposals!r}')
    if self.proposal_mode not in PROPOSAL_MODES:
      fail('proposal_mode', f'must be one of {PROPOSAL_MODES}, got {self.proposal_mode!r}')
    for key in ('proposal_max_image_side', 'proposal_workers'):
      if getattr(self, key) < 0:
        fail(key, f'must be >= 0, got {getattr(self, key)}')
    if self.proposals == 'selective_search' and self.max_proposals < self.roi_batch_size:
      fail('max_proposals', f'must be at least roi_batch_size {self.roi_batch_size} (the sampler draws that many '
           f'ROIs from the proposals), got {self.max_proposals}')  # fmt: skip
    if self.proposals == 'selective_search' and self.use_lasso:
      fail('use_lasso', 'the lasso mix is for the ResNet trunk, which runs with proposals: rpn')
