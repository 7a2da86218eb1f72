"""A process SIGKILLed while it writes checkpoints never leaves one that fails to restore.

The trainer saves through `tf.train.CheckpointManager` and its traced `TracedCheckpoint`
(data and index written under temporary names, then the `checkpoint` state file replaced
atomically). This kills a
process that saves the trainer's objects (model, per-task RMSProp, cost counters) in a
tight loop, at several moments, and restores the latest checkpoint each time.
"""

import os
import signal
import subprocess
import sys
import time

import tensorflow as tf

from mtssl_tf.configs import LassoConfig
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.cost import CostTracker
from mtssl_tf.train.rmsprop import PerTaskRMSProp

_SAVER = """
import sys
import tensorflow as tf
sys.path.insert(0, {tests!r})
from checkpoint_kill_test import objects
from mtssl_tf.train.checkpointing import TracedCheckpoint
model, optimizer, cost = objects()
manager = tf.train.CheckpointManager(
  TracedCheckpoint(model=model, optimizer=optimizer, cost=cost), {directory!r}, max_to_keep=2)
if manager.latest_checkpoint:
  manager.checkpoint.restore(manager.latest_checkpoint)
while True:
  cost.add('relative_position')
  manager.save(checkpoint_number=cost.task_steps()['relative_position'])
"""


def objects():
  """The trainer's checkpointed objects with a tiny trunk (also used by the child)."""
  from mtssl_tf.configs import TrunkConfig

  trunk = TrunkConfig()
  trunk.units_per_block, trunk.width = (1, 1, 2), 8
  cfg = TasksConfig()
  cfg.relative_position.enabled = True
  cfg.relative_position.hidden_units = 16
  cfg.relative_position.patch_size = 32
  model = MultiTaskModel(trunk, build_tasks(cfg, 16), LassoConfig())
  model.build_all({'relative_position': {'patches': tf.zeros([1, 2, 32, 32, 3]), 'label': tf.zeros([1], tf.int32)}})
  optimizer = PerTaskRMSProp({'relative_position': model.task_variables('relative_position')})
  return model, optimizer, CostTracker({'relative_position': 1.0}, tick=10.0)


def test_kill_during_checkpoint_writes_leaves_a_restorable_latest(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  script = _SAVER.format(tests=os.path.dirname(__file__), directory=directory)
  model, optimizer, cost = objects()
  previous = 0
  for delay in (0.05, 0.4, 1.1):
    child = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Wait until this child has saved at least once past the previous kill, then kill it mid-loop.
    while time.time() < deadline:
      latest = tf.train.latest_checkpoint(directory)
      if latest and int(latest.rsplit('-', 1)[1]) > previous:
        break
      time.sleep(0.05)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    latest = tf.train.latest_checkpoint(directory)
    status = tf.train.Checkpoint(model=model, optimizer=optimizer, cost=cost).restore(latest)
    status.assert_existing_objects_matched()
    number = int(latest.rsplit('-', 1)[1])
    assert cost.task_steps()['relative_position'] == number > previous
    previous = number
