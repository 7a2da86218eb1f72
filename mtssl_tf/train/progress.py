"""The coordinator's bookkeeping of a distributed run: batch metrics, logging windows, per-task tallies.

Kept apart from `distributed.py` so the trainer holds the step flow only; nothing here
touches a worker or a parameter server.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

# Metrics a task may report per batch (padded to this many in the closure's result).
MAX_BATCH_METRICS = 4


def batch_metric_names(name: str, metrics: Dict[str, tf.Tensor]) -> List[str]:
  """The names of task `name`'s batch metrics in the order a closure carries them.

  Raises:
    ValueError: the task reports more than `MAX_BATCH_METRICS` (none is dropped silently).
  """
  if len(metrics) > MAX_BATCH_METRICS:
    raise ValueError(
      f'{name}: batch_metrics reports {len(metrics)} metrics ({", ".join(sorted(metrics))}), more than the '
      f'{MAX_BATCH_METRICS} a worker closure carries (MAX_BATCH_METRICS in mtssl_tf/train/progress.py)'
    )
  return sorted(metrics)


class Window:
  """Per-task values of one logging window (and total steps since the run's start)."""

  def __init__(self, names: Sequence[str], previous: Optional[Window] = None):
    self.losses = {n: [] for n in names}
    self.metrics = {n: [] for n in names}
    # Running totals carry over from the previous window.
    self.total_steps = dict(previous.total_steps) if previous else {n: 0 for n in names}

  def add(self, name: str, loss: float, metrics, steps: int = 1) -> None:
    self.losses[name].append(loss)
    self.metrics[name].append(np.asarray(metrics))
    self.total_steps[name] += steps

  def means(self, name: str, metric_names: Sequence[str]) -> Optional[Dict[str, float]]:
    """Task `name`'s mean loss and batch metrics over the window; None if it reported nothing.

    `metric_names` name the first entries of each padded metrics vector (`batch_metric_names`);
    the padding is dropped.
    """
    if not self.losses[name]:
      return None
    values = {'loss': float(np.mean(self.losses[name]))}
    means = np.mean(self.metrics[name], axis=0)
    values.update({k: float(v) for k, v in zip(metric_names, means)})
    return values


class Tally:
  """Per task over one `run()`: closures fetched, seconds in closures, seconds waiting for admission."""

  def __init__(self, names: Sequence[str]):
    self.closures = {n: 0 for n in names}
    self.waited = {n: 0.0 for n in names}
    self._busy = {n: [0.0, np.inf, -np.inf] for n in names}  # Seconds in closures, first start, last end.

  def add(self, name: str, began: float, ended: float, waited: float) -> None:
    """One closure's result; `began` and `ended` on its worker's clock, `waited` outside that span."""
    self.closures[name] += 1
    seconds, first, last = self._busy[name]
    self._busy[name] = [seconds + ended - began, min(first, began), max(last, ended)]
    self.waited[name] += waited

  def busy_fraction(self, name: str, workers: int) -> float:
    """Time in closures over the pool's span (its first closure's start to its last one's end)."""
    seconds, first, last = self._busy[name]
    span = last - first
    return round(seconds / (workers * span), 4) if span > 0 else 0.0
