"""Closures in flight on the cluster, taken as they finish (Doersch & Zisserman 2017, §4).

§4: "apply the aggregated gradients from a single task when ready, without
synchronizing with other tasks". The coordinator keeps a window of closures in flight
(`train.closures_per_worker` per worker); whichever finishes first is taken first, so a task whose steps are
10x slower (colorization at stride 8 against relative position) never holds back
another task's results, nor keeps the fast task's workers idle while the window is
full of finished-but-unread results. Taking them in schedule order instead (the
trainer's old behaviour, kept as `order='scheduled'` for benchmarks/task_balance.py)
waits on the oldest closure while newer ones sit finished.

How: `ClusterCoordinator` offers `fetch()` (one value, blocking) and `join()`/`done()`
(all values); nothing waits for "any one". Each scheduled closure gets a daemon thread
that blocks in its `RemoteValue.fetch()` and queues the outcome; the coordinator's loop
reads the queue. (The coordinator's worker threads already copy a finished closure's
outputs to the coordinator before marking it done, so `fetch()` returns without an RPC;
the threads only wait.) Daemon threads, so a run that ends with an error never hangs
on a closure whose worker is gone.

A finished closure keeps its outputs on its worker until they are copied: if the worker
dies in between, `fetch()` raises `UnavailableError` outside any closure, which would
end training. Such a closure has written its gradient slot but has not been counted,
so it is scheduled again under the same key (same slot, an assignment), as a
coordinator re-run does, and every count stays exact. Errors from a parameter server
are cluster failures and pass.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Callable, Dict, Hashable, NamedTuple, Optional, Set

import tensorflow as tf
from absl import logging

ORDERS = ('finished', 'scheduled')

# A closure's result is read back from its worker when fetched; these many re-runs of a
# closure whose worker died in between are tried before giving up.
FETCH_RETRIES = 3


class Taken(NamedTuple):
  """A closure's result, taken from the window."""

  key: Hashable
  value: object
  # The result had arrived while the caller waited for another closure (only in
  # 'scheduled' order: it was held behind an older, unfinished closure).
  held: bool


class InFlight:
  """Scheduled closures, each under a key, returned as they finish (or in schedule order)."""

  def __init__(
    self, schedule: Callable[[Hashable], object], order: str = 'finished', retries: int = FETCH_RETRIES
  ):  # fmt: skip
    """Creates an empty window.

    Args:
      schedule: schedules the closure of a key and returns its `RemoteValue` (or anything
        with a blocking `fetch()`); called again with the same key to re-run it.
      order: 'finished' (the first closure to finish is taken first) or 'scheduled'
        (the oldest first, whatever finished after it).
      retries: re-runs of one closure whose worker died before its result was read.

    Raises:
      ValueError: an unknown `order`.
    """
    if order not in ORDERS:
      raise ValueError(f'order must be one of {ORDERS}, got {order!r}')
    self.order = order
    self._schedule = schedule
    self._retries = retries
    self._outcomes: queue.SimpleQueue = queue.SimpleQueue()
    self._attempts: Dict[Hashable, int] = collections.OrderedDict()  # In schedule order.
    self._arrived: Dict[Hashable, object] = {}  # In arrival order.
    self._held: Set[Hashable] = set()

  def __len__(self) -> int:
    return len(self._attempts)

  def add(self, key: Hashable) -> None:
    """Schedules the closure of `key` (a key not in flight)."""
    if key in self._attempts:
      raise ValueError(f'{key!r} is already in flight')
    self._attempts[key] = 0
    self._start(key)

  def _start(self, key: Hashable) -> None:
    remote = self._schedule(key)
    attempt = self._attempts[key]

    def wait():
      try:
        outcome = (key, attempt, remote.fetch(), None)
      except Exception as e:  # noqa: BLE001 -- handed to the caller's thread, which decides.
        outcome = (key, attempt, None, e)
      self._outcomes.put(outcome)

    threading.Thread(target=wait, name=f'fetch-{key}', daemon=True).start()

  def _next_ready(self) -> Optional[Hashable]:
    if self.order == 'finished':
      return next(iter(self._arrived), None)
    oldest = next(iter(self._attempts))
    return oldest if oldest in self._arrived else None

  def next(self) -> Taken:
    """Waits for the next result (see `order`) and takes its closure out of the window.

    Raises:
      ValueError: nothing is in flight.
      tf.errors.UnavailableError, tf.errors.AbortedError: a parameter server failed, or
        `retries` re-runs of a closure all lost their workers.
      Exception: whatever error a closure raised.
    """
    if not self._attempts:
      raise ValueError('no closure is in flight')
    while True:
      key = self._next_ready()
      if key is not None:
        del self._attempts[key]
        held = key in self._held
        self._held.discard(key)
        return Taken(key, self._arrived.pop(key), held)
      # About to wait for another closure: whatever has arrived is held behind it.
      self._held.update(self._arrived)
      key, attempt, value, error = self._outcomes.get()
      if attempt != self._attempts.get(key):
        continue  # An outcome of an attempt already replaced (never expected; kept safe).
      if error is None:
        self._arrived[key] = value
        continue
      if not isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)):
        raise error
      if '/job:ps' in str(error) or attempt >= self._retries:
        raise error
      logging.warning('a finished closure lost its worker before its result was read (%s); re-running it',
                      str(error).splitlines()[0][:200])  # fmt: skip
      self._attempts[key] = attempt + 1
      self._start(key)
