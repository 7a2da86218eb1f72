"""Places linear probes (Noroozi Table 5) of networks that are not students: a pre-training run's AlexNet trunk
(the Jigsaw++ row) and a random AlexNet (the Random row), its conv layers read in the standard AlexNet."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError
from mtssl_tf.evaluation import places, runner
from mtssl_tf.evaluation.config import load_eval_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WIDTH = 1 / 16
PROBE = ('steps=2', 'image_size=64', 'crop_size=56', 'batch_size=4', 'eval_batch_size=4')


def _config(tiny_world, init, extra=()):
  root = tiny_world['sources']['images_train'][len('tfrecord:') :].split('/images/')[0]
  overrides = ['world_preset=tiny', f'world_dir={root}', *[f'places_linear.{k}' for k in PROBE], *extra]
  return load_eval_config([os.path.join(REPO, 'configs', 'eval', 'places_linear_tiny.yaml')], overrides, init)


def test_a_runs_jigsaw_trunk_is_probed_in_the_standard_alexnet(tmp_path, tiny_world, conv_run):
  run_dir = str(tmp_path / 'run')
  # The Jigsaw tile AlexNet (stride-2 conv1).
  trunk = conv_run(run_dir, 'alexnet', width=WIDTH, variant='jigsaw', batch_norm=True)
  weights = {conv: [w.copy() for w in trunk.net.convs[conv].get_weights()] for conv in trunk.net.convs}
  cfg = _config(tiny_world, run_dir)
  ctx = runner.context(places.NAME, cfg, run_dir, progress=False)
  net, source = places.trunk_probe_net(ctx, 56)
  assert f'AlexNet trunk of {run_dir} (jigsaw variant' in source
  # The standard AlexNet (stride-4 conv1) holds the tile network's conv layers exactly (a copy of the same bytes).
  assert net.net.spec.conv1_stride == 4 and net.input_size == 56
  for conv in net.probe_endpoints:
    for got, want in zip(net.net.convs[conv].get_weights(), weights[conv]):
      np.testing.assert_array_equal(got, want)
  endpoints = net(net.to_input(tf.zeros([2, 56, 56, 3], tf.uint8)), training=False)
  assert list(endpoints) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
  assert endpoints['conv1'].shape[:3] == (2, 12, 12)  # (56 - 11) // 4 + 1: conv1 at stride 4, unpadded.

  results = runner.run(places.NAME, cfg, run_dir)
  assert 'AlexNet trunk of' in results['protocol']['network'] and results['counts']['steps'] == 2
  assert all(0.0 <= results[f'conv{i}_top1'] <= results[f'conv{i}_top5'] <= 1.0 for i in range(1, 6))


def test_random_alexnet_is_probed(tmp_path, tiny_world):
  extra = ['trunk.kind=alexnet', f'trunk.alexnet.width={WIDTH}', 'trunk.alexnet.batch_norm=true']
  results = runner.run(places.NAME, _config(tiny_world, 'random', extra), str(tmp_path))
  assert results['protocol']['network'].startswith('random AlexNet (standard variant')
  assert set(results['probes']) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}


def test_other_trunks_are_refused_by_name(tmp_path, tiny_world, pretrained):
  cfg = _config(tiny_world, pretrained['run_dir'])  # A ResNet-v2 run.
  with pytest.raises(ConfigError, match=r"AlexNet trunk or 'random'.*trunk\.kind 'resnet_v2'"):
    runner.run(places.NAME, cfg, str(tmp_path))
