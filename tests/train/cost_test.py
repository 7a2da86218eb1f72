"""Compute accounting: weighted totals, tick crossings, survival across a restart."""

import pytest
import tensorflow as tf

from mtssl_tf.train.cost import CostTracker


def test_total_is_steps_times_cost_per_task():
  tracker = CostTracker({'rp': 2.0, 'col': 0.5}, tick=10.0)
  tracker.add('rp', 3)
  tracker.add('col', 4)
  assert tracker.total() == pytest.approx(3 * 2.0 + 4 * 0.5)
  assert tracker.task_steps() == {'rp': 3, 'col': 4}


def test_ticks_fire_once_each_when_crossed():
  tracker = CostTracker({'rp': 3.0}, tick=10.0)
  fired = []
  for step in range(1, 11):
    tracker.add('rp')
    fired.append((step, tracker.due_ticks()))
  crossed = [(s, t) for s, t in fired if t]
  assert crossed == [(4, [1]), (7, [2]), (10, [3])]  # Totals 12, 21, 30.
  tracker.add('rp', 10)  # A jump over two ticks reports both at once.
  assert tracker.due_ticks() == [4, 5, 6]


def test_counters_survive_a_restart(tmp_path):
  tracker = CostTracker({'rp': 1.0, 'col': 2.0}, tick=5.0)
  tracker.add('rp', 4)
  tracker.add('col', 1)
  assert tracker.due_ticks() == [1]
  path = tf.train.Checkpoint(cost=tracker).save(str(tmp_path / 'ckpt'))
  restored = CostTracker({'rp': 1.0, 'col': 2.0}, tick=5.0)
  tf.train.Checkpoint(cost=restored).restore(path).assert_consumed()
  assert restored.task_steps() == {'rp': 4, 'col': 1} and restored.total() == 6.0
  assert restored.due_ticks() == []  # Tick 1 was already taken before the restart.
  restored.add('col', 2)
  assert restored.due_ticks() == [2]


def test_bad_settings():
  with pytest.raises(ValueError, match='tick'):
    CostTracker({'rp': 1.0}, tick=0)
  with pytest.raises(ValueError, match='rp'):
    CostTracker({'rp': -1.0}, tick=1)


def test_compute_at_reads_a_saved_tracker(tmp_path):
  from mtssl_tf.train.cost import compute_at

  tracker = CostTracker({'relative_position': 0.5, 'exemplar': 2.0}, tick=10.0)
  tracker.add('relative_position', 6)
  tracker.add('exemplar', 3)
  prefix = tf.train.Checkpoint(cost=tracker).save(str(tmp_path / 'ckpt'))
  assert compute_at(prefix, {'relative_position': 0.5, 'exemplar': 2.0}) == 0.5 * 6 + 2.0 * 3
  # The costs come from the config, the counts from the checkpoint.
  assert compute_at(prefix, {'relative_position': 1.0, 'exemplar': 1.0}) == 9
  with pytest.raises(ValueError, match='no compute counters'):
    compute_at(prefix, {'relative_position': 0.5, 'colorization': 1.0})
