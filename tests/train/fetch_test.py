"""`InFlight`: closures taken as they finish; one whose worker died before its result was read is re-run."""

import threading

import pytest
import tensorflow as tf

from mtssl_tf.train.in_flight import InFlight


class _Remote:
  """A RemoteValue stand-in: `fetch` waits for `after` (if any), then raises `error` or returns `value`."""

  def __init__(self, value=None, error=None, after=None):
    self.value, self.error, self.after = value, error, after
    self.thread = None  # The thread that fetched it (InFlight's waiter).

  def fetch(self):
    self.thread = threading.current_thread()
    if self.after is not None:
      self.after()
    if self.error is not None:
      raise self.error
    return self.value


def _lost(target='/job:worker/replica:0/task:1'):
  return tf.errors.UnavailableError(None, None, f'Socket closed; GRPC error information from remote target {target}')


def _slow_first(order):
  """Closures 'slow' (scheduled first), 'fast1', 'fast2'; 'slow' finishes after both fast ones have been queued."""
  fast = {k: _Remote(value=k) for k in ('fast1', 'fast2')}
  started = threading.Event()

  def after_the_fast_ones():
    started.wait()
    for remote in fast.values():
      while remote.thread is None:  # Its waiter thread has not started yet.
        threading.Event().wait(0.001)
      remote.thread.join()  # The waiter exits right after queueing the outcome.

  remotes = {'slow': _Remote(value='slow', after=after_the_fast_ones), **fast}
  in_flight = InFlight(lambda key: remotes[key], order)
  for key in remotes:
    in_flight.add(key)
  started.set()
  return in_flight


def test_finished_closures_are_taken_before_an_older_unfinished_one():
  in_flight = _slow_first('finished')
  taken = [in_flight.next() for _ in range(3)]
  assert [t.key for t in taken] == ['fast1', 'fast2', 'slow']
  assert [t.value for t in taken] == ['fast1', 'fast2', 'slow']
  assert not any(t.held for t in taken) and len(in_flight) == 0


def test_scheduled_order_holds_finished_results_behind_the_oldest():
  # The old in-order fetch (kept for the benchmark's comparison): both fast results wait.
  in_flight = _slow_first('scheduled')
  taken = [in_flight.next() for _ in range(3)]
  assert [(t.key, t.held) for t in taken] == [('slow', False), ('fast1', True), ('fast2', True)]


def test_lost_result_is_re_run_under_its_key_once():
  scheduled = []
  remotes = iter([_Remote(error=_lost()), _Remote(value='rerun')])

  def schedule(key):
    scheduled.append(key)
    return next(remotes)

  in_flight = InFlight(schedule)
  in_flight.add((3, 1))
  assert in_flight.next() == ((3, 1), 'rerun', False)
  assert scheduled == [(3, 1), (3, 1)]  # The same slot and budget: the re-run overwrites its slot.


def test_parameter_server_failures_exhausted_retries_and_closure_errors_raise():
  in_flight = InFlight(lambda key: _Remote(error=_lost('/job:ps/replica:0/task:0')))
  in_flight.add('a')
  with pytest.raises(tf.errors.UnavailableError, match='/job:ps'):
    in_flight.next()  # A PS failure is the launcher's to handle (exit 75, restart from checkpoint).

  reruns = []

  def always_lost(key):
    reruns.append(key)
    return _Remote(error=tf.errors.AbortedError(None, None, 'worker gone'))

  in_flight = InFlight(always_lost, retries=2)
  in_flight.add('b')
  with pytest.raises(tf.errors.AbortedError, match='worker gone'):
    in_flight.next()
  assert len(reruns) == 3  # The first run and two re-runs.

  in_flight = InFlight(lambda key: _Remote(error=tf.errors.InvalidArgumentError(None, None, 'bad input')))
  in_flight.add('c')
  with pytest.raises(tf.errors.InvalidArgumentError, match='bad input'):
    in_flight.next()


def test_misuse_is_reported():
  with pytest.raises(ValueError, match="order must be one of \\('finished', 'scheduled'\\)"):
    InFlight(lambda key: None, 'fifo')
  in_flight = InFlight(lambda key: _Remote(value=1))
  with pytest.raises(ValueError, match='no closure is in flight'):
    in_flight.next()
  in_flight.add(0)
  with pytest.raises(ValueError, match='already in flight'):
    in_flight.add(0)
