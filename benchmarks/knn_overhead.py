"""Overhead of the kNN monitor on pre-training: the same short run with the monitor on and off, interleaved.

Issue 17: the monitor is on by default and its measured cost must stay under 5%. Each
repetition runs the demo config (`mtssl_tf/configs/local_demo.yaml`: five tasks, a local
cluster of one parameter server and five workers, a compute tick every 100 steps) for
`--steps` worker steps once per mode, the modes' order alternating between
repetitions, so a shared machine's load falls on both sides alike. A mode is a set of
overrides on top of the demo config and `--overrides`:

* off: `knn.enabled=false`;
* on: the monitor's defaults (every tick, in a thread of the coordinator);
* sync: the defaults with `knn.background=false` (the coordinator waits for each evaluation).

Per run: the training loop's steps/s (the trainer's last `train/steps_per_second`, from
its first scheduled closure to its last update: cluster start-up is left out, and so is
the wait after the loop for the run's last evaluation, which the run's wall time holds),
the wall time of the whole run, the CPU time of all its processes per step (servers and
coordinator, their threads included: less sensitive than steps/s to other jobs' load,
which takes cores away but adds no CPU time to ours), and the monitor's evaluations, their
seconds and the coordinator's CPU seconds during them over the run's CPU seconds (an upper
bound of the monitor's share of the run's compute; `knn/ticks.jsonl`; the first evaluation
includes decoding the images and tracing).
The overhead of a mode is 1 - its steps/s / the off run's steps/s of the same
repetition (and its CPU time per step / the off run's - 1); reported as the median over
repetitions and its range.

    .venv/bin/python benchmarks/knn_overhead.py                        # ~45 min on 2 busy cores
    .venv/bin/python benchmarks/knn_overhead.py --reps=3 --modes=off,on,sync --steps=400
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'mtssl_tf', 'configs', 'local_demo.yaml')
MODES = {'off': ['knn.enabled=false'], 'on': ['knn.enabled=true'], 'sync': ['knn.enabled=true', 'knn.background=false']}

flags.DEFINE_integer('steps', 600, 'Worker steps per run (the demo ticks every 100).')
flags.DEFINE_integer('reps', 5, 'Repetitions; each runs every mode once, in alternating order.')
flags.DEFINE_list('modes', ['off', 'on'], f'Modes to run, the first is the baseline; of {sorted(MODES)}.')
flags.DEFINE_list('overrides', [], 'Config overrides for every run (e.g. knn.every_ticks=2).')
flags.DEFINE_string('world_dir', '', "The small world's directory ('': its default cache directory).")
flags.DEFINE_string('output', '', "Results as JSON here ('': not written).")
FLAGS = flags.FLAGS


def _events(folder, tag):
  import tensorflow as tf

  values = []
  for path in sorted(tf.io.gfile.glob(os.path.join(folder, 'events.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      values += [(event.step, tf.make_ndarray(v.tensor).item()) for v in event.summary.value if v.tag == tag]
  return values


def run_once(mode: str, world_dir: str) -> dict:
  """One pre-training run of the demo config in `mode`; its rates and the monitor's record."""
  from mtssl_tf.configs import load_config, save_config
  from mtssl_tf.train import knn, launch
  from mtssl_tf.train.experiment import ExperimentConfig

  overrides = [f'train.total_steps={FLAGS.steps}', 'train.export=false', f'train.world_dir={world_dir}']
  overrides += list(FLAGS.overrides) + MODES[mode]
  cfg = load_config(ExperimentConfig, [DEMO], overrides)
  with tempfile.TemporaryDirectory() as model_dir:
    path = save_config(cfg, model_dir, 'input.yaml')
    start, cpu = time.perf_counter(), _children_cpu()
    launch.supervise_local(cfg, model_dir, [f'--config={path}'], 0)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    rates = _events(os.path.join(model_dir, 'train'), 'train/steps_per_second')
    ticks = knn.read_ticks(model_dir)
  if not rates or rates[-1][0] != FLAGS.steps:
    raise RuntimeError(f'{mode}: no final train/steps_per_second in the run (got {rates[-1:]})')
  seconds = [t['seconds'] for t in ticks]
  return dict(
    mode=mode, steps_per_s=rates[-1][1], wall_s=round(wall, 1), cpu_ms_per_step=round(1000 * cpu / FLAGS.steps, 1),
    evaluations=len(ticks),
    eval_s=round(statistics.median(seconds), 3) if seconds else 0.0, eval_total_s=round(sum(seconds), 1),
    first_eval_s=seconds[0] if seconds else 0.0, load=round(os.getloadavg()[0], 1),
    monitor_cpu_pct=round(100 * sum(t.get('cpu_seconds', 0.0) for t in ticks) / cpu, 2),
  )  # fmt: skip


