"""Nonlinear probes (Noroozi Table 6) of a pre-training run's AlexNet trunk: conv layers copied into the
standard AlexNet (any variant, conv1 padding or groups), the prefix frozen, the rest redrawn and trained."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError
from mtssl_tf.evaluation import nonlinear as nl
from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation.config import load_eval_config

WIDTH = 1 / 16


def _alexnet_run(conv_run, run_dir: str, **alexnet) -> dict:
  """A run folder with an AlexNet trunk (conftest's `conv_run`); its conv weights by layer name."""
  trunk = conv_run(run_dir, 'alexnet', seed=5, **dict(width=WIDTH, **alexnet))
  return {conv: [w.copy() for w in trunk.net.convs[conv].get_weights()] for conv in trunk.net.convs}


def _config(sources, run_dir, extra=()):
  overrides = [
    f'nonlinear.train_source={sources["images_train"]}',
    f'nonlinear.validation_source={sources["images_validation"]}',
    *[f'nonlinear.{k}' for k in ('image_size=64', 'crop_size=56', 'batch_size=8', 'eval_batch_size=10', 'steps=2',
                                 'log_every_steps=2', 'fc_units=64', 'learning_rate=0.01')],
    *extra,
  ]  # fmt: skip
  return load_eval_config([], overrides, run_dir)


@pytest.mark.numerics
@pytest.mark.parametrize(
  'choices',
  [dict(variant='jigsaw', batch_norm=True), dict(conv1_padding=5, groups=1, batch_norm=False)],
  ids=['jigsaw_tile_net', 'deepcontext'],
)
def test_a_runs_alexnet_trunk_is_probed(tmp_path, tiny_world, conv_run, choices):
  run_dir = str(tmp_path / 'run')
  weights = _alexnet_run(conv_run, run_dir, **choices)
  cfg = _config(tiny_world['sources'], run_dir, ['nonlinear.freeze_through=[conv2]'])
  ctx = runner.context(nl.NAME, cfg, str(tmp_path), progress=False)
  model, source = nl.build_network(ctx, 'conv2', 10)
  assert 'AlexNet trunk of' in source and 'conv1..conv2 frozen' in source
  net = model.net
  # The standard AlexNet (stride-4 conv1, unpadded) with the trunk's groups: every kernel fits.
  assert net.spec.conv1_stride == 4 and net.conv1_padding == 0 and net.groups == choices.get('groups', 2)
  for conv in ('conv1', 'conv2'):  # Copied exactly, and frozen.
    for got, want in zip(net.convs[conv].get_weights(), weights[conv]):
      np.testing.assert_array_equal(got, want)
  trainable = {id(v) for v in model.trainable_variables}
  assert not any(id(v) in trainable for v in net.convs['conv1'].variables + net.convs['conv2'].variables)
  for name in ('conv3', 'conv5', 'fc6', 'fc7', 'fc8'):  # Drawn afresh with the fillers, and trained.
    kernel = nl._layer(net, name).kernel
    assert id(kernel) in trainable
    if name in weights:
      assert not np.array_equal(kernel.numpy(), weights[name][0])
    # Sample std of >= 10^3 normal draws: within 25% of the filler's (a loose statistical bound).
    assert abs(float(np.std(kernel.numpy())) / nl.FILLERS[name][0] - 1) < 0.25, name
  logits = model(tf.zeros([2, 56, 56, 3], tf.uint8), training=False)
  assert logits.shape == (2, 10) and logits.dtype == tf.float32

  results = runner.run(nl.NAME, cfg, str(tmp_path))
  column = results['layers']['conv2']
  assert column['steps'] == 2 and column['images'] == 20 and 'AlexNet trunk of' in column['network']
  assert 0.0 <= results['conv2_top1'] <= results['conv2_top5'] <= 1.0


def test_fc_columns_and_other_kinds_are_refused_by_name(tmp_path, tiny_world, pretrained, conv_run):
  run_dir = str(tmp_path / 'run')
  _alexnet_run(conv_run, run_dir)
  cfg = _config(tiny_world['sources'], run_dir)
  with pytest.raises(ConfigError, match=r'nonlinear\.freeze_through: fc6 .*AlexNet trunk'):
    nl.build_network(runner.context(nl.NAME, cfg, str(tmp_path), progress=False), 'fc6', 10)
  cfg = _config(tiny_world['sources'], pretrained['run_dir'])  # A ResNet-v2 run.
  with pytest.raises(ConfigError, match=r"AlexNet student.*AlexNet trunk.*trunk\.kind 'resnet_v2'"):
    nl.build_network(runner.context(nl.NAME, cfg, str(tmp_path), progress=False), 'conv1', 10)


def test_a_runs_fc_columns_are_refused_before_any_column_trains(tmp_path, tiny_world, conv_run):
  run_dir = str(tmp_path / 'run')
  _alexnet_run(conv_run, run_dir)
  cfg = _config(tiny_world['sources'], run_dir, ['nonlinear.freeze_through=[conv1,conv5,fc7]'])
  with pytest.raises(ConfigError, match=r"freeze_through: \['fc7'\] .*freeze_through=\[conv1,conv5\]"):
    runner.run(nl.NAME, cfg, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'eval', nl.NAME, 'conv1'))  # Nothing trained.
