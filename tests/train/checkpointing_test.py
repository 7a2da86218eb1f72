"""TracedCheckpoint: CheckpointManager saves trace one write function, with the manager's bookkeeping intact.

These tests also guard the private hook checkpointing.py relies on: if a TF upgrade
stops routing `CheckpointManager.save` through `Checkpoint._write` (with its bookkeeping
as write callbacks), the trace count or the state file below stops matching.
"""

import os

import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.checkpointing import TracedCheckpoint
from mtssl_tf.train.cost import CostTracker
from mtssl_tf.train.rmsprop import PerTaskRMSProp


class _Objects(tf.Module):
  def __init__(self):
    super().__init__()
    self.w = tf.Variable(tf.zeros([3, 2]))
    self.cost = CostTracker({'a': 1.0}, tick=10.0)


def _values(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if 'OBJECT_GRAPH' not in k}


def test_manager_saves_trace_once_and_keep_numbering_retention_and_state(tmp_path):
  objects = _Objects()
  checkpoint = TracedCheckpoint(objects=objects)
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / 'checkpoints'), max_to_keep=2)
  ticks = tf.train.CheckpointManager(checkpoint, str(tmp_path / 'ticks'), max_to_keep=None, checkpoint_name='tick')
  for step in (3, 7, 12, 20, 31):
    objects.w.assign_add(tf.ones([3, 2]))
    objects.cost.add('a', step)
    assert manager.save(checkpoint_number=step) == str(tmp_path / 'checkpoints' / f'ckpt-{step}')
    ticks.save(checkpoint_number=step)
  assert checkpoint.traces == 1  # Ten saves under two managers and prefixes, one trace.
  # max_to_keep and the state file: the two newest, on disk and in a fresh manager.
  assert sorted(f for f in os.listdir(tmp_path / 'checkpoints') if f.endswith('.index')) == [
    'ckpt-20.index',
    'ckpt-31.index',
  ]
  state = tf.train.get_checkpoint_state(str(tmp_path / 'checkpoints'))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ['ckpt-20', 'ckpt-31']
  assert tf.train.latest_checkpoint(str(tmp_path / 'ticks')).endswith('tick-31')
  assert len([f for f in os.listdir(tmp_path / 'ticks') if f.endswith('.index')]) == 5
  # The values of the last save (not of the trace), restorable by a plain Checkpoint.
  values = _values(manager.latest_checkpoint)
  assert values['objects/w/.ATTRIBUTES/VARIABLE_VALUE'].tolist() == [[5.0, 5.0]] * 3
  restored = _Objects()
  tf.train.Checkpoint(objects=restored).restore(manager.latest_checkpoint).assert_existing_objects_matched()
  assert restored.cost.task_steps() == {'a': 3 + 7 + 12 + 20 + 31}


def test_the_trainers_objects_trace_once(tmp_path, tiny_trunk):
  # Keras models build some of their checkpoint children on demand: the object set must
  # still compare equal from save to save, or every save would trace again.
  cfg = TasksConfig()
  cfg.relative_position.enabled = True
  cfg.relative_position.patch_size = 32
  model = MultiTaskModel(tiny_trunk, build_tasks(cfg, 16), LassoConfig())
  model.build_all({'relative_position': {'patches': tf.zeros([1, 2, 32, 32, 3]), 'label': tf.zeros([1], tf.int32)}})
  optimizer = PerTaskRMSProp({'relative_position': model.task_variables('relative_position')})
  checkpoint = TracedCheckpoint(model=model, optimizer=optimizer, cost=CostTracker({'relative_position': 1.0}, 10.0))
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=1)
  for step in range(1, 5):
    manager.save(checkpoint_number=step)
  assert checkpoint.traces == 1
  tf.train.Checkpoint(model=model, optimizer=optimizer).read(
    manager.latest_checkpoint
  ).assert_existing_objects_matched()


def test_a_variable_added_after_a_save_is_saved(tmp_path):
  objects = _Objects()
  checkpoint = TracedCheckpoint(objects=objects)
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=1)
  manager.save(checkpoint_number=1)
  objects.late = tf.Variable(4.0)
  manager.save(checkpoint_number=2)
  manager.save(checkpoint_number=3)
  assert checkpoint.traces == 2  # Once more for the new object set, then reused.
  assert _values(manager.latest_checkpoint)['objects/late/.ATTRIBUTES/VARIABLE_VALUE'] == 4.0


def test_a_failed_write_leaves_the_last_checkpoint_latest(tmp_path):
  objects = _Objects()
  manager = tf.train.CheckpointManager(TracedCheckpoint(objects=objects), str(tmp_path), max_to_keep=1)
  manager.save(checkpoint_number=1)
  objects.w.assign(tf.ones([3, 2]))
  # A file where the write's temporary directory goes: the sharded write fails midway.
  (tmp_path / 'ckpt-2_temp').write_text('')
  with pytest.raises(tf.errors.OpError):
    manager.save(checkpoint_number=2)
  latest = tf.train.latest_checkpoint(str(tmp_path))
  assert latest.endswith('ckpt-1')
  assert _values(latest)['objects/w/.ATTRIBUTES/VARIABLE_VALUE'].tolist() == [[0.0, 0.0]] * 3


def test_python_state_is_refused_rather_than_frozen(tmp_path):
  class Counter(tf.train.experimental.PythonState):
    value = 0

    def serialize(self):
      return str(self.value)

    def deserialize(self, string_value):
      self.value = int(string_value)

  with pytest.raises(ValueError, match='Python state'):
    TracedCheckpoint(counter=Counter()).write(str(tmp_path / 'c'))
