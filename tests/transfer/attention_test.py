"""Attention-transfer baseline (Noroozi Table 3 "[37]+vgg-Jigsaw++"): the AT term, training, a run voc07_cls reads."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from mtssl_tf.configs import ConfigError, save_config
from mtssl_tf.evaluation import backbone, runner
from mtssl_tf.evaluation import voc_classification as vc
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.transfer import attention
from mtssl_tf.transfer.attention_config import AttentionConfig
from mtssl_tf.transfer.config import load_transfer_config
from mtssl_tf.trunk.registry import build_trunk

ROOT = pathlib.Path(__file__).parents[2]
CONFIGS = ROOT / 'configs' / 'transfer'
# float32 arithmetic on values <= 4 through a dozen operations (squares, means, a square root, divisions): each
# rounds by at most 2^-24 relative, so the results are within ~1e-6 relative of the exact ones; 1e-5 leaves margin.
RTOL = 1e-5
# The AT term (beta-weighted) must fall to below this fraction of its first 10 steps' mean in the last 10 of 40.
# Measured (EPYC, oneDNN on, student seeds 0-3): 0.16, 0.17, 0.14, 0.21 (e.g. 72.7 -> 11.9).
MARGIN = 0.5


def _pairs(values):
  """[[(c0, c1) per column] per row] -> a [1, H, W, 2] float32 activation."""
  return tf.constant([values], tf.float32)


# Student: F = mean over channels of A^2 = [[2, 2], [1, 0]] (|-2| counts as 2); L2 norm 3.
STUDENT = [[(2.0, 0.0), (0.0, -2.0)], [(1.0, 1.0), (0.0, 0.0)]]
# Teacher: F = [[1, 2], [2, 0]]; L2 norm 3.
TEACHER = [[(1.0, -1.0), (2.0, 0.0)], [(0.0, 2.0), (0.0, 0.0)]]
# Normalised: (2, 2, 1, 0) / 3 vs (1, 2, 2, 0) / 3; differences (1, 0, -1, 0) / 3, squares summed 2 / 9, mean over
# the 4 positions of the one image: 1 / 18.
EXPECTED = 1.0 / 18.0


@pytest.mark.numerics
def test_attention_map_and_at_loss_equal_hand_computed_values():
  q = attention.attention_map(_pairs(STUDENT))
  np.testing.assert_allclose(q.numpy()[0, :, :, 0], [[2.0, 2.0], [1.0, 0.0]], rtol=RTOL)
  np.testing.assert_allclose(attention.normalized(q).numpy(), [[2 / 3, 2 / 3, 1 / 3, 0.0]], rtol=RTOL)
  np.testing.assert_allclose(float(attention.at_loss(_pairs(STUDENT), _pairs(TEACHER))), EXPECTED, rtol=RTOL)
  # A teacher at 4x4 whose 2x2 blocks repeat TEACHER's cells: area averaging gives its F back, so the same term.
  big = tf.repeat(tf.repeat(_pairs(TEACHER), 2, axis=1), 2, axis=2)
  assert attention.common_grid((2, 2), (4, 4)) == (2, 2)
  np.testing.assert_allclose(float(attention.at_loss(_pairs(STUDENT), big)), EXPECTED, rtol=RTOL)
  # p = 4: F = mean over channels of A^4, (16 + 0) / 2 = 8 in the first row.
  np.testing.assert_allclose(attention.attention_map(_pairs(STUDENT), 4.0).numpy()[0, 0, :, 0], [8.0, 8.0], rtol=RTOL)


@pytest.mark.numerics
def test_at_loss_is_zero_for_proportional_maps_and_finite_for_blank_ones():
  x = tf.random.stateless_uniform([3, 5, 5, 4], [1, 2], 0.1, 2.0)
  # Teacher: the student's channels twice, times 3 (another width, F x 9): the same attention up to scale.
  teacher = 3.0 * tf.concat([x, -x], axis=-1)
  # Each normalised entry is within ~1e-7 of the other's (float32 rounding), so squares are ~1e-14.
  assert float(attention.at_loss(x, teacher)) < 1e-10
  assert float(attention.at_loss(x, tf.repeat(tf.repeat(teacher, 2, axis=1), 2, axis=2))) < 1e-10
  blank = attention.at_loss(tf.zeros([2, 3, 3, 4]), x[:2, :3, :3])
  # A blank map normalises to zeros (the eps), so the term is the mean of the other's squared unit vector: 1 / 9.
  np.testing.assert_allclose(float(blank), 1.0 / 9.0, rtol=RTOL)


def test_defaults_and_config_errors():
  cfg = AttentionConfig()
  assert cfg.beta == 1000.0 and cfg.p == 2.0 and cfg.student.variant == 'jigsaw'
  assert attention.teacher_layers(cfg, 'vgg16') == ('conv3_3', 'conv4_3', 'conv5_3')
  assert attention.teacher_layers(AttentionConfig(teacher_endpoints=('a', 'b', 'c')), 'vgg16') == ('a', 'b', 'c')
  with pytest.raises(ConfigError, match='attention.teacher_endpoints'):
    attention.teacher_layers(AttentionConfig(student_endpoints=('conv5',)), 'vgg16')
  for overrides, message in [
    (['attention.resize=nearest'], 'attention.resize'),
    (['attention.student_endpoints=[fc6]'], 'attention.student_endpoints'),
    (['attention.teacher_endpoints=[conv4_3]'], 'attention.teacher_endpoints'),
    (['attention.jigsaw.data.source=folder:/x'], 'attention.jigsaw.data.source'),
    (['attention.beta=-1'], 'attention.beta'),
    (['attention.teacher_tile_scale=-1'], 'attention.teacher_tile_scale: must be >= 0, got -1'),
    (['attention.bias_lr_mult=0'], 'attention.bias_lr_mult: must be > 0, got 0'),
    (['attention.export_image_size=-5'], 'attention.export_image_size: must be >= 0, got -5'),
  ]:
    with pytest.raises(ConfigError, match=message):
      load_transfer_config([], overrides)


@pytest.fixture(scope='module')
def vgg16_teacher(tmp_path_factory):
  """A 'Jigsaw++ VGG16 run' (config.yaml + checkpoint) at width 1/16, BatchNorm, He-scaled random weights."""
  run_dir = str(tmp_path_factory.mktemp('vgg16_teacher'))
  cfg = ExperimentConfig()
  cfg.trunk.kind, cfg.trunk.vgg16.width, cfg.trunk.vgg16.batch_norm = 'vgg16', 0.0625, True
  cfg.tasks.jigsaw.enabled, cfg.tasks.jigsaw.tile_scale = True, 2.0  # The teacher's own tile scale, read from here.
  save_config(cfg, run_dir)
  trunk = build_trunk(cfg.trunk)
  trunk(tf.zeros([1, 64, 64, 3]))
  for i, v in enumerate(trunk.trainable_variables):
    std = np.sqrt(2.0 / np.prod(v.shape[:-1])) if 'kernel' in v.name else 0.0
    v.assign(tf.random.stateless_normal(v.shape, [5, i], stddev=std) + (1.0 if 'gamma' in v.name else 0.0))
  tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))
  return {'run_dir': run_dir, 'trunk': cfg.trunk}


@pytest.mark.numerics
def test_binary_lowers_the_at_term_and_voc07_cls_reads_the_student(vgg16_teacher, tiny_world, tmp_path):
  sources = tiny_world['sources']
  steps = 40
  small = {
    'extract': {'source': sources['images_train'], 'init': vgg16_teacher['run_dir']},
    'probe': {'train_source': sources['images_train'], 'validation_source': sources['images_validation']},
    'attention': {'steps': steps, 'log_every_steps': 10, 'checkpoint_every_steps': steps},
  }
  test_yaml = tmp_path / 'test.yaml'
  test_yaml.write_text(yaml.safe_dump(small))
  model_dir = tmp_path / 'run'
  configs = [f'--config={CONFIGS / name}' for name in ('tiny.yaml', 'attention_tiny.yaml')] + [f'--config={test_yaml}']
  command = [sys.executable, '-m', 'mtssl_tf.bin.transfer', 'attention', *configs, f'--model_dir={model_dir}']
  result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(x for x in result.stdout.splitlines() if x.startswith('attention:'))
  assert json.loads(line.split(':', 1)[1])['steps'] == steps
  done = json.loads((model_dir / 'attention' / 'results.json').read_text())
  assert done['pairs'] == {'conv3': 'conv3_3', 'conv4': 'conv4_3', 'conv5': 'conv5_3'}
  # 33 px tiles: student conv3-conv5 3x3; VGG16 conv3_3 9x9, conv4_3 5x5, conv5_3 3x3, area-averaged to 3x3.
  assert [done['shapes'][k]['teacher'][:2] for k in ('conv3', 'conv4', 'conv5')] == [[9, 9], [5, 5], [3, 3]]
  assert all(done['shapes'][k]['grid'] == [3, 3] for k in ('conv3', 'conv4', 'conv5'))
  assert done['tile_scale'] == {'student': 1.0, 'teacher': 2.0}
  first, last = done['first_window'], done['last_window']
  # The AT term falls (MARGIN: measured ratios at its definition).
  assert last['at'] < MARGIN * first['at'], (first, last)
  assert (model_dir / 'attention' / 'saved_model' / 'saved_model.pb').exists()
  # The folder is a Jigsaw++ AlexNet run: its trunk loads from config.yaml + checkpoint, and voc07_cls fine-tunes it.
  init = str(model_dir / 'attention')
  trunk_section = backbone.run_trunk_config(init)
  assert trunk_section['kind'] == 'alexnet' and trunk_section['alexnet']['variant'] == 'jigsaw'
  overrides = [f'{vc.NAME}.train_source={sources["detection_trainval"]}',
               f'{vc.NAME}.test_source={sources["detection_test"]}', f'{vc.NAME}.crop_size=64', f'{vc.NAME}.steps=4',
               f'{vc.NAME}.checkpoint_every_steps=4', f'{vc.NAME}.log_every_steps=2']  # fmt: skip
  cfg = load_eval_config([str(ROOT / 'configs' / 'eval' / 'voc07_cls_tiny.yaml')], overrides, init)
  results = runner.run(vc.NAME, cfg, str(tmp_path / 'eval'))
  assert 'jigsaw variant' in results['protocol']['network'] and results['counts']['steps'] == 4
  assert 0.0 <= results['mAP'] <= 1.0
