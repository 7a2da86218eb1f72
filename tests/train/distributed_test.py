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
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tiny_configs import TINY_TRUNK, tiny_relative_position

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.train import launch
from mtssl_tf.train.experiment import ExperimentConfig

SAVED_MODEL_CLI = str(__import__('pathlib').Path(sys.executable).with_name('saved_model_cli'))


def _config(world_dir, **train):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': TINY_TRUNK,
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {
      'relative_position': tiny_relative_position(batch_size=4, aggregate_steps=3),
      'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16,
                       cost_per_step=0.5),
    },
    # A checkpoint every 2 s: the fault tests watch them (each save costs ~0.2-1 s here).
    'train': {**dict(total_steps=24, world_preset='tiny', world_dir=world_dir, log_every_seconds=2.0,
                     checkpoint_every_seconds=2.0, cost_tick=5.0), **train},
  })  # fmt: skip
  validate_all(cfg)
  return cfg


def _train(cfg, model_dir, on_cluster=None, max_restarts=0):
  path = save_config(cfg, str(model_dir), 'input.yaml')
  return launch.supervise_local(cfg, str(model_dir), [f'--config={path}'], max_restarts, on_cluster)


def _checkpoint_values(model_dir, attempts=50):
  """The latest checkpoint's values, read while the run may still be writing checkpoints.

  The manager keeps 3 checkpoints, so the one `latest_checkpoint` names can be deleted
  before it is read (a fast task saves several per second): such a read is retried.
  """
  for attempt in range(attempts):
    try:
      reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')))
      return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError):
      if attempt == attempts - 1:
        raise
      time.sleep(0.1)


def _expected_updates(steps, k):
  # Full aggregates of K steps, plus one last partial aggregate applied at the end.
  return steps // k + (1 if steps % k else 0)


@pytest.fixture(scope='module')
def hybrid_run(tmp_path_factory):
  world = str(tmp_path_factory.mktemp('world'))
  model_dir = tmp_path_factory.mktemp('hybrid')
  cfg = _config(world, num_ps=2)  # Variables are spread over two parameter servers.
  result = _train(cfg, model_dir)
  return cfg, str(model_dir), result


