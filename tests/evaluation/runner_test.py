"""mtssl-eval: config resolution (run trunk, init errors) and the binary end to end."""

import json
import subprocess
import sys

import pytest

from mtssl_tf.configs import ConfigError
from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation.config import load_eval_config, run_preprocessing


def test_init_run_supplies_the_trunk_shape(pretrained, tmp_path):
  cfg = load_eval_config(init=pretrained['run_dir'])
  assert cfg.init == pretrained['run_dir'] and cfg.trunk.width == 8 and tuple(cfg.trunk.units_per_block) == (1, 1, 2)
  assert run_preprocessing(cfg) == 'rgb'  # The run's tasks do not harmonize.
  # Files and overrides still win over the run's trunk section.
  yaml_file = tmp_path / 'e.yaml'
  yaml_file.write_text(f'init: {pretrained["saved_model"]}\nlinear:\n  steps: 7\n')
  cfg = load_eval_config([str(yaml_file)], ['trunk.width=16'])
  assert cfg.trunk.width == 16 and cfg.linear.steps == 7 and cfg.init == pretrained['saved_model']
  assert load_eval_config().trunk.width == 64  # Random init: the ResNet-101 default.


@pytest.mark.parametrize(
  'overrides, init, message',
  [
    (['linear.stepz=3'], '', 'linear.stepz'),
    (['preprocessing=lab'], '', 'preprocessing'),
    ([], '/no/such/run', "init: init source '/no/such/run'"),
  ],
)
def test_bad_eval_configs_are_named(overrides, init, message):
  with pytest.raises(ConfigError, match=message):
    load_eval_config([], overrides, init)


def test_binary_runs_linear_from_a_run_dir(pretrained, tiny_world, tmp_path):
  world = tiny_world['sources']
  out = tmp_path / 'out'
  cmd = [
    sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--eval=linear', f'--init={pretrained["run_dir"]}',
    f'--model_dir={out}', f'--override=linear.train_source={world["images_train"]}',
    f'--override=linear.validation_source={world["images_validation"]}',
    *[f'--override=linear.{k}' for k in ('steps=3', 'batch_size=4', 'image_size=64', 'crop_size=56')],
  ]  # fmt: skip
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / 'eval' / 'linear' / 'results.json').read_text())
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  assert (out / 'eval' / 'linear' / 'eval_config.yaml').exists()
  assert '"top1"' in result.stdout and 'results:' in result.stdout
  bad = subprocess.run(cmd[:4] + ['--init=/no/such/run'], capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and '/no/such/run' in bad.stderr


def test_headline_picks_the_protocol_numbers():
  assert runner.headline('depth', {'metrics': {'delta1': 0.5, 'rms': 1.0}, 'x': 1}) == {'delta1': 0.5, 'rms': 1.0}
  assert runner.headline('linear', {'top1': 0.1, 'top5': 0.4, 'probes': {}}) == {'top1': 0.1, 'top5': 0.4}
