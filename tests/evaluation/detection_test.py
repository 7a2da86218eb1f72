"""Faster R-CNN VOC07 evaluation: config, anchors, augmentation, model, train step, end to end."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override
from mtssl_tf.evaluation import backbone, detection, detection_data, detection_model, roi_training
from mtssl_tf.evaluation.supervised import SupervisedModel

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def tiny_cfg(**values) -> detection.DetectionEvalConfig:
  """A protocol small enough for CPU tests: 64-pixel canvases, one block-4 unit, few ROIs."""
  cfg = detection.DetectionEvalConfig()
  override(
    cfg,
    dict(
      scales=[64], max_side=64, test_scale=64, test_max_side=64, anchor_sizes=[16.0, 32.0, 64.0], block4_units=1,
      rpn_filters=16, roi_batch_size=16, rpn_pre_nms_top_k=100, rpn_post_nms_top_k=40, rpn_test_pre_nms_top_k=100,
      rpn_test_post_nms_top_k=20, max_detections=20, train_steps=3, warmup_steps=1, lr_decay_steps=[2],
      log_every_steps=1, checkpoint_every_steps=2, learning_rate=0.01,
    ),
  )  # fmt: skip
  return override(cfg, values)


@pytest.fixture(scope='module')
def trunk_config(pretrained):
  return pretrained['trunk_config']


def test_config_errors_name_the_key():
  for values, key in [
    ({'scales': []}, 'detection.scales'),
    ({'scales': [600], 'max_side': 500}, 'detection.max_side'),
    ({'roi_crop_size': 7}, 'detection.roi_crop_size'),
    ({'rpn_negative_iou': 0.8}, 'detection.rpn_negative_iou'),
    ({'lasso_init': 'first'}, 'detection.lasso_init'),
    ({'lasso_mix_norm': 'own'}, 'detection.lasso_mix_norm'),
    ({'batch_size': 0}, 'detection.batch_size'),
    ({'box_head_init': 'imagenet'}, 'detection.box_head_init'),
    ({'map_conventions': []}, 'detection.map_conventions'),
    ({'map_conventions': ['voc07', 'voc12']}, 'detection.map_conventions'),
    ({'map_conventions': ['voc07', 'voc07']}, 'detection.map_conventions'),
  ]:
    cfg = override(detection.DetectionEvalConfig(), values)
    with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
      cfg.validate()
  with pytest.raises(ConfigError, match="detection.scalez.*did you mean 'detection.scales'"):
    override(detection.DetectionEvalConfig(), {'scalez': [600]}, 'detection')
  with pytest.raises(ConfigError, match=r'detection\.train_source'):
    detection.run_detection(detection.DetectionEvalConfig(), None, '/nonexistent')
  detection.DetectionEvalConfig().validate()  # The defaults are valid.


def test_anchors_are_faster_rcnn_anchors_at_stride_16(trunk_config):
  model = detection_model.FasterRCNN(detection.DetectionEvalConfig(), backbone.load_trunk('random', trunk_config))
  anchors = model.anchors(600, 1000)[detection_model.LEVEL].numpy()
  # ceil(600 / 16) x ceil(1000 / 16) cells, 3 sizes x 3 ratios each.
  assert anchors.shape == (38, 63, 9 * 4)
  boxes = anchors.reshape(38, 63, 9, 4)
  centres = (boxes[..., :2] + boxes[..., 2:]) / 2
  np.testing.assert_allclose(centres[2, 5, 4], [2 * 16 + 8, 5 * 16 + 8])
  heights, widths = boxes[0, 0, :, 2] - boxes[0, 0, :, 0], boxes[0, 0, :, 3] - boxes[0, 0, :, 1]
  # Sizes 128, 256, 512 (outer) x width/height ratios 0.5, 1, 2 (inner); areas are size^2.
  np.testing.assert_allclose(np.sqrt(heights * widths), np.repeat([128, 256, 512], 3), rtol=1e-5)
  np.testing.assert_allclose((widths / heights)[:3], [0.5, 1.0, 2.0], rtol=1e-5)


def test_flip_mirrors_image_and_boxes():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  boxes = tf.constant([[0.1, 0.2, 0.5, 0.6]])
  preprocess = backbone.input_fn('rgb')
  # Scale 40 keeps the size (the shorter side already is 40), so pixels are comparable.
  out = detection_data.transform(tf.constant(image), boxes, 40, 60, True, preprocess)
  # x: 1 - 0.6 = 0.4 and 1 - 0.2 = 0.8 of 60 pixels; y unchanged: 0.1 and 0.5 of 40.
  np.testing.assert_allclose(out['boxes'].numpy(), [[4.0, 24.0, 20.0, 48.0]], atol=1e-4)
  np.testing.assert_allclose(out['image_shape'].numpy(), [40, 60])
  assert out['image'].shape == (48, 64, 3)  # Canvas: both sides rounded up to the stride.
  np.testing.assert_allclose(out['image'][:40, :60].numpy(), preprocess(image[:, ::-1]).numpy(), atol=1e-6)
  assert not np.any(out['image'][40:].numpy()) and not np.any(out['image'][:, 60:].numpy())
  unflipped = detection_data.transform(tf.constant(image), boxes, 20, 60, False, preprocess)
  # Half size, not flipped: pixel boxes scale with the image; canvas 32 x 64 for scale 20.
  np.testing.assert_allclose(unflipped['boxes'].numpy(), [[2.0, 6.0, 10.0, 18.0]], atol=1e-4)
  assert unflipped['image'].shape == (32, 64, 3)


def test_training_batches_are_multiscale_canvases(tiny_world):
  cfg = tiny_cfg(scales=[32, 64], max_side=64, batch_size=2)
  shapes = set()
  for batch in detection_data.train_dataset(cfg, tiny_world['sources']['detection_trainval']).take(6):
    images, sizes = batch['image'].numpy(), batch['image_shape'].numpy()
    shapes.add(images.shape[1:3])
    assert images.shape[0] == 2 and np.all(sizes <= np.array(images.shape[1:3]))
    classes, boxes = batch['gt_classes'].numpy(), batch['gt_boxes'].numpy()
    valid = classes > 0
    assert valid.any(axis=1).all() and np.all((classes == -1) | valid) and classes.max() <= 20
    assert np.all(boxes[~valid] == -1)
    assert np.all(boxes[valid][:, 2:] <= np.repeat(sizes, valid.sum(1), axis=0) + 1e-3)
  # Scale 32 of a 64 x 85 image is 32 x 42 on a 32 x 64 canvas (64 x 32 when portrait).
  assert shapes <= {(32, 64), (64, 32), (64, 64)} and (64, 64) in shapes and len(shapes) > 1


@pytest.fixture(scope='module')
def lasso_model(trunk_config):
  cfg = tiny_cfg(use_lasso=True)
  return cfg, detection_model.build_detector(cfg, backbone.load_trunk('random', trunk_config))


def test_lasso_mix_goes_through_the_trunks_closing_norm_by_default(trunk_config):
  trunk = backbone.load_trunk('random', trunk_config)
  images = tf.random.stateless_normal([2, 64, 64, 3], seed=[3, 4])
  plain = detection_model.DetectionBackbone(trunk)(images)['4']
  mixed = detection_model.DetectionBackbone(trunk, use_lasso=True)  # 'last' init: the plain network.
  assert mixed.lasso_norm is None
  # The mix is 1 x the last unit plus 0 x the others, then the same BN-ReLU: equal to float32 rounding.
  np.testing.assert_allclose(mixed(images)['4'], plain, rtol=1e-5, atol=1e-5)
  own = detection_model.DetectionBackbone(trunk, use_lasso=True, lasso_mix_norm='per_consumer')
  own(images)
  assert own.lasso_norm is not None and own.lasso_norm.built


def _batch():
  return {
    'image': tf.random.stateless_normal([2, 64, 96, 3], seed=[1, 2]),
    'image_shape': tf.constant([[64.0, 85.0], [60.0, 90.0]]),
    'gt_boxes': tf.constant(
      [[[4.0, 6.0, 40.0, 50.0], [-1.0] * 4], [[10.0, 20.0, 50.0, 80.0], [30.0, 5.0, 59.0, 30.0]]]
    ),
    'gt_classes': tf.constant([[3, -1], [1, 20]]),
  }


def test_model_outputs(lasso_model):
  cfg, model = lasso_model
  batch = _batch()
  out = model.detect(batch['image'], batch['image_shape'])
  assert out['detection_boxes'].shape == (2, 20, 4) and out['detection_boxes'].dtype == tf.float32
  assert out['detection_scores'].shape == (2, 20) and out['num_detections'].shape == (2,)
  n = out['num_detections'].numpy()
  for i in range(2):
    classes, boxes = out['detection_classes'][i, : n[i]].numpy(), out['detection_boxes'][i, : n[i]].numpy()
    assert np.all((classes >= 1) & (classes <= 20))
    assert np.all(boxes >= 0) and np.all(boxes[:, 2:] <= batch['image_shape'][i].numpy() + 1e-3)
  train = model(
    batch['image'], image_shape=batch['image_shape'], anchor_boxes=model._batch_anchors(batch['image'])[1],
    gt_boxes=batch['gt_boxes'], gt_classes=batch['gt_classes'], training=True,
  )  # fmt: skip
  assert train['rpn_scores']['4'].shape == (2, 4, 6, 9) and train['rpn_boxes']['4'].shape == (2, 4, 6, 36)
  assert train['class_outputs'].shape == (2, cfg.roi_batch_size, 21)
  assert train['box_outputs'].shape == (2, cfg.roi_batch_size, 21 * 4)
  assert train['backbone_features']['4'].shape == (2, 4, 6, model.backbone.output_channels)
  assert train['sampled_rois'].shape == (2, cfg.roi_batch_size, 4)


def test_filler_rois_are_left_out_of_the_class_loss(trunk_config, monkeypatch):
  # As many ROI slots as candidates (40 RPN proposals + 2 ground-truth boxes an image), background from IoU 0.1
  # (py-faster-rcnn): every candidate is sampled, and those below 0.1 (or padding) fill slots as background. Caffe's
  # minibatch would just be smaller, so they must not enter the class loss.
  cfg = tiny_cfg(roi_batch_size=42, roi_bg_iou_low=0.1)
  model = detection_model.build_detector(cfg, backbone.load_trunk('random', trunk_config))
  seen = {}

  def spy(outputs, targets, valid):
    seen.update(outputs=outputs.numpy(), targets=targets.numpy(), valid=valid.numpy())
    return masked_class_loss(outputs, targets, valid)

  masked_class_loss = roi_training.masked_class_loss
  monkeypatch.setattr(roi_training, 'masked_class_loss', spy)
  losses = model.train_losses(_batch())
  valid, targets, logits = seen['valid'], seen['targets'], seen['outputs'].astype(np.float64)
  # Image 0's padded ground-truth slot is a candidate with IoU -1, so it holds a filler whatever the proposals (32
  # of 42 slots here, 8 in image 1).
  assert valid.shape == (2, 42) and (~valid[0]).sum() >= 1
  assert np.all(targets[~valid] == 0) and np.all(valid[targets > 0])  # Fillers are background; objects are real.
  # Hand-computed: mean softmax cross-entropy over the real ROIs only (float32 logits, so rtol 1e-5).
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_probs, targets[..., None].astype(int), -1)[..., 0]
  np.testing.assert_allclose(losses['frcnn_class_loss'].numpy(), ce[valid].mean(), rtol=1e-5)


def test_train_step_has_finite_losses_and_gradients_everywhere(lasso_model):
  _, model = lasso_model
  groups = model.variable_groups()
  assert all(groups[k] for k in ('trunk', 'lasso', 'rpn', 'block4', 'box_head'))
  # Frozen BatchNorm: the trunk's scale/offset are not trained, block 4's are.
  assert not any('gamma' in v.name for v in groups['trunk']) and any('gamma' in v.name for v in groups['block4'])
  with tf.GradientTape() as tape:
    losses = model.train_losses(_batch())
  for name in (*detection_model.LOSS_NAMES, 'weight_decay', 'lasso_penalty', 'total_loss'):
    assert np.isfinite(losses[name].numpy()) and losses[name] >= 0, name
  assert losses['lasso_penalty'] > 0 and losses['frcnn_class_loss'] > 0
  variables = [v for group in groups.values() for v in group]
  grads = tape.gradient(losses['total_loss'], variables)
  for v, g in zip(variables, grads):
    assert g is not None, v.name
    assert np.all(np.isfinite(g.numpy())), v.name
  for name, group in groups.items():
    assert any(np.any(g.numpy() != 0) for v, g in zip(variables, grads) if any(v is w for w in group)), name


def _event_tags(folder):
  tags = set()
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


METRICS = (
  'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point',
  'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point',
  'PascalBoxes_Precision/mAP@0.5IOU',
  'PascalBoxes_Precision/mAP@0.75IOU',
)


def test_end_to_end_from_checkpoint_then_resume(pretrained, tiny_world, tmp_path):
  sources = tiny_world['sources']
  trunk = backbone.load_trunk(pretrained['checkpoint'], pretrained['trunk_config'])
  cfg = tiny_cfg()
  results = detection.run_detection(
    cfg, trunk, str(tmp_path), sources['detection_trainval'], sources['detection_test'], progress=False,
    init_source=pretrained['checkpoint'],
  )  # fmt: skip
  saved = json.load(open(tmp_path / 'eval' / 'detection' / 'results.json'))
  assert saved['steps'] == 3 and saved['init'] == pretrained['checkpoint']
  # A self-supervised checkpoint has no block 4: the box head starts random (§5).
  assert saved['box_head_init'] == 'random' and saved['box_head_input'] == 'final'
  assert saved['map_convention'] == 'voc07'
  for key in METRICS:
    assert 0.0 <= saved[key] <= 1.0, key
  per_class = [k for k in saved if k.startswith('PascalBoxes_PerformanceByCategory/AP@0.5IOU/')]
  assert len(per_class) == 20 and all(saved[k] is None or 0 <= saved[k] <= 1 for k in per_class)
  assert saved['num_test_images'] == 8 and saved['num_groundtruth_boxes'] > 0 and 'conventions' in saved
  assert results['seconds_per_step'] > 0
  out_dir = str(tmp_path / 'eval' / 'detection')
  tags = _event_tags(out_dir)
  assert {'detection/total_loss', 'detection/rpn_score_loss', 'detection/frcnn_box_loss'} <= tags
  assert {f'detection/{key.split("/")[1]}' for key in METRICS} <= tags
  assert tf.train.latest_checkpoint(os.path.join(out_dir, 'checkpoints')).endswith('ckpt-3')
  # Resuming: two more steps from step 3, not five from scratch.
  more = tiny_cfg(train_steps=5)
  resumed = detection.run_detection(
    more, backbone.load_trunk('random', pretrained['trunk_config']), str(tmp_path), sources['detection_trainval'],
    sources['detection_test'], progress=False,
  )  # fmt: skip
  assert resumed['steps'] == 5 and tf.train.latest_checkpoint(os.path.join(out_dir, 'checkpoints')).endswith('ckpt-5')


def test_end_to_end_from_saved_model_with_lasso(pretrained, tiny_world, tmp_path):
  sources = tiny_world['sources']
  trunk = backbone.load_trunk(pretrained['saved_model'], pretrained['trunk_config'])
  kernel = [v for v in trunk.variables if 'conv1_conv/kernel' in v.name][0]
  np.testing.assert_array_equal(kernel.numpy(), pretrained['weights'][kernel.name])
  results = detection.run_detection(
    tiny_cfg(train_steps=2, use_lasso=True), trunk, str(tmp_path), sources['detection_trainval'],
    sources['detection_test'], progress=False,
  )  # fmt: skip
  assert results['steps'] == 2 and results['use_lasso'] and len(results['lasso_alpha']) == 2
  assert all(0.0 <= results[key] <= 1.0 for key in METRICS)
  # The trunk was fine-tuned in place.
  assert not np.array_equal(kernel.numpy(), pretrained['weights'][kernel.name])


def test_non_finite_loss_names_the_step(pretrained, tiny_world, tmp_path):
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  cfg = tiny_cfg(learning_rate=1e30, warmup_steps=0, train_steps=4)
  with pytest.raises(FloatingPointError, match=r'non-finite loss at step [2-4]'):
    detection.run_detection(
      cfg, trunk, str(tmp_path), tiny_world['sources']['detection_trainval'], 'voc:/unused:test', progress=False
    )


# --- the box head's block 4: transferred from the supervised baseline, random otherwise -------------


@pytest.fixture(scope='module')
def supervised_run(trunk_config, tmp_path_factory):
  """A supervised baseline's eval folder holding a checkpoint with a distinctive block 4 (3 units)."""
  folder = str(tmp_path_factory.mktemp('labels') / 'eval' / 'supervised')
  model = SupervisedModel(trunk_config, num_classes=3)
  model(tf.zeros([1, 64, 64, 3]))
  rng = np.random.default_rng(11)
  for v in model.block4.variables:
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32) + (1.0 if 'gamma' in v.name or 'variance' in v.name else 0))
  prefix = tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  return {'dir': folder, 'prefix': prefix, 'block4': {_in_block4(v): v.numpy() for v in model.block4.variables}}


