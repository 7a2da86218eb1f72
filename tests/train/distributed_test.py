"""ParameterServerStrategy pre-training with real server processes on 127.0.0.1.

The test process never connects to a cluster itself (that would change its eager
context for the other tests): runs go through the local supervisor, which starts the
servers and the coordinator as subprocesses; results are read from the files a run
writes (train_result.json, checkpoints, events).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from cluster_runs import checkpoint_values, expected_updates, supervised_run, two_task_config

from mtssl_tf.configs import override, save_config
from mtssl_tf.train import launch

SAVED_MODEL_CLI = str(__import__('pathlib').Path(sys.executable).with_name('saved_model_cli'))


@pytest.fixture(scope='module')
def hybrid_run(tmp_path_factory):
  world = str(tmp_path_factory.mktemp('world'))
  model_dir = tmp_path_factory.mktemp('hybrid')
  cfg = two_task_config(world, num_ps=2)  # Variables are spread over two parameter servers.
  result = supervised_run(cfg, model_dir)
  return cfg, str(model_dir), result


def test_hybrid_aggregation_counts_cost_and_ticks(hybrid_run):
  cfg, model_dir, result = hybrid_run
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 24 and min(steps.values()) > 0
  assert result['relative_position']['updates'] == expected_updates(steps['relative_position'], 3)
  assert result['exemplar']['updates'] == steps['exemplar']  # K = 1.
  # Parameter-server accumulation: one closure per step, each writing its own slot.
  assert {n: r['closures'] for n, r in result.items()} == steps
  values = checkpoint_values(model_dir)
  cost_steps = {n: int(v) for k, v in values.items() for n in steps if k.startswith(f'cost/steps/{n}')}
  assert cost_steps == steps
  # Compute ticks: a checkpoint each time cost (1 per RP step, 0.5 per exemplar step) crosses 5.
  total_cost = steps['relative_position'] + 0.5 * steps['exemplar']
  ticks = [f for f in os.listdir(os.path.join(model_dir, 'ticks')) if f.endswith('.index')]
  assert len(ticks) == int(total_cost // 5)


def test_per_task_rmsprop_slots_differ_and_restore_exactly(hybrid_run):
  cfg, model_dir, _ = hybrid_run
  values = checkpoint_values(model_dir)
  ms = {k: v for k, v in values.items() if '/mean_square/' in k and '.ATTRIBUTES' in k}
  rp = sorted(k for k in ms if '/mean_square/relative_position/' in k)
  ex = sorted(k for k in ms if '/mean_square/exemplar/' in k)
  assert rp and ex
  # The first trunk variable's slots: both tasks trained it, with their own statistics.
  assert not np.allclose(ms[rp[0]], ms[ex[0]])
  assert not np.allclose(ms[rp[0]], 1.0)  # TF1 variant starts at 1 and has moved.
  # Restoring into a fresh (non-distributed) trainer's objects gives the same numbers.
  from mtssl_tf.tasks import build_tasks
  from mtssl_tf.tasks.multitask import MultiTaskModel
  from mtssl_tf.train.rmsprop import PerTaskRMSProp

  tasks = build_tasks(cfg.tasks, 16)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso)
  prepared = launch.prepare(cfg)
  from mtssl_tf.data.images import ReadOptions

  model.build_all({n: next(iter(t.dataset(ReadOptions(), prepared.sources[n]))) for n, t in tasks.items()})
  optimizer = PerTaskRMSProp({n: model.task_variables(n) for n in tasks})
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
    tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  ).expect_partial().assert_existing_objects_matched()
  first = model.trunk.trainable_variables[0]
  np.testing.assert_array_equal(optimizer.slots('relative_position', first)[0].numpy(), ms[rp[0]])
  np.testing.assert_array_equal(optimizer.slots('exemplar', first)[0].numpy(), ms[ex[0]])


def test_resume_continues_step_and_cost_counters(hybrid_run, tmp_path):
  cfg, model_dir, first = hybrid_run
  copy = tmp_path / 'resumed'
  subprocess.run(['cp', '-r', model_dir, str(copy)], check=True)
  cfg.train.total_steps = 30
  result = supervised_run(cfg, copy)
  cfg.train.total_steps = 24
  assert sum(r['steps'] for r in result.values()) == 30
  for name in result:
    assert result[name]['steps'] >= first[name]['steps']


def test_tensorboard_serves_task_scalars(hybrid_run):
  _, model_dir, _ = hybrid_run
  from mtssl_tf.distribute.cluster import free_port

  port = free_port()
  board = subprocess.Popen(
    [str(__import__('pathlib').Path(sys.executable).with_name('tensorboard')), f'--logdir={model_dir}',
     '--host=127.0.0.1', f'--port={port}', '--load_fast=false'],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  try:
    import urllib.request

    url = f'http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=train&tag=relative_position%2Floss'
    data = None
    for _ in range(120):  # Bounded: at most ~60 s for start-up and the first load.
      try:
        with urllib.request.urlopen(url, timeout=2) as response:
          data = json.loads(response.read())
        if data:
          break
      except OSError:
        pass
      time.sleep(0.5)
    assert data, 'tensorboard never served relative_position/loss'
    assert all(np.isfinite(point[2]) for point in data)
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/data/plugin/scalars/tags', timeout=5) as response:
      tags = json.loads(response.read())['train']
    assert {'exemplar/loss', 'exemplar/triplet_accuracy', 'relative_position/accuracy', 'train/cost'} <= set(tags)
  finally:
    board.kill()
    board.wait()


def test_export_from_the_run_lists_signatures(hybrid_run, tmp_path):
  cfg, model_dir, _ = hybrid_run
  path = launch.export_latest(cfg, model_dir, str(tmp_path / 'export'))
  shown = subprocess.run(
    [SAVED_MODEL_CLI, 'show', '--dir', path, '--tag_set', 'serve'], capture_output=True, text=True, check=True
  ).stdout
  assert 'final' in shown and 'block3_units' in shown
  out = tf.saved_model.load(path).signatures['final'](images=tf.zeros([1, 50, 70, 3], tf.uint8))['final']
  assert out.shape[-1] == 4 * 4 * 8 and np.isfinite(out.numpy()).all()


def test_nan_loss_names_task_and_step_and_keeps_checkpoint(hybrid_run, tmp_path):
  cfg, model_dir, _ = hybrid_run
  run = tmp_path / 'nan'
  subprocess.run(['cp', '-r', model_dir, str(run)], check=True)
  before = tf.train.latest_checkpoint(str(run / 'checkpoints'))
  cfg.train.total_steps = 40
  cfg.train.checkpoint_every_seconds = 1e6  # Only the end-of-run save could replace it.
  path = save_config(cfg, str(run), 'input.yaml')
  cfg.train.total_steps = 24
  cfg.train.checkpoint_every_seconds = 2.0
  from mtssl_tf.distribute.cluster import LocalCluster

  cluster = LocalCluster(2, 1)
  try:
    # A coordinator whose relative-position loss is NaN (patched in that process only).
    script = (
      'import sys, tensorflow as tf\n'
      'from mtssl_tf.tasks import relative_position as rp\n'
      'rp.RelativePositionTask.loss = lambda self, outputs, batch: tf.constant(float("nan"))\n'
      'from mtssl_tf.configs import load_config\n'
      'from mtssl_tf.train.experiment import ExperimentConfig\n'
      'from mtssl_tf.train import launch\n'
      f'cfg = load_config(ExperimentConfig, [{path!r}])\n'
      f'launch.coordinator_main(cfg, {str(run)!r}, {cluster.spec!r})\n'
    )
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
  finally:
    cluster.stop()
  assert proc.returncode != 0
  assert 'FloatingPointError: relative_position: non-finite loss nan at task step' in proc.stderr
  assert tf.train.latest_checkpoint(str(run / 'checkpoints')) == before
  tf.train.load_checkpoint(before)  # Still readable.


def test_bad_config_and_missing_data_fail_before_any_server_starts(tmp_path):
  binary = str(__import__('pathlib').Path(sys.executable).with_name('mtssl-train'))
  cases = {
    'tasks.rotation.enabled=true': "unknown config key 'tasks.rotation'",
    'tasks.exemplar.workers=0': 'tasks.exemplar.workers',
    'tasks.exemplar.data.source=folder:/no/such/folder': "'/no/such/folder'",
  }
  for override_text, message in cases.items():
    model_dir = tmp_path / override_text.split('=')[0]
    proc = subprocess.run(
      [binary, f'--model_dir={model_dir}', f'--override={override_text}', '--override=train.world_preset=tiny',
       f'--override=train.world_dir={tmp_path / "world"}'],
      capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and message in proc.stderr, (override_text, proc.stderr[-2000:])
    assert not (model_dir / 'logs').exists()  # No server was started.


def test_pool_sizes_must_match_the_cluster():
  cfg = two_task_config('/unused')
  launch.check_cluster(cfg, {'worker': ['a', 'b'], 'ps': ['c']})
  with pytest.raises(launch.ConfigError, match=r'tasks.relative_position.workers=1 \+ tasks.exemplar.workers=1 = 2'):
    launch.check_cluster(cfg, {'worker': ['a', 'b', 'c'], 'ps': ['d']})
  with pytest.raises(launch.ConfigError, match='no parameter server'):
    launch.check_cluster(cfg, {'worker': ['a', 'b']})


@pytest.mark.parametrize('mode', ['async', 'sync'])
def test_async_and_sync_modes(mode, tmp_path):
  cfg = two_task_config(str(tmp_path / 'world'), mode=mode, total_steps=12)
  if mode == 'sync':
    # Lasso (with its L1 penalty in each task's loss) and harmonized inputs in this trainer.
    override(cfg, {'trunk': {'output_stride': 16}, 'lasso': {'enabled': True, 'l1_weight': 0.01},
                   'tasks': {'relative_position': {'harmonize': True}, 'exemplar': {'harmonize': True}}})  # fmt: skip
  if mode == 'async':
    cfg.tasks.exemplar.enabled = False  # Also covers a single-task run (Table 1 rows).
    cfg.tasks.relative_position.workers = 2
  result = supervised_run(cfg, tmp_path / 'run')
  steps = {n: r['steps'] for n, r in result.items()}
  updates = {n: r['updates'] for n, r in result.items()}
  assert sum(steps.values()) == 12
  if mode == 'async':
    assert updates == steps == {'relative_position': 12}  # Every step applied, whatever K says.
  else:
    # Rounds of one closure per worker (2), then one update per task that ran in the round.
    assert all(1 <= updates[n] <= min(steps[n], 6) for n in steps) and sum(updates.values()) >= 6
    values = checkpoint_values(str(tmp_path / 'run'))
    alpha = values[next(k for k in values if k.startswith('model/lasso/') and 'alpha' in k)]
    assert alpha.shape == (2, 2)  # Tasks x block-3 units of the tiny trunk.
    assert not np.allclose(alpha, [[0, 1], [0, 1]])  # Both rows moved from 'last' init.
    with open(os.path.join(tmp_path / 'run', 'config.yaml'), encoding='utf-8') as f:
      assert 'harmonize: true' in f.read()


def test_tf_config_roles_train_on_a_cluster(tmp_path):
  """The real-cluster path: every process is `mtssl-train` with its own TF_CONFIG.

  It also runs worker accumulation: a relative-position closure runs its K = 3 steps on
  its worker and writes their sum once.
  """
  from mtssl_tf.distribute.cluster import free_port

  cfg = two_task_config(str(tmp_path / 'world'), total_steps=10, accumulate='worker')
  launch.prepare(cfg)  # Generate the world once, before the chief and servers start.
  config = save_config(cfg, str(tmp_path), 'input.yaml')
  cluster = {'chief': [f'127.0.0.1:{free_port()}'], 'ps': [f'127.0.0.1:{free_port()}'],
             'worker': [f'127.0.0.1:{free_port()}', f'127.0.0.1:{free_port()}']}  # fmt: skip
  binary = str(__import__('pathlib').Path(sys.executable).with_name('mtssl-train'))

  def start(role, index, *extra):
    env = dict(os.environ, TF_CONFIG=json.dumps({'cluster': cluster, 'task': {'type': role, 'index': index}}))
    return subprocess.Popen([binary, f'--config={config}', *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip

  servers = [start('ps', 0), start('worker', 0), start('worker', 1)]
  try:
    chief = start('chief', 0, f'--model_dir={tmp_path / "run"}')
    _, err = chief.communicate(timeout=400)
    assert chief.returncode == 0, err[-3000:]
  finally:
    for server in servers:
      server.kill()
      server.wait()
  with open(tmp_path / 'run' / 'train_result.json', encoding='utf-8') as f:
    result = json.load(f)
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 10
  rp = result['relative_position']
  assert rp['updates'] == expected_updates(steps['relative_position'], 3)
  # Every closure was one update: full ones hold K steps, at most the last one fewer.
  assert rp['closures'] == rp['updates'] and rp['closures'] < steps['relative_position']
  assert result['exemplar']['closures'] == result['exemplar']['updates'] == steps['exemplar']
  values = checkpoint_values(str(tmp_path / 'run'))
  assert {n: int(values[k]) for k in values for n in steps if k.startswith(f'cost/steps/{n}')} == steps
  assert (tmp_path / 'run' / 'saved_model' / 'saved_model.pb').exists()
