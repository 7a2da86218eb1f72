"""`mtssl-train` and `mtssl-export` consoles carry no TensorFlow warnings (issue 18, item 4).

A real run on the local cluster: eight steps with a compute tick at every step, so the
coordinator saves at least eight checkpoints (TF 2.15's eager multi-device save warned
about retracing from the fifth save on; checkpointing.py), then the export.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.train.experiment import ExperimentConfig

# TF's Python warnings (its own handler and absl's), C++ warnings, the messages the saves
# and exports used to print, TF's duplicated or internal INFO lines, gRPC errors and
# third-party import warnings.
_TF_NOISE = re.compile(
  r'WARNING:tensorflow|^W\d{4} |^\S+ \S+: W |retracing|untraced|triggered tf\.function|'
  r'Skipping full serialization|will be renamed|INFO:tensorflow|default session config|'
  r'ClusterCoordinator|Failed to remove function|GRPC|Warning: ',
  re.M,
)
_BIN = Path(sys.executable).parent


def _noise(console: str):
  return [line for line in console.splitlines() if _TF_NOISE.search(line)]


def test_train_and_export_consoles_have_no_tensorflow_warnings(tmp_path):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {
      'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                                max_area=4096, min_downsample=4, hidden_units=16),
      'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16),
    },
    'train': dict(total_steps=8, world_preset='tiny', world_dir=str(tmp_path / 'world'), cost_tick=1.0),
  })  # fmt: skip
  validate_all(cfg)
  config = save_config(cfg, str(tmp_path), 'input.yaml')
  run = tmp_path / 'run'
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}  # The binaries' own default.
  train = subprocess.run(
    [str(_BIN / 'mtssl-train'), f'--config={config}', f'--model_dir={run}'],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env,
  )  # fmt: skip
  assert train.returncode == 0, train.stdout[-3000:]
  assert len(list((run / 'ticks').glob('tick-*.index'))) >= 6  # Enough saves for TF's retracing warning.
  assert 'SavedModel:' in train.stdout and 'step 8/8' in train.stdout
  assert _noise(train.stdout) == []

  export = subprocess.run(
    [str(_BIN / 'mtssl-export'), f'--model_dir={run}', f'--export_dir={tmp_path / "exported"}'],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env,
  )  # fmt: skip
  assert export.returncode == 0, export.stdout[-3000:]
  assert _noise(export.stdout) == []
