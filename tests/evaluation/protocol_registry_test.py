"""A new protocol is one module + one registry line: config section, runner, tables, grid and --help follow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mtssl_tf.configs import ConfigError
from mtssl_tf.evaluation import protocols, results_table, runner
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.grid import spec

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = 'toy_protocol:FeatureNormProtocol'


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.syspath_prepend(HERE)
  protocols.register('feature_norm', TOY)  # The one registry line.
  yield
  protocols.unregister('feature_norm')


def test_toy_protocol_runs_and_reaches_the_tables_and_the_grid(toy, pretrained, tiny_world, tmp_path):
  yaml_file = tmp_path / 'feature_norm.yaml'
  yaml_file.write_text(f'feature_norm:\n  test_source: {tiny_world["sources"]["images_validation"]}\n  max_images: 3\n')
  cfg = load_eval_config([str(yaml_file)], init=pretrained['run_dir'])
  assert cfg.feature_norm.max_images == 3 and cfg.linear.steps > 0  # Its own section beside the others.
  results = runner.run('feature_norm', cfg, str(tmp_path / 'run'))
  assert results['num_images'] == 3 and np.isfinite(results['mean_norm']) and results['mean_norm'] > 0
  with open(tmp_path / 'run' / 'eval' / 'feature_norm' / 'results.json') as f:
    assert json.load(f)['mean_norm'] == pytest.approx(results['mean_norm'])
  assert runner.headline('feature_norm', results) == {'mean_norm': results['mean_norm']}
  header, rows = results_table.build_rows([('toy', str(tmp_path / 'run'))])
  assert rows[0][header.index('block3 norm')] == f'{results["mean_norm"]:.2f}'
  grid = spec.parse_grid({
    'name': 'g', 'evaluations': {'feature_norm': {}},
    'cells': [{'name': 'rand', 'init': 'random', 'evaluate': ['feature_norm']}],
  })  # fmt: skip
  assert 'feature_norm' in grid.evaluations and grid.cells[0].evaluate == ['feature_norm']


def test_bad_values_and_names_are_errors(toy):
  with pytest.raises(ConfigError, match='feature_norm.max_images'):
    load_eval_config([], ['feature_norm.max_images=0'])
  with pytest.raises(ValueError, match="unknown evaluation 'nope'"):
    protocols.protocol_class('nope')
  protocols.register('wrong_name', TOY)
  try:
    with pytest.raises(ValueError, match="declares name 'feature_norm', registered as 'wrong_name'"):
      protocols.protocol_class('wrong_name')
  finally:
    protocols.unregister('wrong_name')
  with pytest.raises(ValueError, match='already registered'):
    protocols.register('linear', TOY)


def test_plugin_protocol_is_listed_by_mtssl_eval_help():
  env = dict(os.environ, MTSSL_EVAL_PROTOCOLS=f'feature_norm={TOY}',
             PYTHONPATH=os.pathsep.join([HERE, os.environ.get('PYTHONPATH', '')]))  # fmt: skip
  out = subprocess.run([sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--helpfull'], env=env, capture_output=True,
                       text=True, check=False)  # fmt: skip
  assert '|feature_norm>' in out.stdout.replace('\n', '').replace(' ', '') or 'feature_norm' in out.stdout
  bad = dict(env, MTSSL_EVAL_PROTOCOLS='no_class_here')
  out = subprocess.run([sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--help'], env=bad, capture_output=True,
                       text=True, check=False)  # fmt: skip
  assert out.returncode != 0 and 'MTSSL_EVAL_PROTOCOLS' in out.stderr


def test_auto_precision_follows_the_hardware(monkeypatch, tmp_path):
  from mtssl_tf import hardware

  monkeypatch.setattr(hardware, 'gpu_bf16_support', lambda: None)
  cfg = load_eval_config([], ['precision=auto', 'linear.train_source=a', 'linear.validation_source=b'])
  for native, policy in ((False, 'float32'), (True, 'mixed_bfloat16')):
    monkeypatch.setattr(hardware, 'has_native_bf16', lambda native=native: native)
    assert runner.context('linear', cfg, str(tmp_path)).precision == policy
  cfg = load_eval_config([], ['precision=float32', 'linear.train_source=a', 'linear.validation_source=b'])
  assert runner.context('linear', cfg, str(tmp_path)).precision == 'float32'  # An explicit setting wins.
