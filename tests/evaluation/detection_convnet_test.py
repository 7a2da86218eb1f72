"""Detection of AlexNet / VGG16 networks (Noroozi Table 3): geometry, builds, frozen conv1, schedule, SS + MS test."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override, save_config
from mtssl_tf.configs.base import read_yaml
from mtssl_tf.evaluation import backbone, detection, detection_convnet, detection_scales, results_table, runner
from mtssl_tf.evaluation.detection_config import DetectionEvalConfig
from mtssl_tf.evaluation.detection_model import LEVEL
from mtssl_tf.evaluation.runner import load_eval_config
from mtssl_tf.grid import outputs
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META, load_student
from mtssl_tf.trunk.registry import build_trunk

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
MS_KEY = detection_scales.MULTISCALE_PREFIX + 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'
SS_KEY = 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'


def tiny_cfg(**values) -> DetectionEvalConfig:
  """Fast R-CNN's settings (conv1 frozen, biases x2, / 10 each third) on 64 px canvases of the tiny world."""
  cfg = override(DetectionEvalConfig(), dict(
    scales=[48, 64], max_side=96, test_scale=64, test_max_side=96, anchor_sizes=[16.0, 32.0, 64.0], rpn_filters=16,
    roi_batch_size=16, rpn_pre_nms_top_k=100, rpn_post_nms_top_k=40, rpn_test_pre_nms_top_k=100,
    rpn_test_post_nms_top_k=20, max_detections=20, train_steps=3, warmup_steps=0, lr_decay_fractions=[0.34, 0.67],
    log_every_steps=1, checkpoint_every_steps=3, learning_rate=0.01, freeze_conv1=True, bias_lr_multiplier=2.0,
    roi_crop_size=12, fc_units=256, batch_size=2,
  ))  # fmt: skip
  return override(cfg, values)


def _sources(world):
  return world['sources']['detection_trainval'], world['sources']['detection_test']


def _student(folder: str, architecture: str = 'alexnet') -> str:
  """A tiny AlexNet student folder as `mtssl-transfer` leaves it (student.json + checkpoint), distinctive weights."""
  model = models.build_model('alexnet', 5, 64, width=0.125)
  for v in model.variables:
    v.assign(tf.random.stateless_normal(v.shape, [2, len(v.name)], stddev=0.05) + (1.0 if 'variance' in v.name else 0))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  with open(os.path.join(folder, META), 'w') as f:
    json.dump({'architecture': architecture, 'num_classes': 5, 'input_size': 64, 'kwargs': {'width': 0.125}}, f)
  return folder


def _conv_run(folder: str, kind: str, **section) -> str:
  """A pre-training run folder of a `kind` trunk (config.yaml + checkpoint with the trunk at model/trunk)."""
  cfg = ExperimentConfig()
  cfg.trunk.kind = kind
  override(getattr(cfg.trunk, kind), section)
  save_config(cfg, folder)
  trunk = build_trunk(cfg.trunk)
  trunk(tf.zeros([1, 64, 64, 3]), training=False)
  tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  return folder


def _load(run_dir: str):
  """The run's trunk as `mtssl-eval --init=<run_dir>` loads it (kind and shape from its config.yaml)."""
  cfg = load_eval_config([], [], run_dir)
  return backbone.load_trunk(cfg.init, cfg.trunk)


# --- geometry ------------------------------------------------------------------------------------------


def test_conv_grids_line_up_with_the_anchors():
  # CaffeNet to conv5, u_in = s u + k/2 - p - s/2 per layer: conv1 (11, 4, 0) 3.5; pool1 (3, 2, 0) 4 x 0.5;
  # conv2 (5, 1, 2) 0; pool2 8 x 0.5; conv3-5 (3, 1, 1) 0: a 9.5 px shift -> pad 9 (half a pixel off).
  assert detection_convnet.alignment_pad('alexnet') == 9
  # deepcontext's conv1 padding 5 shifts conv1 by -5: 4.5 -> pad 4. VGG16's 'same' convs and 2x2 pools: 0.
  assert detection_convnet.alignment_pad('alexnet', conv1_padding=5) == 4
  assert detection_convnet.alignment_pad('vgg16') == 0
  assert detection_convnet.min_canvas('alexnet') == 48 and detection_convnet.min_canvas('vgg16') == 32
  for canvas in range(48, 1217, 16):  # Every canvas the pipeline makes: sides multiples of 16.
    assert detection_convnet.endpoint_side('alexnet', canvas) == canvas // 16, canvas
    assert detection_convnet.endpoint_side('alexnet', canvas, conv1_padding=5) == canvas // 16, canvas
    assert detection_convnet.endpoint_side('vgg16', canvas) == canvas // 16, canvas


