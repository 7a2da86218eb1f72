"""Frozen linear classification: pooling, the 9K rule, recall@k, frozen trunk, probes, lasso, runs."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override, validate_all
from mtssl_tf.evaluation import backbone, classification, linear

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def tiny_cfg(**values) -> linear.LinearEvalConfig:
  cfg = linear.LinearEvalConfig()
  override(cfg, dict(image_size=64, crop_size=56, batch_size=8, eval_batch_size=10, steps=3, log_every_steps=1,
                     checkpoint_every_steps=2, shuffle_buffer=40))  # fmt: skip
  return override(cfg, values)


def event_tags(folder: str) -> set:
  tags = set()
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def trunk_state(trunk) -> dict:
  # Every variable, BatchNorm moving statistics included.
  return {v.name: v.numpy().copy() for v in trunk.variables}


def test_adaptive_max_pool_equals_hand_computation():
  x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
  x[0, 1, 3, 0] = 100.0  # In the overlap row/column of cells (0, 1), (0, 2), (1, 1), (1, 2).
  # 5 -> 3 cells: rows/columns [0, 2), [1, 4), [3, 5).
  bounds = [(0, 2), (1, 4), (3, 5)]
  expected = np.array([[x[0, r0:r1, c0:c1, 0].max() for c0, c1 in bounds] for r0, r1 in bounds])
  np.testing.assert_array_equal(linear.adaptive_max_pool(tf.constant(x), (3, 3))[0, ..., 0], expected)
  assert expected[0, 1] == expected[1, 2] == 100.0 and expected[0, 0] == 6.0
  # A divisible size is plain non-overlapping max pooling, also with unknown static shape.
  y = tf.random.stateless_normal([2, 8, 6, 3], seed=[1, 2])
  dynamic = tf.function(lambda t: linear.adaptive_max_pool(t, (4, 3)), input_signature=[tf.TensorSpec(None)])
  np.testing.assert_allclose(dynamic(y), tf.nn.max_pool2d(y, 2, 2, 'VALID'))
  # A map smaller than the grid repeats its rows and columns.
  small = tf.constant([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
  np.testing.assert_array_equal(linear.adaptive_max_pool(small, (3, 3))[0, ..., 0], [[1, 2, 2], [3, 4, 4], [3, 4, 4]])


@pytest.mark.parametrize(
  'channels, spatial, grid',
  [(1024, None, 3), (512, None, 4), (256, None, 6), (64, None, 12), (2048, None, 2), (9217, None, 1), (1024, 2, 2)],
)
def test_probe_grid_keeps_dims_within_9k(channels, spatial, grid):
  assert linear.probe_grid(channels, spatial=spatial) == grid
  assert grid * grid * channels <= linear.MAX_PROBE_DIMS or grid == 1
  if spatial is None and grid > 1:
    assert (grid + 1) ** 2 * channels > linear.MAX_PROBE_DIMS  # The largest such grid.
  # A strict 9,000 budget would give block 3 (1024 channels) 2x2, not Doersch's 3x3.
  assert linear.probe_grid(1024, max_dims=9000) == 2


def test_recall_at_k_on_hand_made_logits():
  logits = [
    [0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4],  # label 3: rank 1
    [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: rank 5
    [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: rank 6
    [0.0, 0.9, 0.8, 0.1, 0.2, 0.3, 0.4],  # label 2: rank 2
  ]
  labels = [3, 4, 5, 2]
  assert classification.recall_at_k(logits, labels, 1) == 0.25
  assert classification.recall_at_k(logits, labels, 5) == 0.75
  # Fewer classes than k: every label is among the top min(k, classes).
  assert classification.recall_at_k([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]], [0, 0], 5) == 1.0
  # Ties go to the lower class, so a constant classifier is right only for class 0.
  assert classification.recall_at_k(np.zeros([4, 10]), [0, 1, 2, 3], 1) == 0.25


@pytest.mark.parametrize(
  'values, key',
  [
    ({'endpoint': 'block9'}, 'linear.endpoint'),
    ({'probe_endpoints': ['block1', 'block1']}, 'linear.probe_endpoints'),
    ({'probe_endpoints': ['block3/unit_1']}, 'linear.probe_endpoints'),
    ({'crop_size': 80}, 'linear.image_size'),
    ({'use_lasso': True, 'endpoint': 'block2'}, 'linear.use_lasso'),
    ({'contrast_range': [1.5, 0.5]}, 'linear.contrast_range'),
    ({'steps': 0}, 'linear.steps'),
    ({'lr_decay_factor': 0.0}, 'linear.lr_decay_factor'),
    ({'lasso_init': 'first'}, 'linear.lasso_init'),
    ({'momentum': 1.0}, 'linear.momentum'),
  ],
)
def test_config_errors_name_the_key(values, key):
  with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
    validate_all(tiny_cfg(**values))


def test_run_errors_name_the_key(pretrained, tmp_path):
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  with pytest.raises(ConfigError, match=r'linear\.train_source'):
    linear.run_linear(tiny_cfg(), trunk, str(tmp_path), '', 'tfrecord:/nowhere')
  # Names the config checks cannot know: the tiny trunk has 2 block-3 units.
  with pytest.raises(ConfigError, match=r'linear\.probe_endpoints.*block3/unit_05'):
    linear.run_linear(tiny_cfg(probe_endpoints=['block3/unit_05'], num_classes=10), trunk, str(tmp_path), 'a', 'b')


def test_frozen_trunk_probes_and_lasso_from_checkpoint(pretrained, tiny_world, tmp_path):
  trunk = backbone.load_trunk(pretrained['checkpoint'], pretrained['trunk_config'])
  before = trunk_state(trunk)
  cfg = tiny_cfg(probe_endpoints=['stem', 'block1', 'block3/unit_01'], use_lasso=True)
  sources = tiny_world['sources']
  results = linear.run_linear(
    cfg, trunk, str(tmp_path), sources['images_train'], sources['images_validation'], init_source='ckpt'
  )
  # The trunk, BatchNorm moving statistics included, is untouched.
  for name, value in trunk_state(trunk).items():
    np.testing.assert_array_equal(value, before[name], err_msg=name)
    np.testing.assert_array_equal(value, pretrained['weights'][name], err_msg=name)
  # Every linear layer and the fresh lasso alpha did train.
  ckpt = tf.train.load_checkpoint(os.path.join(tmp_path, 'eval', 'linear', 'checkpoints'))
  for key in ('main', 'stem', 'block1', 'block3_unit_01'):
    kernel = ckpt.get_tensor(f'probes/heads/{key}/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE')
    assert np.abs(kernel).max() > 0, key  # Initialised at zero.
  alpha = ckpt.get_tensor('probes/lasso/alpha/.ATTRIBUTES/VARIABLE_VALUE')
  assert alpha.shape == (1, 2) and not np.array_equal(alpha, [[0.0, 1.0]])
  assert len(results['lasso_alpha']) == 2 and results['endpoint'].startswith('lasso')
  # Results: main classifier at 3x3, each probe on its 9K grid (capped by the map size).
  assert results['grid'] == 3 and results['dims'] == 9 * 128
  assert set(results['probes']) == {'stem', 'block1', 'block3/unit_01'}
  assert results['probes']['stem']['grid'] == 14  # 33 by the 9K rule, but the map is 14x14.
  assert results['probes']['block3/unit_01'] == dict(results['probes']['block3/unit_01'], grid=4, dims=4 * 4 * 128)
  for scores in [results] + list(results['probes'].values()):
    assert 0 <= scores['top1'] <= scores['top5'] <= 1
  assert results['counts']['validation_examples'] == 20 and results['counts']['num_classes'] == 10
  assert results['protocol']['init_source'] == 'ckpt'
  tags = event_tags(os.path.join(tmp_path, 'eval', 'linear'))
  assert {'linear/top1', 'linear/top5', 'linear/loss', 'linear/steps_per_second', 'linear/lasso/alpha_unit_01'} <= tags
  assert {'linear/stem/top1', 'linear/block1/top5', 'linear/block3/unit_01/loss'} <= tags


def test_saved_model_run_writes_results_and_resumes(pretrained, tiny_world, tmp_path):
  trunk = backbone.load_trunk(pretrained['saved_model'], pretrained['trunk_config'])
  sources = tiny_world['sources']
  args = (trunk, str(tmp_path), sources['images_train'], sources['images_validation'])
  first = linear.run_linear(tiny_cfg(steps=2), *args, progress=False)
  path = os.path.join(tmp_path, 'eval', 'linear', 'results.json')
  assert json.load(open(path))['top1'] == pytest.approx(first['top1'])
  assert set(first) >= {'top1', 'top5', 'endpoint', 'grid', 'dims', 'probes', 'protocol', 'counts'}
  assert 0 <= first['top1'] <= first['top5'] <= 1 and first['probes'] == {}
  # A longer run in the same folder continues from step 2.
  second = linear.run_linear(tiny_cfg(steps=4), *args, progress=False)
  assert second['counts']['steps'] == 4
  assert tf.train.latest_checkpoint(os.path.join(tmp_path, 'eval', 'linear', 'checkpoints')).endswith('ckpt-4')
  assert json.load(open(path))['counts']['steps'] == 4


def test_non_finite_loss_names_the_step(pretrained, tiny_world, tmp_path):
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  # NaN in the last block-3 convolution, read raw at `block3`: max pooling (stem) and, in
  # graph mode, the fused BatchNorm-ReLU of `final` turn NaN into numbers.
  kernel = trunk.blocks[2][-1].conv3.kernel
  kernel.assign(tf.fill(kernel.shape, np.nan))
  sources = tiny_world['sources']
  with pytest.raises(FloatingPointError, match='at step 1'):
    linear.run_linear(
      tiny_cfg(num_classes=10, endpoint='block3', feature_norm=False), trunk, str(tmp_path), sources['images_train'],
      sources['images_validation'], progress=False,
    )  # fmt: skip
