"""Fixtures of the trainer tests: pre-training whose task steps take at least a set time on their worker.

Tests of scheduling and faults need steps of a known cost that holds on a busy 2-core
machine and on an idle one alike. Each paced task's step reads a one-element `tf.data`
SleepDataset before its gradients, inside the closure on the worker (no input buffer
absorbs it), so the step takes at least its pace and uses no CPU while it waits.

The coordinator runs in a subprocess with the patch applied (the test process never
joins a cluster); servers and coordinator share a private network namespace where
Linux allows it, as the launcher's. It records every closure it takes: task, the
worker's clock at the closure's start and end, and whether the result was held behind
another closure, the epoch it was admitted in and the seconds it waited for admission (-1 and 0 when
closures do not wait, admission.py); and the (wall) time each update's apply returned, in
`<model_dir>/taken.json.updates`.
"""

import json
import os
import subprocess
import sys

import pytest

from mtssl_tf.configs import save_config
from mtssl_tf.distribute.cluster import LocalCluster
from mtssl_tf.distribute.private_net import open_private_network
from mtssl_tf.tasks import build_tasks

# `--import-mode=importlib` puts no test folder on sys.path; this one holds tiny_configs.py, the trainer tests'
# shared config pieces (imported by module, not as fixtures, by their module-level config helpers).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import functools, json, sys, time
import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing
from mtssl_tf.configs import load_config
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import distributed, in_flight, launch

paces = {paces!r}
gates = {gates!r}
compute_gradients = MultiTaskModel.compute_gradients

def paced(self, name, batch, *args, **kwargs):
  if paces.get(name):
    # take(1): get_single_element reads twice (to see the end), and each read would sleep.
    pause = tf.data.Dataset.from_tensors(0).apply(testing.sleep(int(paces[name] * 1e6))).take(1)
    with tf.control_dependencies([pause.get_single_element()]):
      batch = {{k: tf.identity(v) for k, v in batch.items()}}
  if gates.get(name):
    # While `<gate>.slow` exists each step first sleeps 1 s; while `<gate>` exists it waits (polls every 50 ms).
    def nap(us):
      return tf.data.Dataset.from_tensors(0).apply(testing.sleep(us)).take(1).get_single_element()
    def exists(path):
      # Inside a tf.data map: a MatchingFiles of a constant path is not stateful, so grappler
      # would fold it into the graph once, at the file's state when the step was optimized.
      found = tf.data.Dataset.from_tensors(path).map(lambda p: tf.size(tf.io.matching_files(p)) > 0)
      return found.get_single_element()
    slowed = tf.cond(exists(gates[name] + '.slow'), lambda: nap(1000000), lambda: tf.constant(0))
    with tf.control_dependencies([slowed]):
      waited = tf.while_loop(lambda i: exists(gates[name]), lambda i: i + nap(50000) + 1, [tf.constant(0)])
    with tf.control_dependencies([waited]):
      batch = {{k: tf.identity(v) for k, v in batch.items()}}
  return compute_gradients(self, name, batch, *args, **kwargs)

MultiTaskModel.compute_gradients = paced
applied, update = [], distributed.DistributedTrainer._update

def record_update(self, name, pending):
  update(self, name, pending)
  applied.append(dict(task=name, end=time.time()))  # The apply has returned: the weights hold it.

distributed.DistributedTrainer._update = record_update
distributed.DistributedTrainer = functools.partial(distributed.DistributedTrainer, fetch_order={order!r})
taken, take = [], in_flight.InFlight.next

def record(self):
  out = take(self)  # The worker step returns the task index first; its admission epoch, wait, start and end last.
  taken.append(dict(task=int(out.value[0]), start=float(out.value[-2]), end=float(out.value[-1]), held=bool(out.held),
                    epoch=int(out.value[-4]), waited=float(out.value[-3])))
  return out

in_flight.InFlight.next = record
code = launch.coordinator_main(load_config(ExperimentConfig, [{config!r}]), {run!r}, {spec!r})
with open({trace!r}, 'w') as f:
  json.dump(taken, f)
with open({trace!r} + '.updates', 'w') as f:
  json.dump(applied, f)
sys.exit(code)
"""


def train(cfg, run_dir, paces, order='finished', on_cluster=None, timeout=600, gates=None):
  """Trains `cfg` on a local cluster; the tasks in `paces` take at least that many seconds per step.

  Args:
    cfg: a validated experiment config.
    run_dir: the run's model_dir (server logs in its logs/).
    paces: task name -> seconds per step.
    order: the trainer's fetch order.
    on_cluster: optional callback(LocalCluster, coordinator Popen), called once both run.
    timeout: seconds the coordinator may take.
    gates: task name -> path; that task's steps wait on their worker while the file exists
      and take at least 1 s while `<path>.slow` exists, so a test can hold a task back for as
      long as a fault takes, however slow the machine.

  Returns:
    train_result.json's content, and the closures the coordinator took, in order.

  Raises:
    RuntimeError: the coordinator failed (its exit code and the end of its output).
  """
  run_dir = str(run_dir)
  config = save_config(cfg, run_dir, 'input.yaml')
  trace = os.path.join(run_dir, 'taken.json')
  workers = sum(t.config.workers for t in build_tasks(cfg.tasks, cfg.trunk.output_stride).values())
  network = open_private_network('auto')
  try:
    cluster = LocalCluster(workers, cfg.train.num_ps, log_dir=os.path.join(run_dir, 'logs'), network=network)
    try:
      script = _SCRIPT.format(
        paces=paces, gates=gates or {}, order=order, config=config, run=run_dir, spec=cluster.spec, trace=trace
      )
      cmd = [sys.executable, '-c', script]
      proc = subprocess.Popen(network.command(cmd) if network else cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
      if on_cluster:
        on_cluster(cluster, proc)
      try:
        out, _ = proc.communicate(timeout=timeout)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    finally:
      cluster.stop()
  finally:
    if network:
      network.close()
  if proc.returncode:
    raise RuntimeError(f'coordinator exited with code {proc.returncode}:\n{out[-3000:]}')
  with open(os.path.join(run_dir, 'train_result.json'), encoding='utf-8') as f:
    result = json.load(f)
  with open(trace, encoding='utf-8') as f:
    return result, json.load(f)


@pytest.fixture
def paced_train():
  """`train(cfg, run_dir, paces, order='finished', on_cluster=None, timeout=600, gates=None)` (see its docstring)."""
  return train