def test_hybrid_aggregation_counts_cost_and_ticks(hybrid_run):
  cfg, model_dir, result = hybrid_run
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 24 and min(steps.values()) > 0
  assert result['relative_position']['updates'] == _expected_updates(steps['relative_position'], 3)
  assert result['exemplar']['updates'] == steps['exemplar']  # K = 1.
  # Parameter-server accumulation: one closure per step, each writing its own slot.
  assert {n: r['closures'] for n, r in result.items()} == steps
  values = _checkpoint_values(model_dir)
  cost_steps = {n: int(v) for k, v in values.items() for n in steps if k.startswith(f'cost/steps/{n}')}
  assert cost_steps == steps
  # Compute ticks: a checkpoint each time cost (1 per RP step, 0.5 per exemplar step) crosses 5.
  total_cost = steps['relative_position'] + 0.5 * steps['exemplar']
  ticks = [f for f in os.listdir(os.path.join(model_dir, 'ticks')) if f.endswith('.index')]
  assert len(ticks) == int(total_cost // 5)


def test_per_task_rmsprop_slots_differ_and_restore_exactly(hybrid_run):
  cfg, model_dir, _ = hybrid_run
  values = _checkpoint_values(model_dir)
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
  result = _train(cfg, copy)
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


def _when_trained(model_dir, steps, then):
  """Runs `then()` in a thread once the run's latest checkpoint has at least `steps` steps."""

  def watch():
    deadline = time.time() + 240
    while time.time() < deadline:
      latest = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
      if latest and int(latest.rsplit('-', 1)[1]) >= steps:
        then()
        return
      time.sleep(0.2)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


TOTAL_AFTER_KILL = 60
# Seconds per relative-position step (at least; a sleep on the worker, conftest.py's paced_train),
# so that relative position does not use up the steps before the kill is seen in a checkpoint.
RP_PACE = 0.1


def _exemplar_steps(model_dir):
  values = _checkpoint_values(model_dir)
  return int(values[next(k for k in values if k.startswith('cost/steps/exemplar'))])


def _checkpoint_after(model_dir, moment, timeout=60):
  """Waits until the latest checkpoint was written more than 1 s after `moment`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
    try:
      if os.path.getmtime(latest + '.index') > moment + 1.0:
        return True
    except OSError:  # Deleted by the manager (it keeps 3) between the two reads: look again.
      pass
    time.sleep(0.2)
  return False


def _kill_worker_scenario(paced_train, root, accumulate):
  """One run: kill the exemplar pool's worker after 8 steps, restart it, check the counts.

  Relative position is slowed to 1 s per step from the kill until a checkpoint shows the
  frozen exemplar count (checkpoints are written only as closures finish, so it must not
  stop), then held back (a gate file its worker steps wait on) until the restarted worker
  has trained exemplar again: the run's step budget cannot run out during the restart
  however slow the machine (a new process: TF import, server start, coordinator
  reconnect, 5-30 s). A worker that never rejoins leaves exemplar frozen: the gate opens
  after 120 s and the last assertion fails.
  """
  cfg = _config(str(root / 'world'), total_steps=TOTAL_AFTER_KILL, accumulate=accumulate)
  model_dir = str(root / 'run')
  gate = str(root / 'hold_relative_position')
  seen = {}

  def kill_and_restart(cluster, _):
    def fault():
      try:
        open(gate + '.slow', 'w').close()
        cluster.kill('worker', 1)  # The exemplar pool's only worker.
        killed = time.time()
        # While it is down exemplar cannot advance (its pool has no other worker), so a
        # checkpoint written after the kill holds the frozen exemplar count.
        _checkpoint_after(model_dir, killed)
        seen['frozen'] = _exemplar_steps(model_dir)
        open(gate, 'w').close()
        cluster.start('worker', 1)
        deadline = time.time() + 120
        while time.time() < deadline and _exemplar_steps(model_dir) <= seen['frozen']:
          time.sleep(0.2)
      except Exception as error:  # Reported by the test below: a thread's error is otherwise lost.
        seen['error'] = repr(error)
        raise
      finally:
        for path in (gate, gate + '.slow'):
          if os.path.exists(path):
            os.remove(path)

    seen['thread'] = _when_trained(model_dir, 8, fault)

  result, _ = paced_train(cfg, model_dir, {'relative_position': RP_PACE}, on_cluster=kill_and_restart,
                          gates={'relative_position': gate})  # fmt: skip
  seen['thread'].join(timeout=5)
  assert 'error' not in seen, f'the fault thread failed: {seen.get("error")}'
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == TOTAL_AFTER_KILL
  assert result['relative_position']['updates'] == _expected_updates(steps['relative_position'], 3)
  assert result['exemplar']['updates'] == steps['exemplar']
  if accumulate == 'worker':  # Re-run closures too ran K steps and made one update each.
    assert result['relative_position']['closures'] == result['relative_position']['updates']
  assert steps['exemplar'] > seen['frozen']  # The restarted worker trained exemplar again.


@pytest.mark.parametrize('accumulate', ['parameter_server', 'worker'])
def test_killed_worker_rejoins_and_counts_stay_exact(accumulate, paced_train, tmp_path):
  # (A step that finished on the worker just before the kill used to fail its fetch with
  # UnavailableError and end training; `InFlight` now re-runs it, tests/train/fetch_test.py.)
  _kill_worker_scenario(paced_train, tmp_path, accumulate)


def test_killed_parameter_server_restarts_from_checkpoint(tmp_path):
  cfg = _config(str(tmp_path / 'world'), total_steps=30)
  model_dir = str(tmp_path / 'run')
  starts = []

  def kill_ps_once(cluster, _):
    starts.append(time.time())
    if len(starts) == 1:
      _when_trained(model_dir, 8, lambda: cluster.kill('ps', 0))

  result = _train(cfg, model_dir, kill_ps_once, max_restarts=2)
  assert len(starts) == 2  # One failure, one restart.
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 30
  values = _checkpoint_values(model_dir)
  assert {n: int(values[k]) for k in values for n in steps if k.startswith(f'cost/steps/{n}')} == steps


def _counted_and_updates(path, names):
  """Per task: (steps counted by the compute accounting, RMSProp updates) in one checkpoint."""
  reader = tf.train.load_checkpoint(path)
  keys = reader.get_variable_to_shape_map()

  def value(prefix):
    return int(reader.get_tensor(next(k for k in keys if k.startswith(prefix))))

  return {n: (value(f'cost/steps/{n}/'), value(f'optimizer/iterations/{n}/')) for n in names}


def test_coordinator_sigkill_and_resume_count_exactly_the_applied_steps(tmp_path):
  """A resume loses no counted work: counted steps == applied steps, per task, in every checkpoint.

  The applied steps are read off the optimizer: every update before the end of a run
  averages exactly K_t steps (the partial aggregate is applied only at the end), so a
  checkpoint holds K_t x updates applied steps of task t. Steps taken from finished
  closures but still waiting for their aggregate (up to K_t - 1) must not be counted.
  """
  k = {'relative_position': 4, 'exemplar': 3}
  cfg = _config(str(tmp_path / 'world'), total_steps=80, checkpoint_every_seconds=1.0, cost_tick=4.0)
  override(cfg, {'tasks': {n: {'aggregate_steps': v} for n, v in k.items()}})
  model_dir = str(tmp_path / 'run')
  watch = []

  def kill_coordinator(cluster, coordinator):
    watch.append(_when_trained(model_dir, 16, coordinator.kill))  # SIGKILL.

  with pytest.raises(RuntimeError, match='coordinator exited with code -9'):
    _train(cfg, model_dir, kill_coordinator)
  watch[0].join(timeout=5)

  def checkpoints():
    paths = [os.path.join(model_dir, d, f[: -len('.index')]) for d in ('checkpoints', 'ticks')
             for f in os.listdir(os.path.join(model_dir, d)) if f.endswith('.index')]  # fmt: skip
    return {p: _counted_and_updates(p, k) for p in paths}

  before = checkpoints()
  resumed = _counted_and_updates(tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')), k)
  assert len(before) >= 3 and resumed['relative_position'][1] >= 2  # A few aggregates were applied.
  result = _train(cfg, model_dir)
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 80 and all(steps[n] > resumed[n][0] for n in k)
  final = _counted_and_updates(tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')), k)
  assert final == {n: (steps[n], result[n]['updates']) for n in k}
  for path, counts in checkpoints().items():
    for name, (counted, updates) in counts.items():
      # Full aggregates only, or (saved at the end of the run) after the last partial one.
      ended = counted == steps[name] and updates == _expected_updates(counted, k[name])
      assert counted == k[name] * updates or ended, (path, name, counted, updates)


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
  cfg = _config('/unused')
  launch.check_cluster(cfg, {'worker': ['a', 'b'], 'ps': ['c']})
  with pytest.raises(launch.ConfigError, match=r'tasks.relative_position.workers=1 \+ tasks.exemplar.workers=1 = 2'):
    launch.check_cluster(cfg, {'worker': ['a', 'b', 'c'], 'ps': ['d']})
  with pytest.raises(launch.ConfigError, match='no parameter server'):
    launch.check_cluster(cfg, {'worker': ['a', 'b']})


@pytest.mark.parametrize('mode', ['async', 'sync'])
def test_async_and_sync_modes(mode, tmp_path):
  cfg = _config(str(tmp_path / 'world'), mode=mode, total_steps=12)
  if mode == 'sync':
    # Lasso (with its L1 penalty in each task's loss) and harmonized inputs in this trainer.
    override(cfg, {'trunk': {'output_stride': 16}, 'lasso': {'enabled': True, 'l1_weight': 0.01},
                   'tasks': {'relative_position': {'harmonize': True}, 'exemplar': {'harmonize': True}}})  # fmt: skip
  if mode == 'async':
    cfg.tasks.exemplar.enabled = False  # Also covers a single-task run (Table 1 rows).
    cfg.tasks.relative_position.workers = 2
  result = _train(cfg, tmp_path / 'run')
  steps = {n: r['steps'] for n, r in result.items()}
  updates = {n: r['updates'] for n, r in result.items()}
  assert sum(steps.values()) == 12
  if mode == 'async':
    assert updates == steps == {'relative_position': 12}  # Every step applied, whatever K says.
  else:
    # Rounds of one closure per worker (2), then one update per task that ran in the round.
    assert all(1 <= updates[n] <= min(steps[n], 6) for n in steps) and sum(updates.values()) >= 6
    values = _checkpoint_values(str(tmp_path / 'run'))
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

  cfg = _config(str(tmp_path / 'world'), total_steps=10, accumulate='worker')
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
  assert rp['updates'] == _expected_updates(steps['relative_position'], 3)
  # Every closure was one update: full ones hold K steps, at most the last one fewer.
  assert rp['closures'] == rp['updates'] and rp['closures'] < steps['relative_position']
  assert result['exemplar']['closures'] == result['exemplar']['updates'] == steps['exemplar']
  values = _checkpoint_values(str(tmp_path / 'run'))
  assert {n: int(values[k]) for k in values for n in steps if k.startswith(f'cost/steps/{n}')} == steps
  assert (tmp_path / 'run' / 'saved_model' / 'saved_model.pb').exists()


def test_a_coordinator_aborted_after_a_cluster_failure_counts_as_one(tmp_path, monkeypatch):
  """TF can abort (SIGABRT) while a coordinator handles a lost server; the supervisor restarts it."""
  run = tmp_path / 'run'
  run.mkdir()
  assert not launch._aborted_after_cluster_failure(-6, str(run))  # No marker: not known to be a cluster failure.

  def lost_server(*args):
    raise tf.errors.UnavailableError(None, None, 'Socket closed\nmore detail')

  # What the coordinator does on a cluster failure: the marker first, then the exit code.
  monkeypatch.setattr(launch, 'run_coordinator', lost_server)
  cfg = ExperimentConfig()
  code = launch.coordinator_main(cfg, str(run), {'worker': ['localhost:1'], 'ps': ['localhost:2']}, prepared=object())
  assert code == launch.EXIT_CLUSTER_FAILURE
  marker = json.loads((run / launch.CLUSTER_FAILURE_MARKER).read_text())
  assert marker['error'] == 'UnavailableError' and marker['message'] == 'Socket closed'
  assert launch._aborted_after_cluster_failure(-6, str(run))
  assert not launch._aborted_after_cluster_failure(1, str(run))  # An error exit stays an error.

  # The next attempt removes the marker when it starts: a later abort of its own is not a cluster failure.
  monkeypatch.setattr(launch, 'run_coordinator', lambda *args: {'relative_position': {'steps': 1}})
  assert launch.coordinator_main(cfg, str(run), {'worker': ['localhost:1'], 'ps': ['localhost:2']}, object()) == 0
  assert not launch._aborted_after_cluster_failure(-6, str(run))
