"""Loading an evaluation's trunk from random init, checkpoints and SavedModels."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import TrunkConfig
from mtssl_tf.evaluation import backbone


@pytest.mark.parametrize('which', ['checkpoint', 'saved_model', 'run_dir', 'checkpoints_folder'])
def test_trunk_weights_come_from_every_kind_of_source(pretrained, which):
  source = {
    'checkpoint': pretrained['checkpoint'],
    'saved_model': pretrained['saved_model'],
    'run_dir': pretrained['run_dir'],
    'checkpoints_folder': pretrained['run_dir'] + '/checkpoints',
  }[which]
  trunk = backbone.load_trunk(source, pretrained['trunk_config'])
  assert len(trunk.variables) == len(pretrained['weights'])
  for v in trunk.variables:
    np.testing.assert_array_equal(v.numpy(), pretrained['weights'][v.name], err_msg=v.name)


def test_random_init_differs_and_runs(pretrained):
  trunk = backbone.load_trunk('random', pretrained['trunk_config'])
  kernel = [v for v in trunk.variables if 'conv1_conv/kernel' in v.name][0]
  assert not np.allclose(kernel.numpy(), pretrained['weights'][kernel.name])
  out = trunk(backbone.input_fn('rgb')(tf.zeros([1, 64, 64, 3], tf.uint8)))['final']
  assert out.shape == (1, 4, 4, 128)


def test_mismatched_shape_and_missing_source_are_clear_errors(pretrained, tmp_path):
  wider = TrunkConfig()
  wider.units_per_block = (1, 1, 2)
  wider.width = 16
  with pytest.raises(ValueError, match='does not hold a trunk of shape'):
    backbone.load_trunk(pretrained['checkpoint'], wider)
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    backbone.load_trunk(str(tmp_path), wider)
  assert backbone.run_trunk_config(pretrained['checkpoint'])['width'] == 8
  assert backbone.run_trunk_config('random') == {}


def test_results_are_written_as_json(tmp_path):
  path = backbone.write_results(str(tmp_path), 'linear', {'top1': np.float32(0.5), 'n': 3})
  assert path.endswith('eval/linear/results.json') and json.load(open(path)) == {'n': 3, 'top1': 0.5}
