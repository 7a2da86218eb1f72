"""Overhead of ParameterServerStrategy: the PS trainer's steps/s against the bare step.

One task (relative position), one worker, one parameter server, all on this machine.
The baseline is the same training without any strategy in this process (trunk + head +
loss + gradients; every K steps one averaged per-task RMSProp update, the K gradients
summed in local variables). The PS figures include everything the real trainer does:
closures on the worker, gradient slot writes on the PS, the coordinator's applies and
bookkeeping, once per `train.accumulate` mode (the K gradients summed on the parameter
server, the default and the paper's scheme, or on the worker), and once per
`train.closures_per_worker` (1, the default: a worker's next step waits for the
coordinator's round trip and reads fresh weights; 2: the round trip hides behind a queued
step whose gradient is one update staler), and once per `train.wait_for_update` (true, the
default: each closure first claims a place in its task's open update on the parameter
server, a few small RPCs; false: no admission). Baseline, PS runs (each in a fresh process),
baseline again; ratio = PS steps/s / mean baseline steps/s (goal >= 0.9).

Defaults: ResNet-101's width (64) on a shallow trunk (units 1, 1, 2), the paper's
K = 16, batch 16 (the relative-position batch of configs/train/rp_col_ex_ms.yaml).

    .venv/bin/python benchmarks/ps_overhead.py                     # ~6 min on 2 cores
    .venv/bin/python benchmarks/ps_overhead.py --closures_per_worker=2 --accumulate=worker
    .venv/bin/python benchmarks/ps_overhead.py --width=32 --aggregate_steps=1
    .venv/bin/python benchmarks/ps_overhead.py --accumulate=worker --steps=128
    .venv/bin/python benchmarks/ps_overhead.py --units=3,4,23 --steps=32   # the full trunk
"""

import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.configs import override, validate_all  # noqa: E402
from mtssl_tf.data.images import ReadOptions  # noqa: E402
from mtssl_tf.data.synthetic.world import make_world  # noqa: E402
from mtssl_tf.distribute.private_net import open_private_network  # noqa: E402
from mtssl_tf.tasks import build_tasks  # noqa: E402
from mtssl_tf.tasks.multitask import MultiTaskModel  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402
from mtssl_tf.train.rmsprop import PerTaskRMSProp  # noqa: E402

MEASURE_FLAGS = ('steps', 'warmup', 'units', 'width', 'batch_size', 'aggregate_steps')
flags.DEFINE_integer('steps', 64, 'Timed steps per measurement.')
flags.DEFINE_integer('warmup', 16, 'Untimed steps first (tracing, pipeline start).')
flags.DEFINE_list('units', ['1', '1', '2'], 'Units per block of the trunk (3,4,23 is ResNet-101 block 3).')
flags.DEFINE_integer('width', 64, 'Trunk width (block 1 bottleneck; 64 is ResNet-101).')
flags.DEFINE_integer('batch_size', 16, 'Relative-position pairs per step.')
flags.DEFINE_integer('aggregate_steps', 16, 'K: steps averaged per update (in both trainers).')
flags.DEFINE_list(
  'accumulate',
  ['parameter_server', 'worker'],
  'train.accumulate modes of the PS trainer to measure: where the K gradients are summed.',
)
flags.DEFINE_list('closures_per_worker', ['1', '2'], 'train.closures_per_worker values of the PS trainer to measure.')
flags.DEFINE_list(
  'wait_for_update', ['true'], 'train.wait_for_update values of the PS trainer to measure (true, false).'
)
flags.DEFINE_enum(
  'private_network',
  'auto',
  ['auto', 'on', 'off'],
  'Run each PS measurement (its servers and coordinator) in a private network namespace, as mtssl-train does.',
)
flags.DEFINE_string(
  'ps_child', None, 'Internal: measure this <accumulate>:<closures_per_worker>:<wait_for_update> only, here.'
)
flags.DEFINE_string('world_dir', None, 'Internal: the synthetic world of the parent process.')
FLAGS = flags.FLAGS


def _config(world_dir, accumulate='parameter_server', closures_per_worker=1, wait_for_update=True):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [int(u) for u in FLAGS.units], 'width': FLAGS.width},
    'tasks': {'relative_position': dict(enabled=True, batch_size=FLAGS.batch_size, patch_size=64, gap=16, jitter=4,
                                        min_area=65536, max_area=65536, min_downsample=16, hidden_units=256,
                                        data={'shuffle_buffer': 0}, aggregate_steps=FLAGS.aggregate_steps)},
    # float32 as measured in benchmarks/README.md; 'auto' is printed (mixed_bfloat16 on AVX512_BF16 or AMX).
    'runtime': {'precision': 'float32'},
    'train': dict(mode='hybrid', accumulate=accumulate, closures_per_worker=closures_per_worker,
                  wait_for_update=wait_for_update,
                  world_dir=world_dir, world_preset='small',
                  checkpoint_every_seconds=1e9, log_every_seconds=1e9, cost_tick=1e9),
  })  # fmt: skip
  validate_all(cfg)
  return cfg


