"""The trunk registry: every kind builds from a config and answers the shared interface."""

import pytest
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError, override, validate_all
from mtssl_tf.configs.experiment import TRUNK_KINDS, TrunkConfig
from mtssl_tf.trunk.registry import TRUNKS, build_trunk


def _config(kind, **section):
  cfg = TrunkConfig(kind=kind, units_per_block=(1, 1, 2), width=8)
  cfg.alexnet.width = cfg.vgg16.width = 1 / 16
  override(cfg, {kind: section} if section else {})
  validate_all(cfg)
  return cfg


def test_registry_and_config_name_the_same_kinds():
  assert tuple(TRUNKS) == TRUNK_KINDS


# (kind, section, input size, final spatial size, stride, channels at width 1/16 or 8)
CASES = [
  ('resnet_v2', {}, 64, 4, None, 128),
  ('alexnet', {}, 227, 6, 32, 16),  # CaffeNet: 227 -> 55 -> 27 -> 13 -> pool5 6; 256/16.
  ('alexnet', {'variant': 'jigsaw'}, 64, 3, 16, 16),  # 64 px tile -> pool5 3x3 (Caffe ceil pooling).
  ('alexnet', {'final_endpoint': 'conv4'}, 227, 13, 16, 24),  # 384/16.
  ('vgg16', {}, 64, 2, 32, 32),  # 512/16.
  ('vgg16', {'final_endpoint': 'conv4_3'}, 64, 8, 8, 32),
]


@pytest.mark.parametrize('kind,section,size,spatial,stride,channels', CASES)
def test_final_endpoint_shape_stride_and_channels(kind, section, size, spatial, stride, channels):
  trunk = build_trunk(_config(kind, **section))
  endpoints = trunk(tf.zeros([2, size, size, 3]), training=False)
  assert endpoints['final'].shape.as_list() == [2, spatial, spatial, channels]
  assert trunk.output_channels == channels
  assert trunk.fixed_stride == stride
  assert trunk.kind == kind
  assert trunk.supports_lasso == (kind == 'resnet_v2')
  assert set(trunk.endpoint_names) <= set(endpoints) | {'final'}


def test_conv_trunks_have_no_fc_layers_and_refuse_lasso():
  trunk = build_trunk(_config('alexnet'))
  trunk(tf.zeros([1, 227, 227, 3]))
  assert not [v.name for v in trunk.variables if '/fc' in v.name]
  with pytest.raises(ValueError, match='lasso'):
    trunk.block3_units({})


def test_mixed_precision_reaches_every_layer():
  cfg = _config('alexnet', variant='jigsaw')
  endpoints = build_trunk(cfg, 'mixed_bfloat16')(tf.zeros([1, 64, 64, 3]))
  assert endpoints['final'].dtype == tf.bfloat16


@pytest.mark.parametrize(
  'values,message',
  [
    ({'kind': 'inception'}, 'trunk.kind'),
    ({'alexnet': {'variant': 'wide'}}, 'alexnet.variant'),
    ({'vgg16': {'final_endpoint': 'fc6'}}, 'vgg16.final_endpoint'),
    ({'alexnet': {'width': 0}}, 'alexnet.width'),
  ],
)
def test_bad_trunk_config_names_the_key(values, message):
  cfg = TrunkConfig()
  override(cfg, values)
  with pytest.raises(ConfigError, match=message):
    validate_all(cfg, 'trunk')
