"""One-process multi-task training: tasks take turns on a shared trunk.

This is the single-machine form of Doersch & Zisserman's scheme (§3.1, §4): one head
active per step, each task with its own RMSProp (so its own moving averages of
squared gradients for the shared trunk), the overall objective the sum of task
losses. It serves tests, the pretext sanity check of every task, and debugging; the
cluster trainer distributes the same per-task steps with the same optimizer, built
from the same `train.*` config fields (`mtssl_tf.train.optim.from_config`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, Iterator, List, Mapping, Optional

import tensorflow as tf
from absl import logging

from mtssl_tf.data import pipeline
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import optim
from mtssl_tf.train.experiment import TrainConfig
from mtssl_tf.train.knn import KnnMonitor


@dataclasses.dataclass
class TaskLog:
  """Per-task history: metric name -> one value per logging window."""

  steps: List[int] = dataclasses.field(default_factory=list)
  values: Dict[str, List[float]] = dataclasses.field(default_factory=dict)

  def add(self, step: int, metrics: Mapping[str, float]) -> None:
    """Appends one logging window."""
    self.steps.append(step)
    for key, value in metrics.items():
      self.values.setdefault(key, []).append(float(value))


class LocalTrainer:
  """Round-robin multi-task training in one process, with summaries under `<task>/<metric>`."""

  def __init__(
    self,
    model: MultiTaskModel,
    datasets: Mapping[str, tf.data.Dataset],
    train: Optional[TrainConfig] = None,
    summary_dir: Optional[str] = None,
    knn_monitor: Optional[KnnMonitor] = None,
  ):
    """Creates the trainer.

    Args:
      model: the multi-task model (variables are created on the first batches).
      datasets: task name -> batched, repeated dataset.
      train: the experiment's `train` config; its `optimizer`, learning rate and `rmsprop_*` /
        `sgd_*` fields make the per-task optimizer, as in the distributed trainer (None: the defaults).
      summary_dir: where to write TensorBoard events (None: no summaries).
      knn_monitor: the kNN monitor (`knn.local_monitor`), run on the live trunk at compute ticks (None: off).
    """
    self.model = model
    self.names = list(datasets)
    self.iterators: Dict[str, Iterator] = {name: iter(ds) for name, ds in datasets.items()}
    self.metrics = {name: model.tasks[name].metrics() for name in self.names}
    self.skips = {name: pipeline.SkipCounter(name) for name in self.names}
    self.logs = {name: TaskLog() for name in self.names}
    # Variables (model and optimizer slots) are created eagerly, before any tf.function
    # traces a step: a step must not create variables when it is retraced.
    model.build_all({name: next(self.iterators[name]) for name in self.names})
    self.variables = {name: model.task_variables(name) for name in self.names}
    self.optimizer = optim.from_config(train if train is not None else TrainConfig(), self.variables)
    self.writer = tf.summary.create_file_writer(summary_dir) if summary_dir else None
    self.step_fns = {name: self._make_step(name) for name in self.names}
    self.global_step = 0
    self.knn = knn_monitor

  def _make_step(self, name: str):
    task = self.model.tasks[name]
    metrics = self.metrics[name]

    @tf.function
    def step(batch):
      total, task_loss, outputs, grads, variables = self.model.compute_gradients(name, batch)
      self.optimizer.apply(name, zip(grads, variables))
      task.update_metrics(metrics, outputs, batch, task_loss)
      return total

    return step

  def run(self, steps: int, log_every: int = 50) -> Dict[str, TaskLog]:
    """Trains `steps` steps in total, cycling through the tasks.

    Returns:
      The per-task logs (metric means over each window of `log_every` steps per task).
    """
    start = time.perf_counter()
    for _ in range(steps):
      name = self.names[self.global_step % len(self.names)]
      batch = next(self.iterators[name])
      loss = self.step_fns[name](batch)
      if not tf.math.is_finite(loss):
        raise FloatingPointError(f'{name}: non-finite loss at step {self.global_step}')
      self.skips[name].update(batch[pipeline.SKIPPED_KEY], batch.get(pipeline.SKIPPED_SOURCES_KEY))
      self.global_step += 1
      if self.knn is not None:
        self.knn.after_step(self.model, name, self.global_step)
      task_step = self.optimizer.iterations[name].numpy()
      if task_step % log_every == 0:
        self._log(name, int(task_step), time.perf_counter() - start)
    if self.writer:
      self.writer.flush()
    return self.logs

  def _log(self, name: str, task_step: int, elapsed: float) -> None:
    values = {key: float(m.result()) for key, m in self.metrics[name].items()}
    values['skipped_examples'] = self.skips[name].count
    self.logs[name].add(task_step, values)
    logging.info(
      '%s step %d (%.0f s): %s', name, task_step, elapsed, ', '.join(f'{k} {v:.4f}' for k, v in values.items())
    )
    if self.writer:
      with self.writer.as_default(step=task_step):
        for key, value in values.items():
          tf.summary.scalar(f'{name}/{key}', value)
    for metric in self.metrics[name].values():
      metric.reset_state()
