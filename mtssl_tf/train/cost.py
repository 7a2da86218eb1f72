"""Compute accounting (Doersch & Zisserman 2017, §4): cost = sum over tasks of steps x cost per step.

Tasks run at different speeds, so the paper compares networks at equal compute, not
equal steps: each task's step count is weighted by its cost per step (GPU-hours in
the paper), and a snapshot is taken whenever the total crosses the next tick (the
paper's ticks are ~2.4K GPU-hours). The counters are variables tracked by this
`tf.Module`, so they live in the checkpoint and survive restarts.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping

import tensorflow as tf


class CostTracker(tf.Module):
  """Per-task step counters, their weighted total, and compute ticks."""

  def __init__(self, cost_per_step: Mapping[str, float], tick: float, name: str = 'cost'):
    """Creates the counters.

    Args:
      cost_per_step: task -> cost of one of its steps (any unit, e.g. GPU-hours).
      tick: a checkpoint is due each time the total cost crosses a multiple of this.
      name: module name.

    Raises:
      ValueError: a negative cost or a non-positive tick.
    """
    super().__init__(name=name)
    if tick <= 0:
      raise ValueError(f'cost tick must be positive, got {tick}')
    bad = {t: c for t, c in cost_per_step.items() if c < 0}
    if bad:
      raise ValueError(f'cost per step must be >= 0, got {bad}')
    self.cost_per_step = dict(cost_per_step)
    self.tick = float(tick)
    self.steps = {task: tf.Variable(0, dtype=tf.int64, trainable=False, name=f'{task}_steps') for task in cost_per_step}
    # The last tick index already checkpointed; restored with the counters.
    self.last_tick = tf.Variable(0, dtype=tf.int64, trainable=False, name='last_tick')

  def add(self, task: str, steps=1):
    """Counts `steps` more steps of `task` (a Python int or an integer tensor, e.g. inside a tf.function).

    Returns:
      The assign op.
    """
    return self.steps[task].assign_add(tf.cast(steps, tf.int64))

  def task_steps(self) -> Dict[str, int]:
    """Steps per task so far."""
    return {task: int(v.numpy()) for task, v in self.steps.items()}

  def total(self) -> float:
    """Sum over tasks of steps x cost per step."""
    return sum(self.cost_per_step[t] * int(v.numpy()) for t, v in self.steps.items())

  def due_ticks(self) -> List[int]:
    """Ticks crossed since the last call that marked one; marks them taken.

    Returns:
      Tick indices (1-based) now due, usually none or one; the caller checkpoints
      once per call that returns any.
    """
    current = int(math.floor(self.total() / self.tick + 1e-9))
    last = int(self.last_tick.numpy())
    if current <= last:
      return []
    self.last_tick.assign(current)
    return list(range(last + 1, current + 1))


def compute_at(prefix: str, cost_per_step: Mapping[str, float]) -> float:
  """The compute a pre-training checkpoint had reached: its `CostTracker` counters x `cost_per_step`.

  The trainers save the tracker as the checkpoint's `cost`; it is restored into a fresh
  tracker of the same tasks, so the checkpoint's layout is read by TensorFlow, not by
  matching key strings.

  Args:
    prefix: a checkpoint prefix of a pre-training run.
    cost_per_step: the run's enabled tasks -> cost of one step (its config).

  Raises:
    ValueError: the checkpoint has no counter for one of the tasks.
  """
  tracker = CostTracker(cost_per_step, tick=1.0)
  status = tf.train.Checkpoint(cost=tracker).read(prefix)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f'{prefix}: no compute counters for tasks {sorted(cost_per_step)}: {e}') from None
  return tracker.total()
