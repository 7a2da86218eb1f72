"""Loading an evaluation's trunk from random init, checkpoints and SavedModels, and what input it sees."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, TrunkConfig, override, save_config
from mtssl_tf.evaluation import backbone, linear, runner
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.train.experiment import ExperimentConfig

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


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


def _harmonized_run(pretrained, tmp_path, harmonize: bool = True) -> str:
  """A copy of the pre-trained run whose config says its tasks were harmonized (RP/H + Col) or not."""
  run_dir = str(tmp_path / 'run')
  shutil.copytree(pretrained['run_dir'], run_dir)
  cfg = ExperimentConfig()
  cfg.trunk = pretrained['trunk_config']
  override(cfg, {'tasks': {'relative_position': {'enabled': True, 'harmonize': harmonize},
                           'colorization': {'enabled': True}}})  # fmt: skip
  save_config(cfg, run_dir)
  return run_dir


def test_harmonized_runs_are_evaluated_on_colour_unless_grey_is_asked(pretrained, tmp_path, monkeypatch):
  run_dir = _harmonized_run(pretrained, tmp_path)
  assert backbone.run_input_convention('as_trained', run_dir) == 'harmonized'  # What it was trained on.
  seen = {}

  def spy(protocol, ctx):
    seen['preprocessing'] = ctx.preprocessing
    return {}

  monkeypatch.setattr(linear.LinearProtocol, 'run', spy)
  sources = ['linear.train_source=unused', 'linear.validation_source=unused']  # The spy reads nothing.
  expected = {(): 'rgb', ('preprocessing=harmonized',): 'harmonized', ('preprocessing=as_trained',): 'harmonized'}
  for overrides, mode in expected.items():
    cfg = load_eval_config([], sources + list(overrides), run_dir)
    runner.run('linear', cfg, str(tmp_path / 'out'))
    assert seen['preprocessing'] == mode, overrides  # Doersch §3.3: colour unless asked.
  # A run that did not harmonize is colour whichever way it is resolved.
  assert backbone.run_input_convention('as_trained', _harmonized_run(pretrained, tmp_path / 'b', False)) == 'rgb'
  with pytest.raises(ConfigError, match='preprocessing'):
    load_eval_config([], ['preprocessing=auto'], run_dir)


def test_colour_input_is_colour_on_the_scale_of_the_harmonized_grey():
  rng = np.random.default_rng(0)
  colour = tf.constant(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
  rgb = backbone.input_fn('rgb')(colour).numpy()
  grey = backbone.input_fn('harmonized')(colour).numpy()
  assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0.5  # Colour reaches the trunk...
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # ...L replicated does not.
  # On grey pixels the two inputs nearly agree, so a trunk trained on replicated L sees
  # colour on the scale it learnt: sRGB / 127.5 - 1 and L / 50 - 1 are both perceptual
  # curves onto [-1, 1]; they differ most at mid grey (measured 0.068 at level 128).
  levels = tf.constant(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None, None])
  rgb, grey = (backbone.input_fn(m)(levels).numpy() for m in ('rgb', 'harmonized'))
  assert rgb.min() == grey.min() == -1.0 and rgb.max() == pytest.approx(1.0) and grey.max() == pytest.approx(1.0)
  assert np.abs(rgb - grey).max() < 0.075
  with pytest.raises(ValueError, match='preprocessing'):
    backbone.run_input_convention('auto', 'random')