def _children_cpu() -> float:
  """CPU seconds of this process's finished children: the run's servers, coordinator and their threads."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _spread(values):
  return f'{statistics.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]'


def report(runs, modes):
  """Markdown: per mode, median [min, max] steps/s, overhead vs the baseline of the same repetition, monitor time."""
  base = modes[0]
  reps = sorted({r['rep'] for r in runs})
  by = {(r['rep'], r['mode']): r for r in runs}
  lines = [
    '| monitor | steps/s | overhead vs off | run CPU ms / step | CPU overhead | monitor CPU / run CPU '
    '| evaluations / run | s per evaluation (first) | run wall s |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for mode in modes:
    mine = [by[(i, mode)] for i in reps if (i, mode) in by]
    overhead = [100 * (1 - by[(i, mode)]['steps_per_s'] / by[(i, base)]['steps_per_s']) for i in reps
                if (i, mode) in by and (i, base) in by]  # fmt: skip
    cpu = [100 * (by[(i, mode)]['cpu_ms_per_step'] / by[(i, base)]['cpu_ms_per_step'] - 1) for i in reps
           if (i, mode) in by and (i, base) in by]  # fmt: skip
    firsts = [r['first_eval_s'] for r in mine]
    lines.append(
      f'| {mode} | {_spread([r["steps_per_s"] for r in mine])} | '
      + (f'{_spread(overhead)} %' if mode != base else '(baseline)')
      + f' | {_spread([r["cpu_ms_per_step"] for r in mine])} | '
      + (f'{_spread(cpu)} %' if mode != base else '(baseline)')
      + f' | {_spread([r["monitor_cpu_pct"] for r in mine])} %'
      + f' | {statistics.median([r["evaluations"] for r in mine]):g} | '
      + (
        f'{statistics.median([r["eval_s"] for r in mine]):.2f} ({statistics.median(firsts):.1f})'
        if any(firsts)
        else '-'
      )
      + f' | {_spread([r["wall_s"] for r in mine])} |'
    )
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  unknown = [m for m in FLAGS.modes if m not in MODES]
  if unknown or len(FLAGS.modes) < 2:
    raise app.UsageError(f'--modes: need two or more of {sorted(MODES)}, got {FLAGS.modes}')
  from mtssl_tf.data.synthetic.world import default_world_dir, make_world

  world_dir = FLAGS.world_dir or default_world_dir('small')
  make_world(world_dir, 'small')
  cpu = hardware.describe_cpu()
  print(cpu, f'| {os.cpu_count()} cores | load at start {os.getloadavg()[0]:.1f}', flush=True)
  runs = []
  for rep in range(FLAGS.reps):
    order = FLAGS.modes if rep % 2 == 0 else FLAGS.modes[::-1]
    for mode in order:
      result = dict(run_once(mode, world_dir), rep=rep)
      runs.append(result)
      print(json.dumps(result), flush=True)
      if FLAGS.output:
        with open(FLAGS.output, 'w', encoding='utf-8') as f:
          json.dump({'cpu': cpu, 'argv': sys.argv[1:], 'runs': runs}, f, indent=1)
  print(f'demo config, {FLAGS.steps} steps per run, {FLAGS.reps} repetitions, overrides {FLAGS.overrides or "none"}')
  print(report(runs, FLAGS.modes))


if __name__ == '__main__':
  app.run(main)
