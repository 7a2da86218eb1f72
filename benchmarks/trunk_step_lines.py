"""The trunk step on both dependency lines in one run: images/s current (TF 2.20) / reference (TF 2.15.1).

One process cannot hold two TensorFlows, so this runs benchmarks/trunk_step.py under each line's venv
in turn, on the same CPU, and pairs them: repeat i runs the two lines back to back, in ABBA order over
repeats (whichever runs second may find the CPU hotter or the machine's other load changed). Each pair
gives a ratio current / reference of our trunk's images/s (and of Keras' ResNet101V2, the same network
built by each line's Keras 2); the median over pairs is reported with its min-max. Each run's own
timing starts after tracing and warm-up, so process start-up and graph building are not measured.
Needs both venvs (`make install` and `make LINE=current install`); imports no TensorFlow itself.

    .venv/bin/python benchmarks/trunk_step_lines.py                 # make benchmark-lines
    .venv/bin/python benchmarks/trunk_step_lines.py --repeats=6 --precisions=float32
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_string('reference_python', str(ROOT / '.venv/bin/python'), 'Python of the reference line (TF 2.15.1).')
flags.DEFINE_string('current_python', str(ROOT / '.venv-current/bin/python'), 'Python of the current line (TF 2.20).')
flags.DEFINE_integer('repeats', 4, 'Pairs of runs (one per line each); the median ratio over pairs is reported.')
flags.DEFINE_list('precisions', ['float32', 'mixed_bfloat16'], 'Dtype policies, passed to trunk_step.py.')
flags.DEFINE_integer('batch_size', 8, 'Images per step, passed to trunk_step.py.')
flags.DEFINE_integer('image_size', 128, 'Square input side, passed to trunk_step.py.')
flags.DEFINE_integer('steps', 3, 'Timed steps per round, passed to trunk_step.py.')
flags.DEFINE_integer('rounds', 3, 'Rounds (ours, Keras) inside each run, passed to trunk_step.py.')
FLAGS = flags.FLAGS

LINES = ('reference', 'current')


def _run(python: str) -> dict:
  """One trunk_step.py run under `python`; returns its JSON results."""
  args = [
    python,
    str(ROOT / 'benchmarks/trunk_step.py'),
    '--json',
    f'--precisions={",".join(FLAGS.precisions)}',
    f'--batch_size={FLAGS.batch_size}',
    f'--image_size={FLAGS.image_size}',
    f'--steps={FLAGS.steps}',
    f'--rounds={FLAGS.rounds}',
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
  if result.returncode != 0:
    raise RuntimeError(f'{python} benchmarks/trunk_step.py failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _spread(values: list) -> str:
  return f'{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})'


def main(argv):
  del argv
  pythons = {'reference': FLAGS.reference_python, 'current': FLAGS.current_python}
  for line, python in pythons.items():
    if not os.access(python, os.X_OK):
      flag = f'--{line}_python'
      install = 'make install' if line == 'reference' else 'make LINE=current install'
      raise app.UsageError(f'{flag}={python}: no such Python; build the {line} line with `{install}`.')
  runs = {line: [] for line in LINES}
  for i in range(FLAGS.repeats):
    for line in LINES if i % 2 == 0 else LINES[::-1]:
      runs[line].append(_run(pythons[line]))
      rates = {p: round(r['ours'], 2) for p, r in runs[line][-1]['results'].items()}
      print(f'repeat {i + 1}/{FLAGS.repeats} {line}: ours img/s {rates}', flush=True)
  print(f'CPU: {runs["reference"][0]["cpu"]}')
  for line in LINES:
    print(f'{line}: TensorFlow {runs[line][0]["tensorflow"]}, tf.keras: {runs[line][0]["keras"]}')
  print(
    f'forward+backward, batch {FLAGS.batch_size}, {FLAGS.image_size} px, {FLAGS.repeats} pairs of runs, '
    f'each {FLAGS.rounds} rounds x {FLAGS.steps} steps; median (min-max) over pairs'
  )
  print(f'{"precision":<16}{"network":<8}{"reference img/s":>22}{"current img/s":>22}{"current / reference":>28}')
  for precision in FLAGS.precisions:
    for network in ('ours', 'keras'):
      rate = {line: [run['results'][precision][network] for run in runs[line]] for line in LINES}
      ratios = [c / r for r, c in zip(rate['reference'], rate['current'])]
      row = f'{precision:<16}{network:<8}{_spread(rate["reference"]):>22}{_spread(rate["current"]):>22}'
      print(f'{row}{_spread(ratios):>28}')
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
