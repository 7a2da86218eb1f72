"""Per-task rounds on the workers: a step starts only while its task's open update has room.

Doersch & Zisserman 2017, §4: synchronous training "accumulates gradients from all workers,
applies the accumulated update while all workers wait, and then sends back identical
parameters to all workers, preventing stale gradients"; their hybrid accumulates "from all
workers that are working on a single task" and applies a task's aggregate "without
synchronizing with other tasks". So a task's workers wait for their own task's update and
never for another task's.

`ClusterCoordinator` cannot pin a closure to a worker (any idle worker takes the next one,
and the worker's dataset decides its task, distributed.py), so the coordinator cannot hold a
worker back. The worker does it, in its closure, before it reads any weight:

* Each task has a counter on a parameter server, `epoch * EPOCH + BIAS + count`: `epoch`
  is the task's updates applied in this run, `count` the steps admitted since. A closure
  claims a place with an atomic fetch-and-increment (`ResourceCountUpTo`, which holds the
  variable's lock, unlike `assign_add` followed by a read). Places `count < m` are admitted
  (m = the closures one update takes: K_t, or 1 when a closure runs its K_t steps itself);
  the others poll until the epoch moves on, then claim again. The first poll comes after
  `POLL_SECONDS`, each later one after twice the previous nap, up to `POLL_MAX_SECONDS`.
* The coordinator's update of a task re-opens its counter at the next epoch with count 0,
  after the weights are updated (a control dependency in the same function), so a closure
  admitted in the new epoch reads the new weights.
* A claim can be lost: its worker died and the closure re-ran elsewhere. The closure's
  gradient slot is unique among closures in flight, so each slot records the (task, epoch)
  of the place its closure holds: a re-run of the same closure on a worker of the same task
  keeps that place; on a worker of another task it gives the place back. A place lost in
  any other way (a parameter server restart loses the counters, but that restarts the run)
  is recovered by `timeout_seconds`: a closure that waited that long runs anyway, at the
  current weights; its result completes the round, whose update re-opens the counter.
* Each closure returns the epoch it was admitted in; the coordinator counts a result whose
  epoch is not the task's current one when its update is applied as stale (only possible
  after a timeout), and reports it.

BIAS keeps a stray give-back after a re-open from borrowing from the epoch bits (at worst one
extra place in that round). Closures never wait under 'sync' (rounds of one closure per
worker, updates between them) or 'async' (every step applied alone, no waiting by design),
nor with `train.wait_for_update: false`.
"""

from __future__ import annotations

from typing import List, Tuple

import tensorflow as tf

# tf.data's SleepDataset, the only TF op that waits without using a core, has no public wrapper; this
# private one exists on both dependency lines (TF 2.15.1 and 2.20; tests/train/admission_test.py uses it).
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

EPOCH = 1 << 32
BIAS = 1 << 20
# A waiting worker's naps between two reads: POLL_SECONDS first, doubling up to POLL_MAX_SECONDS. A round's wait
# is the task's slowest step, ~0.1-1 s at paper scale and 10-200 ms in the tests. A poll is not a cheap RPC: the
# loop runs partitioned between the worker and the parameter server, ~0.6 ms of PS CPU per poll measured
# (benchmarks/README.md, admission_poll.py), so a fixed 2 ms with ~60 workers waiting at paper scale would take
# ~18 PS cores. The backoff keeps short waits short (2, 4, 8, 16 ms) and caps long ones at 60 / 20 ms = 3,000
# polls/s (~1.8 cores by the same measure) for ~10 ms of mean added wait. Engineering choices, not the paper's.
POLL_SECONDS = 0.002
POLL_MAX_SECONDS = 0.02
# ResourceCountUpTo fails above its limit; the counter never gets near it (epochs * 2^32).
_LIMIT = 1 << 62


def _nap(seconds) -> tf.Tensor:
  """Waits `seconds` (a float, or a float64 tensor) inside a graph, on the device that runs it.

  take(1): a second read would wait again.
  """
  micros = tf.cast(tf.round(tf.convert_to_tensor(seconds, tf.float64) * 1e6), tf.int64)
  pause = tf.data.Dataset.from_tensors(0).apply(tf_data_testing.sleep(micros)).take(1)
  return pause.get_single_element()


def backoff(nap: tf.Tensor) -> tf.Tensor:
  """The nap after `nap` seconds (float64): twice as long, at most `POLL_MAX_SECONDS`."""
  return tf.minimum(nap * 2.0, tf.constant(POLL_MAX_SECONDS, tf.float64))