@pytest.mark.numerics
def test_multiscale_merge_keeps_each_box_at_its_nearest_224_level():
  shapes = np.array([[200.0, 300.0], [400.0, 600.0]])
  whole, half, half_b = [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.49]
  # Pixel areas: whole 6e4 (level 0) / 2.4e5 (level 1); half 1.5e4 / 6e4: nearest 224^2 = 50176 at levels 0 and 1.
  np.testing.assert_array_equal(detection_scales.nearest_area_level(np.array([whole, half]), shapes), [0, 1])
  levels = [
    (np.array([whole, half]), np.array([0.9, 0.8]), np.array([2, 1])),  # half belongs to level 1: dropped here.
    (np.array([whole, half, half_b, half_b]), np.array([0.7, 0.6, 0.5, 0.4]), np.array([2, 1, 1, 3])),
  ]
  boxes, scores, classes = detection_scales.merge_levels(levels, shapes, nms_iou=0.3, max_detections=10)
  # Level 1's whole box is level 0's; half_b overlaps half (IoU 0.98 > 0.3) in class 1 but not in class 3.
  np.testing.assert_array_equal(scores, [0.9, 0.6, 0.4])
  np.testing.assert_array_equal(classes, [2, 1, 3])
  np.testing.assert_array_equal(boxes, [whole, half, half_b])
  assert detection_scales.merge_levels(levels, shapes, 0.3, max_detections=2)[1].tolist() == [0.9, 0.6]


@pytest.mark.numerics
def test_learning_rate_is_divided_by_ten_after_each_third():
  cfg = override(
    DetectionEvalConfig(),
    read_yaml(os.path.join(ROOT, 'configs', 'eval', 'detection_alexnet.yaml'))['detection'],
    'detection',
  )
  cfg.validate()
  schedule = detection.learning_rate_schedule(cfg)
  # Update k (0-based) of 150K: 0.001 up to 49999, 1e-4 from 50K, 1e-5 from 100K (Caffe's step policy).
  expected = {0: 1e-3, 49999: 1e-3, 50000: 1e-4, 99999: 1e-4, 100000: 1e-5, 149999: 1e-5}
  for step, rate in expected.items():
    # The schedule returns float32: equal to the float64 rate within one float32 rounding.
    assert float(schedule(step)) == pytest.approx(rate, rel=1e-6), step
  assert cfg.decay_steps() == [50000, 100000] and cfg.freeze_conv1 and cfg.test_scales
  tiny = tiny_cfg(train_steps=30, lr_decay_fractions=[1 / 3, 2 / 3])
  rates = [float(detection.learning_rate_schedule(tiny)(k)) for k in range(30)]
  np.testing.assert_allclose(rates, [0.01] * 10 + [1e-3] * 10 + [1e-4] * 10, rtol=1e-6)


# --- building on each kind of network ------------------------------------------------------------------


def test_builds_on_an_alexnet_student(tmp_path):
  student = load_student(_student(str(tmp_path / 'student')))
  model, description = detection_convnet.build_conv_detector(tiny_cfg(), student)
  net = model.backbone.trunk
  assert 'student' in description and net is not student and net.fc_names == ()
  for conv in ('conv1', 'conv3', 'conv5'):  # Copied, not computed: equal to the bit.
    np.testing.assert_array_equal(net.convs[conv].kernel.numpy(), student.convs[conv].kernel.numpy())
  features = model.backbone(tf.zeros([1, 64, 96, 3]))[LEVEL]
  assert features.shape == (1, 4, 6, student.convs['conv5'].filters)
  groups = model.variable_groups()
  assert groups['fc'] and groups['box_head'] and groups['rpn'] and not groups['lasso']


