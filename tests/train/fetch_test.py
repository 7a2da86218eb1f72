"""`fetch_step`: a finished step whose worker died before its result was read is re-run, not fatal."""

import pytest
import tensorflow as tf

from mtssl_tf.train.distributed import fetch_step


class _Remote:
  """A RemoteValue stand-in: raises `error` on fetch, else returns `value`."""

  def __init__(self, value=None, error=None):
    self.value, self.error = value, error

  def fetch(self):
    if self.error is not None:
      raise self.error
    return self.value


def _lost(target='/job:worker/replica:0/task:1'):
  return tf.errors.UnavailableError(None, None, f'Socket closed; GRPC error information from remote target {target}')


def test_lost_result_is_re_run_once_and_counted_once():
  scheduled = []

  def reschedule():
    scheduled.append(1)
    return _Remote(value=('rerun', 1.0))

  assert fetch_step(_Remote(error=_lost()), reschedule) == ('rerun', 1.0)
  assert len(scheduled) == 1
  # A result that was there is returned as is, nothing re-run.
  assert fetch_step(_Remote(value=('first', 2.0)), reschedule) == ('first', 2.0) and len(scheduled) == 1


def test_parameter_server_failures_and_exhausted_retries_raise():
  reruns = []
  with pytest.raises(tf.errors.UnavailableError, match='/job:ps'):
    fetch_step(_Remote(error=_lost('/job:ps/replica:0/task:0')), lambda: reruns.append(1))
  assert not reruns  # A PS failure is the launcher's to handle (exit 75, restart from checkpoint).

  def always_lost():
    reruns.append(1)
    return _Remote(error=tf.errors.AbortedError(None, None, 'worker gone'))

  with pytest.raises(tf.errors.AbortedError, match='worker gone'):
    fetch_step(_Remote(error=_lost()), always_lost, retries=2)
  assert len(reruns) == 2
