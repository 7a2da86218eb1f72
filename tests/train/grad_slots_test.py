"""GradientSlots: idempotent slot writes and the mean over steps (no cluster needed)."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.train.grad_slots import GradientSlots

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def test_mean_divides_the_slot_sums_by_the_steps_they_hold():
  v = tf.Variable(tf.zeros([2, 3]))
  w = tf.Variable(tf.zeros([4]))
  slots = GradientSlots([v, w], num_slots=3)
  a, b = np.full([2, 3], 6.0, np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
  slots.write(tf.constant(0), [(tf.constant(a), v), (None, w)])  # A None gradient is skipped.
  slots.write(tf.constant(2), [(tf.constant(b), v)])
  # Slot 0 holds the sum of 2 steps (worker accumulation), slot 2 one step: 3 in all.
  np.testing.assert_allclose(slots.mean(v, tf.constant([0, 2]), tf.constant(3)).numpy(), (a + b) / 3)
  np.testing.assert_allclose(slots.mean(v, tf.constant([2]), tf.constant(1)).numpy(), b)
  assert not np.any(slots.buffer(w).numpy())


def test_a_rerun_write_overwrites_its_slot():
  v = tf.Variable(tf.zeros([2]))
  slots = GradientSlots([v], num_slots=2)
  slots.write(tf.constant(1), [(tf.constant([1.0, 2.0]), v)])
  slots.write(tf.constant(1), [(tf.constant([1.0, 2.0]), v)])  # The same closure run again.
  np.testing.assert_allclose(slots.mean(v, tf.constant([1]), tf.constant(1)).numpy(), [1.0, 2.0])
  np.testing.assert_allclose(slots.buffer(v).numpy()[0], [0.0, 0.0])


def test_needs_at_least_one_slot():
  with pytest.raises(ValueError, match='num_slots must be >= 1'):
    GradientSlots([tf.Variable(1.0)], num_slots=0)
