"""RoundGate in one process: places per epoch, waiting, re-opening, re-runs and timeouts (admission.py)."""

import threading
import time

import pytest
import tensorflow as tf

from mtssl_tf.train.admission import BIAS, EPOCH, POLL_MAX_SECONDS, POLL_SECONDS, RoundGate, _nap, backoff

WAIT = 0.3  # Timeout of the gates that must give up (seconds); the tests' other waits end well before it.


def _gate(places=(2, 1), timeout=WAIT):
  gate = RoundGate(list(places), num_slots=4, timeout_seconds=timeout)
  spec = [tf.TensorSpec([], tf.int32)]
  functions = {task: tf.function(lambda slot, task=task: gate.admit(task, slot), input_signature=spec) for task in
               range(len(places))}  # fmt: skip
  admit = {task: lambda slot, f=f: f(tf.constant(slot, tf.int32)) for task, f in functions.items()}
  reopen = {task: _reopen_fn(gate, task) for task in range(len(places))}
  return gate, admit, reopen


def _reopen_fn(gate, task):
  @tf.function
  def reopen():
    gate.reopen(task)  # Stateful, so it runs though the function returns nothing.

  return reopen


def _count(gate, task):
  value = int(gate.counters[task].numpy())
  return value // EPOCH, value % EPOCH - BIAS  # (epoch, places taken)


def test_places_then_a_timeout_then_the_next_epoch():
  gate, admit, reopen = _gate()
  epochs = [int(admit[0](slot)[0]) for slot in (0, 1)]
  assert epochs == [0, 0] and _count(gate, 0) == (0, 2)
  # The round is full: a third closure waits, then gives up at the timeout and runs at the current epoch.
  epoch, waited = admit[0](2)
  assert int(epoch) == 0 and float(waited) >= WAIT
  assert int(gate.slot_task.numpy()[2]) == -1  # It holds no place (a re-run of it must claim one).
  reopen[0]()
  assert _count(gate, 0) == (1, 0)
  epoch, waited = admit[0](3)
  assert int(epoch) == 1 and float(waited) < WAIT and _count(gate, 0) == (1, 1)
  assert _count(gate, 1) == (0, 0)  # Other tasks are untouched.


def test_a_waiting_closure_runs_when_its_task_reopens():
  gate, admit, reopen = _gate(places=(1,), timeout=60.0)
  assert int(admit[0](0)[0]) == 0
  out = {}
  waiter = threading.Thread(target=lambda: out.update(result=admit[0](1)))
  waiter.start()
  time.sleep(0.3)
  assert waiter.is_alive()  # Waiting for the update, not for the timeout (60 s).
  reopen[0]()
  waiter.join(timeout=30)
  assert not waiter.is_alive()
  epoch, waited = out['result']
  assert int(epoch) == 1 and 0.3 <= float(waited) < 30


def test_a_rerun_keeps_its_place_in_its_task_and_gives_it_back_elsewhere():
  gate, admit, reopen = _gate(places=(2, 1))
  assert int(admit[0](1)[0]) == 0 and _count(gate, 0) == (0, 1)
  # The same closure (slot 1) runs again on a worker of the same task: the place it holds is kept.
  assert int(admit[0](1)[0]) == 0 and _count(gate, 0) == (0, 1)
  # ... and again on a worker of task 1: task 0's place is given back, one of task 1's taken.
  assert int(admit[1](1)[0]) == 0 and _count(gate, 0) == (0, 0) and _count(gate, 1) == (0, 1)
  # After task 1's update, the slot's old place is of a closed epoch: a new closure in it claims afresh.
  reopen[1]()
  assert int(admit[1](1)[0]) == 1 and _count(gate, 1) == (1, 1)


def test_polls_back_off_from_2_ms_to_the_cap():
  naps = [POLL_SECONDS]
  for _ in range(6):
    naps.append(float(backoff(tf.constant(naps[-1], tf.float64))))
  assert naps == pytest.approx([0.002, 0.004, 0.008, 0.016, 0.02, 0.02, 0.02])
  assert POLL_MAX_SECONDS == naps[-1]


def test_a_nap_of_a_tensor_duration_waits_at_least_that_long():
  nap = tf.function(lambda seconds: _nap(seconds))
  nap(tf.constant(0.001, tf.float64))  # Trace first: the timing below is the nap alone.
  start = time.perf_counter()
  nap(tf.constant(0.05, tf.float64))
  assert time.perf_counter() - start >= 0.05  # A sleep never ends early; no upper bound on a loaded machine.


def test_bad_arguments():
  with pytest.raises(ValueError, match='closures_per_round'):
    RoundGate([0], num_slots=1, timeout_seconds=1.0)
  with pytest.raises(ValueError, match='timeout'):
    RoundGate([1], num_slots=1, timeout_seconds=0.0)