def _in_block4(variable) -> str:
  """A variable's name inside block 4 ('conv5_block1/0_conv/kernel:0'), whatever holds the block."""
  return variable.name.rsplit('/block4/', 1)[1]


@pytest.mark.numerics  # Compares the block-3 features with a float tolerance.
def test_supervised_block4_reaches_the_box_head(supervised_run, trunk_config):
  cfg = tiny_cfg(block4_units=3)
  assert detection.resolve_box_head_init(cfg, supervised_run['dir']) == ('checkpoint', supervised_run['prefix'])
  assert detection.resolve_box_head_init(tiny_cfg(block4_units=3, box_head_init='random'), supervised_run['dir']) == (
    'random', '',
  )  # fmt: skip
  model = detection_model.build_detector(cfg, backbone.load_trunk('random', trunk_config), supervised_run['prefix'])
  head = model.detection_head[0].block4
  assert sorted(_in_block4(v) for v in head.variables) == sorted(supervised_run['block4'])
  for variable in head.variables:
    # Copied, not computed: equal to the bit.
    np.testing.assert_array_equal(variable.numpy(), supervised_run['block4'][_in_block4(variable)], variable.name)
  # Its input convention: ROI crops of the raw block-3 sum, BatchNorm frozen like the trunk's.
  assert model.backbone.box_input == 'block3'
  assert not any('gamma' in v.name or 'beta' in v.name for v in model.variable_groups()['block4'])
  images = tf.random.stateless_normal([1, 64, 64, 3], seed=[3, 4])
  features = model.backbone(images, training=False)
  expected = model.backbone.trunk(images, training=False, output_stride=detection_model.STRIDE)['block3']
  # The same ops on the same input: only float32 rounding can differ between calls.
  np.testing.assert_allclose(features[detection_model.BOX_INPUT_KEY].numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
  losses = model.train_losses(_batch())
  assert np.isfinite(losses['total_loss'].numpy())


def test_self_supervised_trunk_gets_a_random_box_head(supervised_run, pretrained):
  cfg = tiny_cfg(block4_units=3)
  for source in (pretrained['checkpoint'], pretrained['saved_model'], 'random', ''):
    assert detection.resolve_box_head_init(cfg, source) == ('random', ''), source
  model = detection_model.build_detector(cfg, backbone.load_trunk(pretrained['checkpoint'], pretrained['trunk_config']))
  head = model.detection_head[0].block4
  assert model.backbone.box_input == 'final' and any('gamma' in v.name for v in model.variable_groups()['block4'])
  kernels = [v for v in head.variables if 'kernel' in v.name]
  assert kernels and not any(np.array_equal(v.numpy(), supervised_run['block4'][_in_block4(v)]) for v in kernels)


def test_box_head_init_errors_name_the_key_and_file(supervised_run, pretrained):
  with pytest.raises(ConfigError, match=r"detection\.box_head_init: 'checkpoint'.*model/block4.*ckpt-1"):
    detection.resolve_box_head_init(tiny_cfg(box_head_init='checkpoint'), pretrained['checkpoint'])
  with pytest.raises(ConfigError, match=r"detection\.box_head_init: 'checkpoint'.*'random'"):
    detection.resolve_box_head_init(tiny_cfg(box_head_init='checkpoint'), 'random')
  # tiny_cfg has a one-unit block 4; the stored one has 3.
  with pytest.raises(ConfigError, match=r'detection\.block4_units: 1.*ckpt-1.* has 3 units'):
    detection.resolve_box_head_init(tiny_cfg(), supervised_run['dir'])


def test_end_to_end_from_the_supervised_baseline(supervised_run, trunk_config, tiny_world, tmp_path):
  sources = tiny_world['sources']
  trunk = backbone.load_trunk(supervised_run['dir'], trunk_config)
  results = detection.run_detection(
    tiny_cfg(train_steps=1, block4_units=3), trunk, str(tmp_path), sources['detection_trainval'],
    sources['detection_test'], progress=False, init_source=supervised_run['dir'],
  )  # fmt: skip
  assert results['box_head_init'] == 'checkpoint' and results['box_head_source'] == supervised_run['prefix']
  assert results['box_head_input'] == 'block3' and all(0.0 <= results[key] <= 1.0 for key in METRICS)
