"""Evaluations of AlexNet and VGG16 runs: the kind comes from the run, protocols run on it or refuse it by name."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig
from mtssl_tf.evaluation import backbone, linear, protocols, runner
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.export.saved_model import export
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.trunk import alexnet

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

# Tiny widths: AlexNet 1/16 has conv1..conv5 = 6, 16, 24, 24, 16 channels; VGG16 1/16 has 4..32.
WIDTH = 1 / 16


@pytest.fixture(scope='module')
def conv_runs(tmp_path_factory, conv_run):
  runs = {}
  for kind, batch_norm in (('alexnet', False), ('vgg16', True)):
    run_dir = str(tmp_path_factory.mktemp(kind))
    trunk = conv_run(run_dir, kind, width=WIDTH, batch_norm=batch_norm)
    # The trunk's variables by name without the top scope.
    runs[kind] = {'run_dir': run_dir, 'weights': {v.name.split('/', 1)[-1]: v.numpy() for v in trunk.variables}}
  return runs


@pytest.mark.parametrize('kind', ['alexnet', 'vgg16'])
def test_kind_and_weights_come_from_the_run(conv_runs, kind):
  run = conv_runs[kind]
  cfg = load_eval_config([], [], run['run_dir'])  # Nothing but the run is named.
  assert cfg.trunk.kind == kind and getattr(cfg.trunk, kind).width == WIDTH
  trunk = backbone.load_trunk(cfg.init, cfg.trunk)
  assert trunk.kind == kind and len(trunk.variables) == len(run['weights'])
  for v in trunk.variables:
    np.testing.assert_array_equal(v.numpy(), run['weights'][v.name.split('/', 1)[-1]], err_msg=v.name)


def test_a_checkpoint_that_does_not_fit_names_the_run_and_the_kind(conv_runs):
  run_dir = conv_runs['alexnet']['run_dir']
  cfg = load_eval_config([], ['trunk.kind=vgg16'], run_dir)
  with pytest.raises(ValueError, match=r"trunk\.kind='alexnet'.*trunk\.kind='vgg16'"):
    backbone.load_trunk(run_dir, cfg.trunk)
  cfg = load_eval_config([], ['trunk.alexnet.width=0.125'], run_dir)
  with pytest.raises(ValueError, match=rf'{run_dir}.*does not hold a trunk of shape alexnet \(.*width=0\.125'):
    backbone.load_trunk(run_dir, cfg.trunk)


def test_linear_probes_on_an_alexnet_run(conv_runs, tiny_world, tmp_path):
  run_dir = conv_runs['alexnet']['run_dir']
  cfg = load_eval_config([], [], run_dir)
  trunk = backbone.load_trunk(run_dir, cfg.trunk)
  before = {v.name: v.numpy().copy() for v in trunk.variables}
  section = linear.LinearEvalConfig()
  section.image_size, section.crop_size, section.batch_size, section.eval_batch_size = 64, 56, 8, 10
  section.steps, section.log_every_steps, section.checkpoint_every_steps, section.shuffle_buffer = 3, 1, 3, 40
  section.probe_endpoints = ('conv3', 'conv5')
  sources = tiny_world['sources']
  results = linear.run_linear(section, trunk, str(tmp_path), sources['images_train'], sources['images_validation'],
                              init_source=run_dir, progress=False)  # fmt: skip
  assert results['counts']['steps'] == 3 and 0.0 <= results['top1'] <= results['top5'] <= 1.0
  # 'final' is pool5 pooled to 3x3 (Doersch's grid); conv3 (3x3 at a 56 px crop) fits the 9K rule whole.
  assert results['endpoint'] == 'final' and results['dims'] == 3 * 3 * trunk.output_channels
  assert set(results['probes']) == {'conv3', 'conv5'}
  assert results['probes']['conv3']['dims'] == 3 * 3 * alexnet.scaled(384, WIDTH)
  for v in trunk.variables:  # Frozen: nothing moved, LRN / no BatchNorm statistics either.
    np.testing.assert_array_equal(v.numpy(), before[v.name], err_msg=v.name)
  section.use_lasso = True
  with pytest.raises(ConfigError, match=r"linear\.use_lasso.*'resnet_v2'.*trunk\.kind is 'alexnet'"):
    linear.run_linear(section, trunk, str(tmp_path / 'lasso'), sources['images_train'], sources['images_validation'])


def test_voc07_classification_fine_tunes_a_vgg16_run(conv_runs, tiny_world, tmp_path):
  sources = tiny_world['sources']
  overrides = [
    f'voc07_cls.train_source={sources["detection_trainval"]}',
    f'voc07_cls.test_source={sources["detection_test"]}',
    'voc07_cls.crop_size=48',
    'voc07_cls.batch_size=4',
    'voc07_cls.test_views=2',
    'voc07_cls.steps=2',
    'voc07_cls.log_every_steps=2',
    'voc07_cls.checkpoint_every_steps=2',
  ]
  cfg = load_eval_config([], overrides, conv_runs['vgg16']['run_dir'])
  results = runner.run('voc07_cls', cfg, str(tmp_path))
  assert results['counts']['steps'] == 2 and 0.0 <= results['mAP'] <= 1.0


def test_voc07_classification_puts_an_alexnet_runs_convs_into_the_standard_alexnet(conv_runs, tiny_world):
  """Noroozi §5: conv1..conv5 of the pretext AlexNet copied into a stride-4 AlexNet, fc6/fc7/fc8 new."""
  from mtssl_tf.evaluation import voc_classification as vc

  run_dir = conv_runs['alexnet']['run_dir']
  cfg = load_eval_config([], ['voc07_cls.crop_size=64', 'voc07_cls.fc_units=64'], run_dir)
  model, description = vc.build_classifier(runner.context('voc07_cls', cfg, run_dir, progress=False))
  assert 'AlexNet trunk' in description and 'new fc6/fc7/fc8' in description
  assert model.net.spec.conv1_stride == 4  # The standard AlexNet, whatever the run's variant.
  weights = conv_runs['alexnet']['weights']
  for conv in ('conv1', 'conv3', 'conv5'):
    np.testing.assert_array_equal(model.net.convs[conv].kernel.numpy(), weights[f'alexnet/{conv}/kernel:0'], conv)
  logits = model(tf.zeros([2, 64, 64, 3], tf.uint8), training=False)
  assert logits.shape == (2, cfg.voc07_cls.num_classes)
  cfg = load_eval_config([], ['voc07_cls.crop_size=64', 'voc07_cls.copy_fc=true'], run_dir)
  with pytest.raises(ConfigError, match='copy_fc'):
    vc.build_classifier(runner.context('voc07_cls', cfg, run_dir, progress=False))


def test_a_vgg16_export_beside_its_run_loads_the_same_weights(conv_runs, tmp_path):
  run = conv_runs['vgg16']
  cfg = load_eval_config([], [], run['run_dir'])
  model = MultiTaskModel(cfg.trunk, {}, LassoConfig())
  model.trunk(tf.zeros([1, 64, 64, 3]), training=False)
  tf.train.Checkpoint(model=model).read(os.path.join(run['run_dir'], 'checkpoints', 'ckpt-1')).expect_partial()
  saved = export(model, os.path.join(run['run_dir'], 'saved_model'), image_size=64)
  trunk = backbone.load_trunk(saved, load_eval_config([], [], saved).trunk)  # The kind from the run's config.yaml.
  assert trunk.kind == 'vgg16'
  for v in trunk.variables:
    np.testing.assert_array_equal(v.numpy(), run['weights'][v.name.split('/', 1)[-1]], err_msg=v.name)


def test_knn_on_an_alexnet_conv_endpoint(conv_runs, tiny_world, tmp_path):
  sources = tiny_world['sources']
  overrides = [f'knn.train_source={sources["images_train"]}', f'knn.test_source={sources["images_validation"]}',
               'knn.image_size=64', 'knn.crop_size=64', 'knn.k=[5]', 'knn.batch_size=20',
               'knn.endpoint=conv5']  # fmt: skip
  cfg = load_eval_config([], overrides, conv_runs['alexnet']['run_dir'])
  results = runner.run('knn', cfg, str(tmp_path))
  assert 0.0 <= results['top1_k5'] <= 1.0


@pytest.mark.parametrize('protocol', ['depth', 'supervised'])  # detection runs on conv trunks too.
def test_resnet_only_protocols_refuse_a_conv_trunk_by_name(conv_runs, protocol, tmp_path):
  fields = protocols.protocol_class(protocol).source_fields
  cfg = load_eval_config([], [f'{protocol}.{f}=unused' for f in fields], conv_runs['vgg16']['run_dir'])
  with pytest.raises(ConfigError, match=rf"^{protocol}: needs a trunk of kind 'resnet_v2'.*trunk\.kind is 'vgg16'"):
    runner.run(protocol, cfg, str(tmp_path))