class RoundGate(tf.Module):
  """Per-task admission counters and per-slot claims, on the parameter servers."""

  def __init__(self, closures_per_round: List[int], num_slots: int, timeout_seconds: float, name: str = 'round_gate'):
    """Creates the counters (inside the strategy scope, so they live on the parameter servers).

    Args:
      closures_per_round: per task index, the closures one update of that task takes.
      num_slots: the trainer's gradient slots (a closure's slot names its claim).
      timeout_seconds: a closure waits at most this long, then runs (see the module docstring).
      name: module name.

    Raises:
      ValueError: a non-positive count or timeout.
    """
    super().__init__(name=name)
    if min(closures_per_round) < 1 or timeout_seconds <= 0:
      raise ValueError(
        f'closures_per_round must be >= 1 and timeout positive, got {closures_per_round}, {timeout_seconds}'
      )
    self.closures_per_round = list(closures_per_round)
    self.timeout_seconds = float(timeout_seconds)
    self.counters = [
      tf.Variable(tf.constant(BIAS, tf.int64), trainable=False, name=f'admitted_{i}')
      for i in range(len(closures_per_round))
    ]
    self.slot_task = tf.Variable(tf.fill([num_slots], tf.constant(-1, tf.int64)), trainable=False, name='slot_task')
    self.slot_epoch = tf.Variable(tf.zeros([num_slots], tf.int64), trainable=False, name='slot_epoch')

  # ----- worker side (inside the closure) -----

  def _claim(self, task: int) -> tf.Tensor:
    return tf.raw_ops.ResourceCountUpTo(resource=self.counters[task].handle, limit=_LIMIT, T=tf.int64)

  def admit(self, task: int, slot: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Waits until task `task` (a Python index: the caller's branch) admits this closure.

    Args:
      task: the task the closure's worker serves.
      slot: int32 scalar, the closure's gradient slot.

    Returns:
      (epoch, seconds waited): int64 epoch of the weights the step will read (admitted
      places: exact; after a timeout, the epoch current when it gave up), float64.
      Put the step's weight reads under a control dependency on the epoch.
    """
    counter, m = self.counters[task], self.closures_per_round[task]
    start = tf.timestamp()
    slot = tf.reshape(tf.cast(slot, tf.int64), [1])
    held_task, held_epoch = tf.gather(self.slot_task, slot)[0], tf.gather(self.slot_epoch, slot)[0]
    # A re-run of a closure that already holds a place: of this task, keep it; of another, give it back.
    # Each counter is read only in its own branch: a fresh slot (the usual case) costs no extra read.
    released = []
    for other, other_counter in enumerate(self.counters):
      if other != task:

        def give_back(c=other_counter):
          still_open = tf.equal(held_epoch, c.read_value() // EPOCH)
          return tf.cond(still_open, lambda: c.assign_add(-1).value(), lambda: tf.constant(0, tf.int64))

        released.append(tf.cond(tf.equal(held_task, other), give_back, lambda: tf.constant(0, tf.int64)))
    with tf.control_dependencies(released):
      now = counter.read_value()
    keep = tf.logical_and(tf.equal(held_task, task), tf.equal(held_epoch, now // EPOCH))
    first = tf.cond(keep, lambda: now // EPOCH * EPOCH + BIAS, lambda: self._claim(task))

    def blocked(x, nap):
      full = x % EPOCH - BIAS >= m
      return tf.logical_and(full, tf.timestamp() - start < self.timeout_seconds)

    def poll(x, nap):
      with tf.control_dependencies([_nap(nap)]):
        current = counter.read_value()
      return tf.cond(current // EPOCH > x // EPOCH, lambda: self._claim(task), lambda: x), backoff(nap)

    x, _ = tf.while_loop(blocked, poll, [first, tf.constant(POLL_SECONDS, tf.float64)])
    admitted = x % EPOCH - BIAS < m
    epoch = tf.where(admitted, x // EPOCH, counter.read_value() // EPOCH)
    record = [
      self.slot_task.scatter_update(tf.IndexedSlices(tf.where(admitted, tf.constant(task, tf.int64), -1)[None], slot)),
      self.slot_epoch.scatter_update(tf.IndexedSlices(epoch[None], slot)),
    ]
    with tf.control_dependencies(record):
      return tf.identity(epoch), tf.timestamp() - start

  # ----- coordinator side (inside the update's function) -----

  def reopen(self, task: int) -> tf.Operation:
    """Opens task `task`'s next epoch with no place taken (call after its weights are updated)."""
    counter = self.counters[task]
    return counter.assign((counter.read_value() // EPOCH + 1) * EPOCH + BIAS).op