def test_builds_on_vgg16_and_jigsaw_alexnet_run_trunks(tmp_path):
  vgg_run = _conv_run(str(tmp_path / 'vgg'), 'vgg16', width=1 / 16, batch_norm=True)
  trunk = _load(vgg_run)
  model, description = detection_convnet.build_conv_detector(tiny_cfg(), trunk)
  assert 'VGG16' in description and model.backbone.trunk is trunk.net  # Fine-tuned in place.
  assert model.backbone(tf.zeros([1, 64, 96, 3]))[LEVEL].shape[1:3] == (4, 6)
  jigsaw = build_trunk(load_eval_config([], ['trunk.kind=alexnet', 'trunk.alexnet.variant=jigsaw',
                                             'trunk.alexnet.width=0.0625']).trunk)  # fmt: skip
  jigsaw(tf.zeros([1, 64, 64, 3]))
  model, description = detection_convnet.build_conv_detector(tiny_cfg(), jigsaw)
  net = model.backbone.trunk
  # Noroozi §5: the tile network's conv weights in the standard AlexNet (conv1 stride 4 instead of 2).
  assert 'jigsaw' in description and net.variant == 'standard' and net.convs['conv1'].strides == (4, 4)
  np.testing.assert_array_equal(net.convs['conv2'].kernel.numpy(), jigsaw.net.convs['conv2'].kernel.numpy())
  # deepcontext's Context AlexNet (conv1 padded by 5, no groups), in place: 4 px alignment, still a canvas / 16 grid.
  shape = [
    'trunk.kind=alexnet',
    'trunk.alexnet.conv1_padding=5',
    'trunk.alexnet.groups=1',
    'trunk.alexnet.width=0.0625',
  ]
  context = build_trunk(load_eval_config([], shape).trunk)
  context(tf.zeros([1, 64, 64, 3]))
  model, _ = detection_convnet.build_conv_detector(tiny_cfg(), context)
  assert model.backbone.pad == 4 and model.backbone(tf.zeros([1, 64, 96, 3]))[LEVEL].shape[1:3] == (4, 6)


def test_unsupported_networks_and_settings_are_named(tmp_path, tiny_world):
  with pytest.raises(ConfigError, match=r'^detection: runs on .* not on a object'):
    detection_convnet.network_kind(object())
  train, test = _sources(tiny_world)
  sources = [f'detection.train_source={train}', f'detection.test_source={test}']
  keras_student = _student(str(tmp_path / 'keras'), architecture='keras:ResNet50')
  with pytest.raises(ConfigError, match=r"init: student .*keras.* 'keras:ResNet50'; detection runs on AlexNet"):
    runner.run('detection', load_eval_config([], sources, keras_student), str(tmp_path))
  run = _conv_run(str(tmp_path / 'alexnet'), 'alexnet', width=0.0625)
  named = [
    (['detection.use_lasso=true'], r'detection\.use_lasso.*trunk\.kind is .alexnet'),
    (['detection.box_head_init=checkpoint'], r"detection\.box_head_init: 'checkpoint'.*alexnet"),
    (['detection.scales=[32]', 'detection.max_side=64'], r'detection\.scales: 32 px.*48 px'),
  ]
  for extra, key in named:
    with pytest.raises(ConfigError, match=key):
      runner.run('detection', load_eval_config([], sources + extra, run), str(tmp_path))


