"""Which tasks run on which trunk kinds (issue 16): config errors, head choices, shipped configs."""

import glob
import os

import pytest
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError, load_config, override, validate_all
from mtssl_tf.tasks import build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.experiment import ExperimentConfig

CONFIGS = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'pretext')


def _config(trunk, tasks, **more):
  cfg = ExperimentConfig()
  override(cfg, {'trunk': trunk, 'tasks': tasks, **more})
  return cfg


ALEXNET = {'kind': 'alexnet', 'alexnet': {'width': 1 / 16}}


@pytest.mark.parametrize(
  'trunk,tasks,more,message',
  [
    # Lasso mixes ResNet-v2 block-3 units.
    (ALEXNET, {'relative_position': {'enabled': True}}, {'lasso': {'enabled': True}},
     r"lasso\.enabled.*trunk\.kind 'alexnet'"),
    # Dense labels at stride 8: AlexNet's pool5 has stride 32.
    (ALEXNET, {'colorization': {'enabled': True}}, {}, r"tasks\.colorization.*trunk\.kind 'alexnet'.*output_stride"),
    # Stride 8 at conv5 of the tile variant, but unpadded convs: 64 px -> 6 px, not 8.
    ({'kind': 'alexnet', 'alexnet': {'variant': 'jigsaw', 'final_endpoint': 'conv5'}},
     {'motion_segmentation': {'enabled': True, 'crop_size': 64}}, {}, r'tasks\.motion_segmentation.*not the 8 px'),
    # 16 px tiles never reach AlexNet's pool5.
    (ALEXNET, {'jigsaw': {'enabled': True, 'resize_side': 48, 'crop_size': 48, 'tile_size': 14}}, {},
     r"tasks\.jigsaw.*trunk\.kind 'alexnet'.*too small"),
    # CaffeNet's AlexNet needs 55 px to reach pool5.
    (ALEXNET, {'exemplar': {'enabled': True}}, {'knn': {'enabled': True, 'image_size': 48}},
     r"knn\.image_size.*'alexnet'"),
  ],
)  # fmt: skip
def test_pairings_that_cannot_work_are_config_errors(trunk, tasks, more, message):
  cfg = _config(trunk, tasks, **more)
  with pytest.raises(ConfigError, match=message):
    validate_all(cfg)


def test_dense_task_runs_where_the_shapes_work_out():
  # VGG16's padded convs: conv4_3 is exactly 1/8 of the input, colorization's label grid.
  cfg = _config({'kind': 'vgg16', 'vgg16': {'width': 1 / 16, 'final_endpoint': 'conv4_3'}},
                {'colorization': {'enabled': True, 'crop_size': 32, 'hidden_units': 8, 'batch_size': 1}})  # fmt: skip
  validate_all(cfg)
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso, 'float32')
  features, _ = model.features('colorization', tf.zeros([1, 32, 32, 3]), training=False)
  logits = model.heads['colorization'](features)
  assert logits.shape[1:3] == (4, 4)  # crop_size / 8.


def _head(kind, task, **task_config):
  trunk = {'kind': kind, 'units_per_block': [1, 1, 2], 'width': 8}
  if kind != 'resnet_v2':
    trunk[kind] = {'width': 1 / 16}
  cfg = _config(trunk, {task: {'enabled': True, **task_config}})
  validate_all(cfg)
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)
  return tasks[task], tasks[task].build_head()


def test_jigsaw_head_is_the_prototxt_network_on_conv_trunks():
  small = dict(permutation_set='noroozi100', num_permutations=4, hidden_units=8)
  task, head = _head('alexnet', 'jigsaw', **small)
  assert task.head_layout == 'cfn' and head.reduce is None  # pool5 flattened straight into fc6.
  assert head.tile_fc.units == 1024  # train_val_cfn_jps++.prototxt fc6_s1.
  task, head = _head('resnet_v2', 'jigsaw', **small)
  assert task.head_layout == 'reduced' and head.reduce is not None and head.tile_fc.units == 512
  _, head = _head('vgg16', 'jigsaw', head_init='prototxt', **small)
  head(tf.zeros([9, 2, 2, 32]))
  assert float(tf.reduce_mean(head.tile_fc.bias)) == 1.0  # The prototxt's fc6 bias filler.


def test_relative_position_head_uses_the_conv_trunks_own_pool5():
  _, head = _head('vgg16', 'relative_position', hidden_units=8)
  assert head.pool is None
  _, head = _head('resnet_v2', 'relative_position', hidden_units=8)
  assert head.pool is not None  # deepcontext's pool5 on block 3's map.


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIGS, '*_alexnet*.yaml')) +
                                        glob.glob(os.path.join(CONFIGS, '*_vgg16*.yaml'))))  # fmt: skip
def test_shipped_conv_trunk_configs_validate(path):
  cfg = load_config(ExperimentConfig, [path])
  assert cfg.trunk.kind in ('alexnet', 'vgg16')
  assert [name for name in ('jigsaw', 'relative_position') if getattr(cfg.tasks, name).enabled]
