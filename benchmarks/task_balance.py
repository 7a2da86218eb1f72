"""Worker busy fraction with two tasks of unequal cost: closures taken as they finish vs in schedule order.

Doersch & Zisserman 2017, §4: each task's aggregated gradients are applied "when ready,
without synchronizing with other tasks". Two tasks, one worker each, one parameter
server, hybrid mode, all on this machine: relative position (cheap steps) and
colorization at output stride 8 (dilated block 3, a batch sized so that a step costs
~10x, as at paper scale). Two closures per worker in flight (`train.closures_per_worker`). Taken
in schedule order (the trainer's old behaviour, `fetch_order='scheduled'`), a
colorization closure holds back every relative-position result behind it, and the
relative-position worker idles once the window is full of finished results; taken as
they finish (`'finished'`, the default) it never waits. The reference ('alone'):
relative position by itself on one worker, whose idle time is only the strategy's
per-closure overhead.

Per order (each in a fresh process, after an untimed warm-up run that traces the step
and each task's update): per task, steps, steps/s, the mean closure time on its
worker, and the worker busy fraction (time inside closures over the timed run, on the
worker's clock).

    .venv/bin/python benchmarks/task_balance.py              # ~5 min on 2 cores
    .venv/bin/python benchmarks/task_balance.py --width=32 --steps=200
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.configs import override, validate_all  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402

MEASURE_FLAGS = ('steps', 'warmup', 'units', 'width', 'rp_batch', 'col_batch', 'col_crop')
flags.DEFINE_integer('steps', 160, 'Timed worker steps (both tasks together).')
flags.DEFINE_integer('warmup', 24, 'Untimed steps first (tracing the step and each task update).')
flags.DEFINE_list('units', ['1', '1', '2'], 'Units per block of the trunk.')
flags.DEFINE_integer('width', 16, 'Trunk width (block 1 bottleneck; 64 is ResNet-101).')
flags.DEFINE_integer('rp_batch', 16, 'Relative-position pairs per step (32 px patches).')
flags.DEFINE_integer('col_batch', 192, 'Colorization crops per step (192: ~10x a relative-position step).')
flags.DEFINE_integer('col_crop', 64, 'Colorization crop side (output stride 8).')
flags.DEFINE_list(
  'orders',
  ['alone', 'scheduled', 'finished'],
  "Fetch orders to measure (before, after); 'alone': relative position by itself on one worker, the reference.",
)
flags.DEFINE_string('child', None, 'Internal: measure this fetch order in this process and print it as JSON.')
flags.DEFINE_string('world_dir', None, 'Internal: the synthetic world of the parent process.')
FLAGS = flags.FLAGS


def _config(world_dir, alone=False):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [int(u) for u in FLAGS.units], 'width': FLAGS.width, 'output_stride': 16},
    'tasks': {
      # configs/pretext/tiny.yaml's tasks (the small world's 128 px images); K = 4 each.
      'relative_position': dict(enabled=True, batch_size=FLAGS.rp_batch, patch_size=32, gap=8, jitter=2,
                                min_area=16384, max_area=25600, min_downsample=8, hidden_units=256,
                                aggregate_steps=4),
      'colorization': dict(enabled=True, batch_size=FLAGS.col_batch, crop_size=FLAGS.col_crop, hidden_units=128,
                           output_stride=8, aggregate_steps=4),
    },
    # float32 as measured in benchmarks/README.md; 'auto' is printed (mixed_bfloat16 on AVX512_BF16 or AMX).
    'runtime': {'precision': 'float32'},
    # Two closures per worker, as benchmarks/README.md's figures were measured (the trainer's default was 2 then,
    # is 1 since: BUILD.md "Stale gradients"); with 1 the scheduled order holds back less.
    'train': dict(mode='hybrid', closures_per_worker=2, world_dir=world_dir, world_preset='small',
                  checkpoint_every_seconds=1e9, log_every_seconds=1e9, cost_tick=1e9),
  })  # fmt: skip
  cfg.tasks.colorization.enabled = not alone
  validate_all(cfg)
  return cfg


def measure(order):
  """One fetch order: warm-up run, timed run; per task steps, steps/s, closure seconds, busy fraction."""
  from mtssl_tf.data.synthetic.world import make_world
  from mtssl_tf.distribute.cluster import LocalCluster
  from mtssl_tf.train import in_flight
  from mtssl_tf.train.distributed import DistributedTrainer

  # Each closure's task and worker-clock start and end (the step returns them first and last).
  closures = []
  take = in_flight.InFlight.next

  def record(self):
    out = take(self)
    closures.append((int(out.value[0]), float(out.value[-1]) - float(out.value[-2])))
    return out

  in_flight.InFlight.next = record
  world = make_world(FLAGS.world_dir, 'small')
  alone = order == 'alone'
  cfg = _config(FLAGS.world_dir, alone)
  names = ['relative_position'] if alone else ['relative_position', 'colorization']
  with tempfile.TemporaryDirectory() as model_dir:
    # This process joins the cluster itself, so the servers share its network (as ps_overhead.py).
    cluster = LocalCluster(num_workers=len(names), num_ps=1)
    try:
      sources = {n: world['sources']['images_train'] for n in names}
      trainer = DistributedTrainer(
        cfg, model_dir, cluster.resolver(), sources, fetch_order='finished' if alone else order
      )
      cfg.train.total_steps = FLAGS.warmup
      before = trainer.run()
      closures.clear()
      cfg.train.total_steps = FLAGS.warmup + FLAGS.steps
      start = time.perf_counter()
      after = trainer.run()
      elapsed = time.perf_counter() - start
    finally:
      cluster.stop()
  out = {}
  for index, name in enumerate(trainer.names):
    seconds = [s for i, s in closures if i == index]
    steps = after[name]['steps'] - before[name]['steps']
    out[name] = dict(steps=steps, rate=steps / elapsed, closure=sum(seconds) / max(len(seconds), 1),
                     busy=after[name]['worker_busy'])  # fmt: skip
  return out


def _in_child(order, world_dir):
  # A fresh process per order: a second ClusterCoordinator in one process runs slower
  # (benchmarks/ps_overhead.py).
  argv = [sys.executable, os.path.abspath(__file__), f'--child={order}', f'--world_dir={world_dir}']
  argv += [f'--{name}={FLAGS[name].serialize().split("=", 1)[1]}' for name in MEASURE_FLAGS]
  out = subprocess.run(argv, capture_output=True, text=True, check=False)
  lines = [line[len('RESULT ') :] for line in out.stdout.splitlines() if line.startswith('RESULT ')]
  if out.returncode or not lines:
    raise RuntimeError(f'measurement ({order}) failed:\n{out.stderr[-3000:]}')
  return json.loads(lines[0])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.child:
    print('RESULT ' + json.dumps(measure(FLAGS.child)))
    return
  from mtssl_tf.data.synthetic.world import make_world

  print(hardware.describe_cpu())
  auto, why = hardware.explain_precision('auto')
  print(f'precision: float32 (set in _config; auto here would be {auto}: {why})')
  with tempfile.TemporaryDirectory() as tmp:
    world_dir = os.path.join(tmp, 'world')
    make_world(world_dir, 'small')
    results = {order: _in_child(order, world_dir) for order in FLAGS.orders}
  print(
    f'trunk units {",".join(FLAGS.units)} width {FLAGS.width}; relative position batch {FLAGS.rp_batch} '
    f'(32 px patches), colorization batch {FLAGS.col_batch} ({FLAGS.col_crop} px, stride 8); K = 4 each; '
    f'one worker per task; {FLAGS.steps} timed steps'
  )
  print('| fetch order | task | steps | steps/s | closure s (worker) | worker busy |')
  print('|---|---|---|---|---|---|')
  for order, tasks in results.items():
    for name, r in tasks.items():
      print(f'| {order} | {name} | {r["steps"]} | {r["rate"]:.2f} | {r["closure"]:.3f} | {r["busy"]:.2f} |')


if __name__ == '__main__':
  app.run(main)
