"""mtssl-summary end to end, as a user runs it (a subprocess with flags)."""

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  return subprocess.run(
    [sys.executable, '-m', 'mtssl_tf.bin.summary', *args], cwd=ROOT, capture_output=True, text=True, timeout=300
  )


def test_summary_prints_endpoints_and_writes_resolved_config(tmp_path):
  result = _run('--config=configs/trunk/tiny.yaml', '--override=trunk.output_stride=8', f'--model_dir={tmp_path}')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'output stride 8' in out
  assert 'block3/unit_02   (2, 16, 16, 256)' in out
  assert 'parameters: 199,808' in out
  saved = yaml.safe_load((tmp_path / 'config.yaml').read_text())
  assert saved['trunk']['output_stride'] == 8 and saved['trunk']['units_per_block'] == [1, 1, 2]


def test_summary_rejects_a_bad_key_before_building():
  result = _run('--config=configs/trunk/tiny.yaml', '--override=trunk.output_strid=8')
  assert result.returncode != 0
  assert "unknown config key 'trunk.output_strid'; did you mean 'trunk.output_stride'" in result.stderr
  assert 'endpoints' not in result.stdout
