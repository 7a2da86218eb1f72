"""Undecodable inputs are skipped, counted and named on the console and in train_result.json.

A real `mtssl-train` run on the local cluster reads a folder that holds the usual bad
files (issue 18, item 3): a zero-byte file, truncated JPEG and PNG, and text with an
image extension. The run must train to the end and say which files it skipped and why.
"""

import json
import subprocess
import sys
from pathlib import Path

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.data.synthetic.classification import write_image_folder
from mtssl_tf.train.experiment import ExperimentConfig

_BIN = Path(sys.executable).parent


def _bad_folder(root: Path):
  write_image_folder(str(root), 12, size=64, num_classes=2)
  good_jpeg = next(root.rglob('*.jpg')).read_bytes()
  good_png = next(root.rglob('*.png')).read_bytes()
  bad = {
    'zero.jpg': (b'', 'empty file'),
    'cut.jpg': (good_jpeg[: len(good_jpeg) // 2], 'truncated JPEG'),
    'cut.png': (good_png[: len(good_png) // 2], 'truncated PNG'),
    'notes.jpg': (b'these are my notes, not a picture', 'not an image'),
  }
  for name, (data, _) in bad.items():
    (root / 'circle' / name).write_bytes(data)
  return {str(root / 'circle' / name): reason for name, (_, reason) in bad.items()}


def test_bad_files_train_to_the_end_and_are_named(tmp_path):
  bad = _bad_folder(tmp_path / 'images')
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {
      'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                                max_area=4096, min_downsample=4, hidden_units=16,
                                data={'source': f'folder:{tmp_path / "images"}', 'shuffle_buffer': 0}),
    },
    # 16 files, 4 of them bad: 12 steps of 4 read every file about three times.
    'train': dict(total_steps=12, world_preset='tiny', world_dir=str(tmp_path / 'world'), export=False,
                  log_every_seconds=1.0),
  })  # fmt: skip
  validate_all(cfg)
  config = save_config(cfg, str(tmp_path), 'input.yaml')
  run = tmp_path / 'run'
  proc = subprocess.run(
    [str(_BIN / 'mtssl-train'), f'--config={config}', f'--model_dir={run}', '--export=false'],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stdout[-3000:]
  result = json.loads((run / 'train_result.json').read_text())['relative_position']
  assert result['steps'] == 12
  # Every pass over the folder skips the four bad files again; each is named once, with its reason.
  assert result['skipped_examples'] >= 4
  named = {s.split(': ', 1)[0]: s.split(': ', 1)[1] for s in result['skipped_sources']}
  assert set(named) == set(bad)
  assert all(named[path].startswith(reason) for path, reason in bad.items())
  # The console names them too (the coordinator logs each once) and shows the count.
  for path in bad:
    assert proc.stdout.count(f'skipped {path}: ') == 1, proc.stdout[-3000:]
  assert 'skipped_examples' in proc.stdout