# --- end to end ----------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_alexnet_student_from_mtssl_eval_reports_single_and_multiscale_map(tmp_path, tiny_world):
  student = _student(str(tmp_path / 'student'))
  train, test = _sources(tiny_world)
  tiny = os.path.join(ROOT, 'configs', 'eval', 'detection_alexnet_tiny.yaml')
  # One training canvas, a pyramid sharing the single-scale test's canvas: few traces (multi-scale: detection_test).
  # The RPN stand-in (the config's own selective search: fast_rcnn_test).
  overrides = [f'detection.train_source={train}', f'detection.test_source={test}', 'detection.train_steps=3',
               'detection.scales=[64]', 'detection.max_side=96', 'detection.test_scale=64',
               'detection.test_max_side=96', 'detection.test_scales=[48,64]', 'detection.test_scales_max_side=96',
               'detection.rpn_filters=16', 'detection.fc_units=256', 'detection.log_every_steps=1',
               'detection.proposals=rpn']  # fmt: skip
  results = runner.run('detection', load_eval_config([tiny], overrides, student), str(tmp_path))
  saved = json.load(open(tmp_path / 'eval' / 'detection' / 'results.json'))
  for key in (SS_KEY, MS_KEY, 'PascalBoxes_Precision/mAP@0.75IOU', 'multiscale_PascalBoxes_Precision/mAP@0.75IOU'):
    assert 0.0 <= saved[key] <= 1.0, key
  assert saved['num_test_images'] == saved['multiscale_num_test_images'] == 8
  assert saved['table_note'] == detection_convnet.TABLE_NOTE and saved['proposals'] == 'rpn'
  assert saved['network_kind'] == 'alexnet' and 'student' in saved['network'] and saved['freeze_conv1']
  # The config's thirds of 3 steps: the rate drops before steps 2 and 3 (updates 1 and 2).
  assert saved['lr_decay_steps'] == [1, 2] and saved['bias_lr_multiplier'] == 2.0
  assert results['test_scales'] == [48, 64] and results['steps'] == 3


@pytest.mark.numerics
def test_conv1_stays_fixed_while_the_rest_of_an_alexnet_trunk_trains(tmp_path, tiny_world):
  run = _conv_run(str(tmp_path / 'run'), 'alexnet', width=0.0625)
  trunk = _load(run)
  before = {v.name: v.numpy() for v in trunk.variables}
  cfg = tiny_cfg(scales=[64], train_steps=2, checkpoint_every_steps=2, lr_decay_fractions=[0.5])
  results = detection.run_detection(cfg, trunk, str(tmp_path), *_sources(tiny_world),
                                    progress=False, init_source=run)  # fmt: skip
  assert results['steps'] == 2 and 0.0 <= results[SS_KEY] <= 1.0 and MS_KEY not in results
  assert results['network'].startswith('AlexNet trunk conv1-conv5, fine-tuned in place')
  for v in trunk.variables:
    if '/conv1/' in v.name:  # Never updated: not a trainable variable.
      np.testing.assert_array_equal(v.numpy(), before[v.name], v.name)
    elif 'kernel' in v.name:
      # Two SGD steps at lr 0.01 move every other kernel (values ~0.01, so any step of ~1e-9 shows; biases start at
      # CaffeNet's 1.0, where a small step can round away in float32, so they are not asserted).
      assert not np.array_equal(v.numpy(), before[v.name]), v.name


def test_every_table_showing_a_conv_detection_prints_the_documented_choice(tmp_path):
  cell = tmp_path / 'jigsaw' / 'eval' / 'detection'
  cell.mkdir(parents=True)
  with open(cell / 'results.json', 'w') as f:
    json.dump({SS_KEY: 0.5, 'table_note': detection_convnet.TABLE_NOTE}, f)
  found = [results_table.read_run(str(tmp_path / 'jigsaw'))]
  assert results_table.notes(found) == [detection_convnet.TABLE_NOTE] and not results_table.notes(found, ['linear'])
  header, rows = results_table.build_rows([('Jigsaw++', str(tmp_path / 'jigsaw'))])
  assert detection_convnet.TABLE_NOTE in results_table.to_markdown(header, rows, results_table.notes(found))
  # The grid's paper tables: a Doersch table shows the detection column, so it carries the note.
  grid = SimpleNamespace(cells=[SimpleNamespace(name='jigsaw', rows={'table2': 'RP'})])
  notes = outputs.table_notes(grid, str(tmp_path), 'table2')
  assert notes == [detection_convnet.TABLE_NOTE]
  assert outputs.table_markdown('table2', header, rows, notes).rstrip().endswith(detection_convnet.TABLE_NOTE)
