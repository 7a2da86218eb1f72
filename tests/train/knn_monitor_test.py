"""The kNN monitor inside a real pre-training run: scalars in the run's events, served by a real TensorBoard."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import tensorflow as tf

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.train import knn, launch
from mtssl_tf.train.experiment import ExperimentConfig

TENSORBOARD = str(Path(sys.executable).with_name('tensorboard'))
TAGS = ('knn/top1_k5', 'knn/top5_k5', 'knn/top1_k20', 'knn/top5_k20')


@pytest.fixture(scope='module')
def monitored_run(tmp_path_factory):
  """A tiny two-task pre-training run on the tiny world with the monitor on at every tick (cost tick 4)."""
  world = str(tmp_path_factory.mktemp('world'))
  model_dir = str(tmp_path_factory.mktemp('run'))
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},
    'tasks': {
      'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                                max_area=4096, min_downsample=4, hidden_units=16),
      'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16),
    },
    'train': dict(total_steps=12, world_preset='tiny', world_dir=world, cost_tick=4.0, export=False),
    'knn': dict(enabled=True, bank_size=40, query_size=20, batch_size=20, k=[5, 20]),
  })  # fmt: skip
  validate_all(cfg)
  path = save_config(cfg, model_dir, 'input.yaml')
  launch.supervise_local(cfg, model_dir, [f'--config={path}'], 0)
  return model_dir


def _event_steps(folder):
  steps = {}
  for path in tf.io.gfile.glob(os.path.join(folder, 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(event.step)
  return steps


def test_knn_scalars_in_the_run_events(monitored_run):
  ticks = knn.read_ticks(monitored_run)
  # Cost 1 per step, a tick every 4: ticks 1-3 by step 12, one checkpoint (and one kNN) per update that crosses
  # any (an update of several steps may cross two).
  assert len(ticks) >= 2 and ticks[-1]['tick'] == 3 and ticks[-1]['step'] == 12
  assert [t['tick'] for t in ticks] == sorted({t['tick'] for t in ticks})
  steps = _event_steps(os.path.join(monitored_run, 'knn'))
  for tag in TAGS:
    assert steps[tag] == [t['step'] for t in ticks]
  assert all(os.path.exists(t['checkpoint'] + '.index') for t in ticks)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(port, path):
  with urllib.request.urlopen(f'http://127.0.0.1:{port}{path}', timeout=5) as response:
    return json.loads(response.read())


def test_tensorboard_serves_the_knn_scalars(monitored_run):
  port = _free_port()
  server = subprocess.Popen(
    [TENSORBOARD, f'--logdir={monitored_run}', '--host=127.0.0.1', f'--port={port}', '--load_fast=false'],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  try:
    tag = urllib.parse.quote('knn/top1_k20', safe='')
    points, deadline = None, time.time() + 120
    while time.time() < deadline:  # The server starts, then loads the event files.
      try:
        points = _get(port, f'/data/plugin/scalars/scalars?run=knn&tag={tag}')
        if len(points) == len(knn.read_ticks(monitored_run)):
          break
      except OSError:  # Not listening yet, or the run is not loaded (HTTP 400).
        pass
      time.sleep(1)
    ticks = knn.read_ticks(monitored_run)
    assert points is not None and [p[1] for p in points] == [t['step'] for t in ticks]
    assert [p[2] for p in points] == pytest.approx([t['top1_k20'] for t in ticks])
    assert set(TAGS) <= set(_get(port, '/data/plugin/scalars/tags')['knn'])
  finally:
    server.terminate()
    server.wait(timeout=30)
