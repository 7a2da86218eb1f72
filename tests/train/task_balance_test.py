"""Tasks of unequal cost do not wait for each other (Doersch & Zisserman 2017, §4; issue 14, item 4).

Each task's step is given a cost by a sleep inside the worker step (a one-element
`tf.data` SleepDataset read before the gradients, in the closure itself, so no input
buffer absorbs it): it uses no CPU, so the paces hold on a busy 2-core machine, where a
computed cost would depend on what else runs. The coordinator runs in a subprocess (the
test process never joins a cluster; servers and coordinator share a private network
namespace where Linux allows it, as the launcher's) and records every closure it takes:
task, the worker's clock at the closure's start and end, and whether the result was
held behind another closure.
"""

import json
import subprocess
import sys

import numpy as np

from mtssl_tf.configs import ExperimentConfig, override, save_config, validate_all
from mtssl_tf.distribute.cluster import LocalCluster
from mtssl_tf.distribute.private_net import open_private_network

# Seconds per step. The fast task's pace is several times its tiny-trunk compute, so its
# speed is the pace; the slow task's is 5x (colorization at stride 8 is ~10x relative
# position at paper scale).
FAST, SLOW = 0.15, 0.75

_COORDINATOR = """
import functools, json, sys
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing
from mtssl_tf.configs import ExperimentConfig, load_config
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import distributed, in_flight, launch

paces = {paces!r}
compute_gradients = MultiTaskModel.compute_gradients

def paced(self, name, batch, *args, **kwargs):
  # take(1): get_single_element reads twice (to see the end), and each read would sleep.
  pause = tf.data.Dataset.from_tensors(0).apply(testing.sleep(int(paces[name] * 1e6))).take(1).get_single_element()
  with tf.control_dependencies([pause]):
    batch = {{k: tf.identity(v) for k, v in batch.items()}}
  return compute_gradients(self, name, batch, *args, **kwargs)

MultiTaskModel.compute_gradients = paced
distributed.DistributedTrainer = functools.partial(distributed.DistributedTrainer, fetch_order={order!r})
taken, take = [], in_flight.InFlight.next

def record(self):
  out = take(self)  # The worker step returns the task index first, its clock at start and end last.
  taken.append(dict(task=int(out.value[0]), start=float(out.value[-2]), end=float(out.value[-1]), held=bool(out.held)))
  return out

in_flight.InFlight.next = record
code = launch.coordinator_main(load_config(ExperimentConfig, [{config!r}]), {run!r}, {spec!r})
with open({trace!r}, 'w') as f:
  json.dump(taken, f)
sys.exit(code)
"""


def _run(root, name, paces, total_steps, order='finished'):
  cfg = ExperimentConfig()
  tasks = {
    'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                              max_area=4096, min_downsample=4, hidden_units=16, aggregate_steps=2),
    'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16),
  }  # fmt: skip
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'tasks': {n: c for n, c in tasks.items() if n in paces},
    'train': dict(mode='hybrid', total_steps=total_steps, world_preset='tiny', world_dir=str(root / 'world'),
                  log_every_seconds=5.0, checkpoint_every_seconds=1e6, cost_tick=1e6),
  })  # fmt: skip
  validate_all(cfg)
  run = str(root / name)
  config = save_config(cfg, run, 'input.yaml')
  trace = str(root / f'{name}.json')
  network = open_private_network('auto')
  try:
    cluster = LocalCluster(len(paces), 1, network=network)
    try:
      script = _COORDINATOR.format(paces=paces, order=order, config=config, run=run, spec=cluster.spec, trace=trace)
      cmd = [sys.executable, '-c', script]
      proc = subprocess.run(network.command(cmd) if network else cmd, capture_output=True, text=True, timeout=600)
    finally:
      cluster.stop()
  finally:
    if network:
      network.close()
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(f'{run}/train_result.json', encoding='utf-8') as f:
    result = json.load(f)
  with open(trace, encoding='utf-8') as f:
    return cfg, result, json.load(f)


def _rate(ends, lo=-np.inf, hi=np.inf):
  """Closures per second between the first and last end time in [lo, hi]."""
  ends = np.sort([e for e in ends if lo <= e <= hi])
  return (len(ends) - 1) / (ends[-1] - ends[0])


def test_fast_task_keeps_its_own_speed_beside_a_5x_slower_task(tmp_path):
  # Alone: relative position on its one worker. Rates leave out the start (the worker
  # instantiating the step, the coordinator tracing each task's first update).
  _, _, alone = _run(tmp_path, 'alone', {'relative_position': FAST}, total_steps=30)
  alone_rate = _rate([c['end'] for c in alone[3:]])
  # Together: one worker each, exemplar 5x slower per step.
  _, result, taken = _run(tmp_path, 'both', {'relative_position': FAST, 'exemplar': SLOW}, total_steps=60)
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 60  # The exact total_steps ending.
  assert result['relative_position']['updates'] == -(-steps['relative_position'] // 2)  # K = 2, last one partial.
  assert result['exemplar']['updates'] == steps['exemplar']  # K = 1.
  # No result waited behind another closure: each was taken as soon as it finished.
  assert not any(c['held'] for c in taken)
  # While the slow task runs (its third closure's end to its last one's), the fast task
  # keeps its own speed: within 15% of its rate alone. Taking closures in schedule order
  # (2 per worker in flight) leaves it at most 3 steps per slow step, ~0.6 of its rate.
  slow = sorted(c['end'] for c in taken if c['task'] == 1)
  assert len(slow) >= 6
  together = _rate([c['end'] for c in taken if c['task'] == 0], slow[2], slow[-1])
  assert 0.85 * alone_rate <= together <= 1.15 * alone_rate, (together, alone_rate)
