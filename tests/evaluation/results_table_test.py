"""results_table: results JSONs -> the paper's table layout."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from mtssl_tf.evaluation import results_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(run_dir, name, results):
  os.makedirs(os.path.join(run_dir, 'eval', name), exist_ok=True)
  with open(os.path.join(run_dir, 'eval', name, 'results.json'), 'w') as f:
    json.dump(results, f)


@pytest.fixture
def runs(tmp_path):
  rp = str(tmp_path / 'rp')
  _write(rp, 'linear', {'top1': 0.25, 'top5': 0.6})
  _write(
    rp, 'detection', {'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point': 0.5, 'PascalBoxes_Precision/mAP@0.5IOU': 0.52}
  )
  _write(rp, 'depth', {'metrics': {'delta1': 0.7, 'abs_rel': 0.2, 'rms': 0.9}})
  random = str(tmp_path / 'random')
  _write(random, 'linear', {'top1': 0.1, 'top5': 0.3})
  return rp, random


def test_rows_carry_our_numbers_and_the_papers(runs):
  rp, random = runs
  header, rows = results_table.build_rows(results_table.parse_run_args([f'RP={rp}', random]))
  assert header[:2] == ['Pre-training', 'ImageNet top-5 (%)']
  assert rows[0][:4] == ['RP', '60.00 [59.21]', '25.00', '50.00 [66.75]']
  assert rows[0][header.index('NYU delta<1.25 (%)')] == '70.00 [80.54]'
  assert rows[0][header.index('NYU rms (m)')] == '0.90'
  assert rows[0][header.index('VOC07 mAP@0.75 11-pt (%)')] == ''  # Not in that results file.
  assert rows[1][0] == 'random' and rows[1][1] == '30.00' and rows[1][3] == ''
  parsed = list(csv.reader(io.StringIO(results_table.to_csv(header, rows))))
  assert parsed[0] == header and parsed[2][1] == '30.00'
  markdown = results_table.to_markdown(header, rows)
  assert '| RP | 60.00 [59.21] |' in markdown and 'Table 2' in markdown


def test_missing_run_and_bad_json_are_named(tmp_path):
  with pytest.raises(ValueError, match='nowhere'):
    results_table.parse_run_args([str(tmp_path / 'nowhere')])
  bad = tmp_path / 'bad' / 'eval' / 'linear'
  bad.mkdir(parents=True)
  (bad / 'results.json').write_text('{not json')
  with pytest.raises(ValueError, match='results.json'):
    results_table.build_rows([('bad', str(tmp_path / 'bad'))])


def test_tool_writes_markdown_and_csv(runs, tmp_path):
  rp, _ = runs
  md, table = tmp_path / 't.md', tmp_path / 't.csv'
  cmd = [
    sys.executable,
    os.path.join(ROOT, 'tools', 'results_table.py'),
    f'RP={rp}',
    f'--markdown={md}',
    f'--csv={table}',
  ]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '60.00 [59.21]' in md.read_text() and table.read_text().startswith('Pre-training,')
