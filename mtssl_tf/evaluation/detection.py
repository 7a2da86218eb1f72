"""PASCAL VOC 2007 detection transfer: Faster R-CNN on the evaluated network, fine-tuned, mAP on VOC07 test.

Two papers' protocol in one (`detection_config` holds the section, its defaults Doersch's):

* Doersch & Zisserman 2017, §5: the ResNet-v2 trunk (blocks 1-3, stride 16) is the Faster
  R-CNN backbone, ResNet block 4 the per-proposal head on ROI crops, all weights fine-tuned
  on VOC07 trainval with multi-scale training (random shorter side from `scales`) and
  horizontal flips; test mAP at IoU 0.5 and 0.75, both with the VOC2007 11-point AP by
  default (`map_conventions`). Block 4 is randomly initialised for self-supervised trunks
  and transferred from the ImageNet-labels network (the supervised baseline's checkpoint),
  as §5 says (`box_head_init`). With `use_lasso` a new lasso row mixes the block-3 units for
  both the RPN and the ROI features. The model: `detection_model`.
* Noroozi et al. 2018, Table 3 "Det." (configs/eval/detection_alexnet.yaml): an AlexNet
  student (`mtssl-transfer`'s folder) or a run's AlexNet / VGG16 trunk under Fast R-CNN's
  head and settings: `detection_convnet`; with `proposals: selective_search` Fast R-CNN on
  precomputed selective-search boxes as the paper (`fast_rcnn`, `proposals`), with 'rpn' an
  RPN in their place (a documented choice noted in every result and table); conv1 frozen
  (`freeze_conv1`), lr / 10 every third (`lr_decay_fractions`), single- and multi-scale test
  (`test_scales`, `detection_scales`).

This module holds the training step and `DetectionProtocol` (trained through the shared
fine-tuning engine); the input pipeline is `detection_data`. It writes under
`<model_dir>/eval/detection/`: TensorBoard scalars (`detection/<name>`), `checkpoints/`
(resumable) and `results.json`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple

import tensorflow as tf
from absl import logging
from official.modeling.optimization import lr_schedule

from mtssl_tf.configs.base import ConfigError, validate_all
from mtssl_tf.data.detection import detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import backbone, detection_convnet, proposals, random_init, voc_metrics
from mtssl_tf.evaluation.detection_config import NAME, DetectionEvalConfig
from mtssl_tf.evaluation.detection_data import eval_dataset, multiscale_eval_dataset, train_dataset
from mtssl_tf.evaluation.detection_model import FasterRCNN, build_detector
from mtssl_tf.evaluation.detection_scales import (
  MULTISCALE_PREFIX,
  detector,
  evaluate,
  multiscale_results,
  proposal_detector,
  proposal_scorer,
)
from mtssl_tf.evaluation.protocol import Column, Context, FineTuneProtocol, Trainee
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk import block4

__all__ = ['DetectionEvalConfig', 'DetectionProtocol', 'run_detection', 'learning_rate_schedule']

# --- Training -------------------------------------------------------------------------------------


def learning_rate_schedule(cfg: DetectionEvalConfig) -> tf.keras.optimizers.schedules.LearningRateSchedule:
  """Step decay (x `lr_decay` at each of `cfg.decay_steps()`) after a linear warm-up.

  Caffe's "step" policy (Fast / Faster R-CNN's solvers): update k (0-based) uses
  learning_rate * lr_decay^(number of decay steps <= k), so the rate drops at the decay
  step itself. Keras's PiecewiseConstantDecay keeps a value while k <= its boundary, hence
  the boundaries one step earlier.
  """
  steps = cfg.decay_steps()
  rates = [cfg.learning_rate * cfg.lr_decay**i for i in range(len(steps) + 1)]
  schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([s - 1 for s in steps], rates)
  if not cfg.warmup_steps:
    return schedule
  return lr_schedule.LinearWarmup(schedule, cfg.warmup_steps, cfg.learning_rate * cfg.warmup_factor)


def make_optimizer(cfg: DetectionEvalConfig) -> tf.keras.optimizers.Optimizer:
  """Momentum SGD on the schedule (weight decay is in the loss, Caffe style)."""
  return tf.keras.optimizers.SGD(learning_rate_schedule(cfg), momentum=cfg.momentum)


def make_train_step(model: FasterRCNN, optimizer: tf.keras.optimizers.Optimizer, bias_lr_multiplier: float = 1.0):
  """A tf.function: batch -> losses dict, applying one SGD update (traced once per canvas).

  Biases learn at `bias_lr_multiplier` times the rate (Caffe's lr_mult: scaling a momentum-SGD
  gradient scales its step alike). Frozen layers (`freeze_conv1`) are not trainable variables.
  """
  variables = model.trainable_variables
  multipliers = [bias_lr_multiplier if 'bias' in v.name else 1.0 for v in variables]

  # No autograph: the step has no data-dependent Python control flow, and converting
  # the Model Garden layers' code dominated the tracing time.
  @tf.function(autograph=False)
  def step(batch):
    with tf.GradientTape() as tape:
      losses = model.train_losses(batch)
    grads = tape.gradient(losses['total_loss'], variables)
    optimizer.apply_gradients([(g * m if m != 1.0 else g, v) for g, m, v in zip(grads, multipliers, variables)])
    return losses

  return step


_STEP_KEYS = ('image', 'image_shape', 'gt_boxes', 'gt_classes')
_LOSSES = ('total_loss', 'rpn_score_loss', 'rpn_box_loss', 'frcnn_class_loss', 'frcnn_box_loss')
# Fast R-CNN on precomputed proposals: no RPN, the proposals in the batch.
_PROPOSAL_STEP_KEYS = ('image', 'proposals', 'gt_boxes', 'gt_classes')
_TIMING = ('train_seconds', 'seconds_per_step', 'num_skipped_train')


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


# --- Running the protocol -------------------------------------------------------------------------


def check_proposals(cfg: DetectionEvalConfig, kind: str) -> None:
  """Refuses precomputed proposals for a ResNet trunk, which Doersch & Zisserman §5 evaluate with Faster R-CNN."""
  if cfg.proposals != 'rpn' and kind not in detection_convnet.KINDS:
    raise ConfigError(f'{NAME}.proposals: {cfg.proposals!r} runs Fast R-CNN on AlexNet / VGG16 networks; a {kind} '
                      "trunk is evaluated with Faster R-CNN (proposals: rpn, Doersch & Zisserman's §5)")  # fmt: skip


def _build(cfg: DetectionEvalConfig, network: Any, init_source: str) -> Tuple[FasterRCNN, Dict[str, Any]]:
  """The detector for `network` (variables created, conv1 frozen if asked) and what the results record of it."""
  kind = detection_convnet.network_kind(network)
  if kind == 'resnet_v2':
    box_head_init, box_head_source = resolve_box_head_init(cfg, init_source)
    # A resumed run restores its own block 4 later, over the transferred one.
    model = build_detector(cfg, network, block4_checkpoint=box_head_source)
    described = {'network': 'ResNet-v2 trunk blocks 1-3, block 4 as box head', 'proposals': 'rpn'}
  else:
    model, description = detection_convnet.build_conv_detector(cfg, network)
    box_head_init, box_head_source = 'random', ''
    described = {'network': description, 'proposals': cfg.proposals}
    if cfg.proposals == 'rpn':
      described['table_note'] = detection_convnet.TABLE_NOTE
  if cfg.freeze_conv1:
    for layer in detection_convnet.first_conv_layers(model.backbone.trunk):
      layer.trainable = False
  described.update(network_kind=kind, box_head_init=box_head_init, box_head_source=box_head_source)
  return model, described


class DetectionProtocol(FineTuneProtocol):
  """Faster R-CNN on PASCAL VOC07, the network fine-tuned: Doersch & Zisserman §5, Noroozi et al. Table 3.

  Everything goes to `<model_dir>/eval/detection`: TensorBoard scalars (`detection/<loss>`,
  `detection/learning_rate`, `detection/steps_per_second`, and the final mAPs named as
  their result keys, e.g. `detection/mAP@0.5IOU_VOC07_11point`, without suffix for
  'od_api', the multi-scale test's with a `multiscale_` prefix), `checkpoints/` (resumed
  from when present) and `results.json`: the `voc_metrics.VOCEvaluation` metrics of the
  single-scale test (keys 'PascalBoxes_Precision/mAP@<t>IOU_VOC07_11point' and
  'PascalBoxes_Precision/mAP@<t>IOU' for t = 0.5, 0.75 and the chosen conventions, and
  per class), the same under `multiscale_` keys when `test_scales` are set, 'conventions',
  'map_convention' (the headline), 'network', 'network_kind', 'proposals' ('rpn') and for
  AlexNet / VGG16 'table_note' (the documented choice), 'box_head_init' with
  'box_head_source' and 'box_head_input', the schedule, counts, timing and the protocol.

  The network is a ResNet-v2, AlexNet or VGG16 trunk (`backbone.load_trunk`) or an
  AlexNet student (`transfer.student.load_student`): fine-tuned in place, or (AlexNet
  students, Jigsaw-variant trunks) copied first. The init source also decides the ResNet
  box head's start under `box_head_init: auto` (`resolve_box_head_init`).
  """

  name = NAME
  summary = ('Faster R-CNN on PASCAL VOC07 trainval -> test, network fine-tuned (mAP, 11-point and all-point; '
             'single- and multi-scale test)')  # fmt: skip
  config_class = DetectionEvalConfig
  world_sources = ('detection_trainval', 'detection_test')
  headline = (
    'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.5IOU',
    'PascalBoxes_Precision/mAP@0.75IOU',
    MULTISCALE_PREFIX + 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point',
  )
  # In pairs sharing one AP rule: the paper's 11-point (VOC2007 devkit) at IoU 0.5 and
  # 0.75, then the OD API's all-point AP at both (see voc_metrics.py); then Noroozi's
  # multi-scale test (Table 3 "MS"), empty for runs without `test_scales`.
  columns = (
    Column('VOC07 mAP@0.5 11-pt (%)', 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point', 100.0, 1),
    Column('VOC07 mAP@0.75 11-pt (%)', 'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point', 100.0),
    Column('VOC07 mAP@0.5 all-pt (%)', 'PascalBoxes_Precision/mAP@0.5IOU', 100.0),
    Column('VOC07 mAP@0.75 all-pt (%)', 'PascalBoxes_Precision/mAP@0.75IOU', 100.0),
    Column('VOC07 mAP@0.5 11-pt, MS test (%)', MULTISCALE_PREFIX + 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'),
  )
  log_keys = _LOSSES  # A Fast R-CNN run has no rpn_* losses: the progress line skips them.
  empty_message = 'the training source yields no batch (no image with a box?)'

  def prepare(self, ctx: Context) -> Context:
    validate_all(ctx.section, NAME)
    self.student = ''
    if not ctx.given:  # mtssl-eval: `init` names the network; check it before loading anything.
      from mtssl_tf.evaluation.voc_classification import student_meta

      meta = student_meta(ctx.init)
      if meta and meta.get('architecture') not in ('alexnet', 'resnet_v2_trunk'):
        raise ConfigError(f'init: student {ctx.init} is a {meta.get("architecture")!r}; {NAME} runs on AlexNet '
                          'students and ResNet-v2 / AlexNet / VGG16 trunks')  # fmt: skip
      if meta.get('architecture') == 'alexnet':
        self.student = ctx.init
      elif ctx.trunk_config.kind in detection_convnet.KINDS:
        detection_convnet.check_config(ctx.section, ctx.trunk_config.kind)
      else:
        check_proposals(ctx.section, ctx.trunk_config.kind)
    self.stores = {}
    return ctx

  def proposal_store(self, ctx: Context, split: str) -> proposals.ProposalStore:
    """The selective-search proposals of the 'train' or 'test' source, computed the first time they are needed."""
    if split not in self.stores:
      cfg: DetectionEvalConfig = ctx.section
      spec = ctx.train_spec if split == 'train' else ctx.test_spec

      def images():
        for example in detection_dataset(spec, ReadOptions(shuffle_files=False)):
          yield example['image_id'].numpy().decode(), example['image'].numpy()

      cache_dir = cfg.proposal_cache_dir or os.path.join(ctx.out_dir, 'proposals')
      self.stores[split] = proposals.build(images, spec, cache_dir, proposals.settings_from(cfg),
                                           cfg.proposal_workers, ctx.progress)  # fmt: skip
    return self.stores[split]

  def build(self, ctx: Context) -> Trainee:
    cfg: DetectionEvalConfig = ctx.section
    if self.student:
      from mtssl_tf.transfer.student import load_student

      network = load_student(self.student)
    else:
      network = ctx.trunk()
    check_proposals(cfg, detection_convnet.network_kind(network))  # A direct run's network, not checked yet.
    note = ''
    if getattr(network, 'kind', None) == 'alexnet':  # A random one: conv1..conv5 on the training canvases.
      note = random_init.initialise(ctx, network.net, lambda: self.train_data(ctx, 0), None)
    tf.random.set_seed(cfg.seed)
    self.model, self.described = _build(cfg, network, ctx.init)
    if note:
      self.described['network'] += f'; {note} (before the copy; the box head fc6/fc7 are new, as for every network)'
    if cfg.proposals != 'rpn':
      self.described.update(proposals.describe(self.proposal_store(ctx, 'train')))
    if ctx.progress:
      logging.info('%s: %s; box head %s', NAME, self.described['network'], self.described['box_head_source'] or 'new')
    return Trainee({'model': self.model}, self.model.trainable_variables)

  def loop(self, cfg: DetectionEvalConfig) -> Dict[str, int]:
    return {'steps': cfg.train_steps, 'log_every_steps': cfg.log_every_steps,
            'checkpoint_every_steps': cfg.checkpoint_every_steps}  # fmt: skip

  def schedule(self, ctx: Context) -> None:
    return None  # The logged rate is Keras's `learning_rate`: the schedule at the optimizer's iterations.

  def optimizer(self, ctx: Context, schedule) -> tf.keras.optimizers.Optimizer:
    return make_optimizer(ctx.section)

  def train_step(self, ctx: Context, trainee: Trainee, optimizer: tf.keras.optimizers.Optimizer):
    step_fn = make_train_step(self.model, optimizer, ctx.section.bias_lr_multiplier)
    keys = _STEP_KEYS if ctx.section.proposals == 'rpn' else _PROPOSAL_STEP_KEYS
    return lambda batch: step_fn({k: batch[k] for k in keys})

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    store = self.proposal_store(ctx, 'train') if ctx.section.proposals != 'rpn' else None
    return train_dataset(ctx.section, ctx.train_spec, ctx.preprocessing, start_step=start, proposals=store)

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: DetectionEvalConfig = ctx.section
    model, preprocessing = self.model, ctx.preprocessing
    store = self.proposal_store(ctx, 'test') if cfg.proposals != 'rpn' else None
    # One traced function for both tests, so a canvas shape they share is traced once.
    detect = detector(model) if store is None else None
    scorer = proposal_scorer(model) if store is not None else None

    def by_batch(num_levels):  # Fast R-CNN's test on the proposals, or None for the RPN detector.
      if store is None:
        return None
      return proposal_detector(model, cfg.detection_nms_iou, cfg.detection_score_threshold, cfg.max_detections,
                               num_levels, scorer)  # fmt: skip

    results = evaluate(model, eval_dataset(cfg, ctx.test_spec, preprocessing, store), ctx.progress,
                       cfg.map_conventions, name=NAME, detect=detect, detect_batch=by_batch(0))  # fmt: skip
    tags = {key.split('/', 1)[1]: key for key in self.map_keys(cfg).values()}
    if cfg.test_scales:
      pyramid = multiscale_eval_dataset(cfg.test_scales, cfg.test_scales_max_side, ctx.test_spec, preprocessing,
                                        store, cfg.max_proposals)  # fmt: skip
      results.update(multiscale_results(evaluate(
        model, pyramid, ctx.progress, cfg.map_conventions, num_levels=len(cfg.test_scales),
        nms_iou=cfg.detection_nms_iou, max_detections=cfg.max_detections, name=NAME, detect=detect,
        detect_batch=by_batch(len(cfg.test_scales)),
      )))  # fmt: skip
    if store is not None:
      results['test_proposals_per_image'] = round(store.mean_count(), 1)
      tags.update({MULTISCALE_PREFIX + tag: MULTISCALE_PREFIX + key for tag, key in tags.items()})
    tune.scalars({tag: results[key] for tag, key in tags.items() if results.get(key) is not None})
    results.update({k: stats[k] for k in _TIMING if k in stats})
    results.update(self.described)
    results.update(
      steps=tune.step,
      scales=list(cfg.scales),
      max_side=cfg.max_side,
      test_scale=cfg.test_scale,
      test_max_side=cfg.test_max_side,
      test_scales=list(cfg.test_scales),
      test_scales_max_side=cfg.test_scales_max_side,
      flip=cfg.flip,
      batch_size=cfg.batch_size,
      learning_rate=cfg.learning_rate,
      lr_decay_steps=cfg.decay_steps(),
      lr_decay=cfg.lr_decay,
      bias_lr_multiplier=cfg.bias_lr_multiplier,
      freeze_conv1=cfg.freeze_conv1,
      use_lasso=cfg.use_lasso,
      lasso_mix_norm=cfg.lasso_mix_norm,
      freeze_batch_norm=cfg.freeze_batch_norm,
      train_difficult=cfg.train_difficult,
      map_convention=cfg.map_conventions[0],
      box_head_input=model.backbone.box_input,
      **ctx.inputs(),
    )
    if model.backbone.lasso is not None:
      results['lasso_alpha'] = backbone.lasso_alpha(model.backbone.lasso)
    return results

  @staticmethod
  def map_keys(cfg: DetectionEvalConfig) -> Dict[Tuple[str, float], str]:
    """(convention, IoU threshold) -> the result key of that mAP."""
    thresholds = voc_metrics.VOCEvaluation.IOU_THRESHOLDS
    return {(c, t): voc_metrics.mean_ap_key(c, t) for c in cfg.map_conventions for t in thresholds}

  def report(self, ctx: Context, results: Dict[str, Any], path: str) -> None:
    if ctx.progress:
      first, keys = ctx.section.map_conventions[0], self.map_keys(ctx.section)
      logging.info('%s: mAP (%s) @0.5 %s, @0.75 %s on %d images -> %s', NAME, first, results.get(keys[first, 0.5]),
                   results.get(keys[first, 0.75]), results['num_test_images'], path)  # fmt: skip


def run_detection(
  cfg: DetectionEvalConfig,
  trunk: Any,
  model_dir: str,
  train_spec: str = '',
  test_spec: str = '',
  preprocessing: str = 'rgb',
  init_source: str = '',
  progress: bool = True,
) -> Dict[str, Any]:
  """`DetectionProtocol` on a built network (a trunk or an AlexNet student), outside `mtssl-eval`.

  Sources default to the section's; `init_source` is recorded, and decides the ResNet box
  head's start under `box_head_init: auto`.

  Raises:
    ConfigError: invalid config, no source, a box head init the source cannot give, a
      setting the network cannot run, or an unsupported network.
    FloatingPointError: a non-finite loss (the step is named).
    ValueError: a checkpoint that does not fit the config, or an empty source.
  """
  ctx = DetectionProtocol.direct_context(cfg, model_dir, train_spec, test_spec, network=trunk,
                                         preprocessing=preprocessing, init=init_source, progress=progress)  # fmt: skip
  return DetectionProtocol().run(ctx)