def baseline_rate(cfg, source):
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso)
  it = iter(tasks['relative_position'].dataset(ReadOptions(), source))
  model.build_all({'relative_position': next(it)})
  variables = model.task_variables('relative_position')
  optimizer = PerTaskRMSProp({'relative_position': variables})
  k = FLAGS.aggregate_steps
  # K > 1: gradients summed in local variables, one averaged update every K steps.
  sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables] if k > 1 else []

  @tf.function
  def step(batch):
    _, loss, _, grads, variables = model.compute_gradients('relative_position', batch)
    if k == 1:
      optimizer.apply('relative_position', zip(grads, variables))
    else:
      for total, g in zip(sums, grads):
        if g is not None:
          total.assign_add(g)
    return loss

  @tf.function
  def apply():
    optimizer.apply('relative_position', [(total / k, v) for total, v in zip(sums, variables)])
    for total in sums:
      total.assign(tf.zeros_like(total))

  def run(n):
    for i in range(n):
      step(next(it)).numpy()
      if k > 1 and (i + 1) % k == 0:
        apply()

  run(FLAGS.warmup)
  start = time.perf_counter()
  run(FLAGS.steps)
  return FLAGS.steps / (time.perf_counter() - start)


def ps_rate(cfg, source, model_dir):
  from mtssl_tf.distribute.cluster import LocalCluster
  from mtssl_tf.train.distributed import DistributedTrainer

  cluster = LocalCluster(num_workers=1, num_ps=1, log_dir=os.path.join(model_dir, 'logs'))
  try:
    trainer = DistributedTrainer(cfg, model_dir, cluster.resolver(), {'relative_position': source})
    cfg.train.total_steps = FLAGS.warmup
    trainer.run()
    cfg.train.total_steps = FLAGS.warmup + FLAGS.steps
    start = time.perf_counter()
    trainer.run()
    elapsed = time.perf_counter() - start
    # run() ends with a checkpoint save, which the baseline does not do (for the full
    # trunk, weights and RMSProp slots, a large part of a short run); time one, take it off.
    start = time.perf_counter()
    trainer.manager.save(checkpoint_number=FLAGS.warmup + FLAGS.steps + 1)
    return FLAGS.steps / (elapsed - (time.perf_counter() - start))
  finally:
    cluster.stop()


def _ps_in_child(mode, world_dir):
  # Each PS measurement gets a fresh process: a second ClusterCoordinator in one process
  # measured slower than the first (0.87 against 0.92-0.96 for the same mode).
  argv = [sys.executable, os.path.abspath(__file__), f'--ps_child={mode}', f'--world_dir={world_dir}']
  argv += [f'--{name}={FLAGS[name].serialize().split("=", 1)[1]}' for name in MEASURE_FLAGS]
  # TensorFlow's servers listen on every interface, unauthenticated: the child, the
  # servers its LocalCluster starts and its coordinator run in a network namespace with
  # only lo where possible (else one warning line), like mtssl-train's local cluster.
  network = open_private_network(FLAGS.private_network)
  try:
    out = subprocess.run(network.command(argv) if network else argv, capture_output=True, text=True, check=False)
  finally:
    if network:
      network.close()
  rates = [line.split()[1] for line in out.stdout.splitlines() if line.startswith('RATE ')]
  if out.returncode or not rates:
    raise RuntimeError(f'PS measurement ({mode}) failed:\n{out.stderr[-3000:]}')
  return float(rates[0])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.ps_child:
    world = make_world(FLAGS.world_dir, 'small')
    with tempfile.TemporaryDirectory() as tmp:
      mode, closures, wait = FLAGS.ps_child.split(':')
      cfg = _config(FLAGS.world_dir, mode, int(closures), wait == 'true')
      rate = ps_rate(cfg, world['sources']['images_train'], tmp)
    print(f'RATE {rate}')
    return
  print(f'CPU: {hardware.describe_cpu()}')
  auto, why = hardware.explain_precision('auto')
  print(f'precision: float32 (set in _config; auto here would be {auto}: {why})')
  with tempfile.TemporaryDirectory() as tmp:
    world_dir = os.path.join(tmp, 'world')
    world = make_world(world_dir, 'small')
    cfg = _config(world_dir)
    source = world['sources']['images_train']
    first = baseline_rate(cfg, source)
    keys = [f'{m}:{c}:{w}' for m in FLAGS.accumulate for c in FLAGS.closures_per_worker for w in FLAGS.wait_for_update]
    ps = {key: _ps_in_child(key, world_dir) for key in keys}
    second = baseline_rate(cfg, source)
  base = (first + second) / 2
  print(
    f'trunk units {",".join(FLAGS.units)} width {FLAGS.width}, '
    f'relative position batch {FLAGS.batch_size} pairs of 64 px, '
    f'K = {FLAGS.aggregate_steps}, {FLAGS.steps} timed steps'
  )
  print(f'no strategy:                      {first:.2f} / {second:.2f} steps/s (before / after)')
  for key, rate in ps.items():
    mode, closures, wait = key.split(':')
    print(
      f'PS trainer, accumulate on {mode + ",":17s} {closures} closure(s)/worker, wait {wait:5s}: {rate:.2f} steps/s, '
      f'ratio {rate / base:.2f}  (goal >= 0.9)'
    )


if __name__ == '__main__':
  app.run(main)
