"""The fine-tuning engine every evaluation and transfer protocol trains with.

Pre-training has its own trainers (`local.py`, `distributed.py`); everything trained
after it (linear probes, the supervised baseline, detection, depth, the transfer
student and its probes) runs through `FineTune`: one place for resuming from the last
checkpoint (with a clear error when it does not fit the config), the step loop with a
NaN check, skipped-record counting, progress lines, `<name>/<tag>` TensorBoard
summaries of each logging window's means, the learning rate and steps/s, periodic
and final checkpoints, and timing. A protocol supplies its model and optimizer, its
data and a step function `batch -> (loss, {tag: value})`; the engine does the rest.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.data import pipeline


@dataclasses.dataclass
class LoopConfig(Config):
  """The step loop's fields, shared by every protocol that trains through `FineTune`.

  Attributes:
    steps: training steps.
    log_every_steps: console progress and window summaries.
    checkpoint_every_steps: checkpoints (the last step is always saved).
  """

  steps: int = 1000
  log_every_steps: int = 100
  checkpoint_every_steps: int = 5000

  def check_loop(self, section: str) -> None:
    """Raises `ConfigError` naming `<section>.<key>` for a non-positive loop field."""
    for key in ('steps', 'log_every_steps', 'checkpoint_every_steps'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{section}.{key}: must be positive, got {getattr(self, key)}')


@dataclasses.dataclass
class SGDConfig(Config):
  """Momentum SGD with a staircase decay and L2 weight decay, shared by the classification protocols.

  Attributes:
    learning_rate: the initial learning rate.
    momentum: SGD momentum.
    lr_decay_factor: the rate is multiplied by this at each decay.
    weight_decay: L2 weight decay on the trained kernels.
  """

  learning_rate: float = 0.01
  momentum: float = 0.9
  lr_decay_factor: float = 0.1
  weight_decay: float = 5e-4

  def check_sgd(self, section: str) -> None:
    """Raises `ConfigError` naming `<section>.<key>` for an impossible optimizer value."""
    if self.learning_rate <= 0:
      raise ConfigError(f'{section}.learning_rate: must be positive, got {self.learning_rate}')
    if not 0 <= self.momentum < 1:
      raise ConfigError(f'{section}.momentum: must be in [0, 1), got {self.momentum}')
    if not 0 < self.lr_decay_factor <= 1:
      raise ConfigError(f'{section}.lr_decay_factor: must be in (0, 1], got {self.lr_decay_factor}')
    if self.weight_decay < 0:
      raise ConfigError(f'{section}.weight_decay: must be >= 0, got {self.weight_decay}')


class FineTune:
  """Checkpointed training of one protocol's model, in `<out_dir>/checkpoints`, summaries in `out_dir`.

  Usage:
    tune = FineTune('depth', out_dir, steps=cfg.steps, log_every_steps=..., checkpoint_every_steps=...)
    start = tune.restore(optimizer, model=model)      # 0, or the step of the last checkpoint
    stats = tune.fit(step_fn, dataset, schedule=schedule)
    tune.scalars({'delta1': 0.8})                       # final metrics, at the last step

  Args:
    name: protocol name: the summary prefix, the log name and the checkpoint's description.
    out_dir: where summaries and `checkpoints/` go.
    steps: the last step to train to.
    log_every_steps: a progress line and window-mean summaries every this many steps.
    checkpoint_every_steps: a checkpoint every this many steps (and at the last).
    progress: log progress lines.
    max_to_keep: checkpoints kept.
    summary_every_steps: if set, the step's own values and learning rate are written
      every this many steps (and at the last), and the logging windows write only
      steps/s and extras; otherwise each window writes its means.
  """

  def __init__(
    self,
    name: str,
    out_dir: str,
    *,
    steps: int,
    log_every_steps: int,
    checkpoint_every_steps: int,
    progress: bool = True,
    max_to_keep: int = 2,
    summary_every_steps: int = 0,
  ):
    self.name = name
    self.out_dir = out_dir
    self.steps = int(steps)
    self.log_every_steps = int(log_every_steps)
    self.checkpoint_every_steps = int(checkpoint_every_steps)
    self.progress = progress
    self.max_to_keep = max_to_keep
    self.summary_every_steps = int(summary_every_steps)
    self.manager: Optional[tf.train.CheckpointManager] = None
    self.optimizer: Optional[tf.keras.optimizers.Optimizer] = None
    self._writer = None

  @property
  def writer(self):
    """The summary writer of `out_dir` (created on first use)."""
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.out_dir)
    return self._writer

  @property
  def step(self) -> int:
    """Steps done (the optimizer's iterations)."""
    return int(self.optimizer.iterations.numpy())

  def restore(self, optimizer: tf.keras.optimizers.Optimizer, variables: Optional[Sequence] = None, **objects) -> int:
    """Checkpoints `optimizer` and `objects`; restores the latest save of `<out_dir>/checkpoints` if any.

    Args:
      optimizer: the protocol's optimizer; its iterations are the step count.
      variables: the trainable variables; the optimizer's slots are created for them
        first, so a resumed momentum is restored rather than re-created as zeros.
      **objects: the other trackables to save (models, heads), by checkpoint name.

    Returns:
      The step to continue from (0 for a fresh run).

    Raises:
      ValueError: the saved objects do not fit the ones built from this config (the
        message names the checkpoint and says how to start afresh).
    """
    self.optimizer = optimizer
    if variables is not None:
      optimizer.build(list(variables))
    checkpoint = tf.train.Checkpoint(optimizer=optimizer, **objects)
    directory = os.path.join(self.out_dir, 'checkpoints')
    self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=self.max_to_keep)
    if self.manager.latest_checkpoint:
      try:
        checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
      except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ValueError(
          f'{self.name} checkpoint {self.manager.latest_checkpoint} does not fit this config (use a fresh '
          f'model_dir or delete {directory}): {str(e).splitlines()[0][:300]}'
        ) from None
      if self.progress:
        logging.info('%s: resuming from %s at step %d', self.name, self.manager.latest_checkpoint, self.step)
    return self.step

  def fit(
    self,
    step_fn: Callable[[Dict[str, tf.Tensor]], Any],
    data: Iterable,
    *,
    schedule: Any = None,
    log_keys: Sequence[str] = ('loss',),
    extra_summaries: Optional[Callable[[], Dict[str, float]]] = None,
    empty_message: str = 'the training source yields no batch',
  ) -> Dict[str, float]:
    """Trains from the restored step to `steps`.

    Args:
      step_fn: batch -> (total loss, {tag: value}) or {tag: value} holding 'loss'
        (a tf.function that applies the update).
      data: training batches (a `tf.data` pipeline; `num_skipped` counted if present).
      schedule: the learning rate (a schedule, a float, or None to read the
        optimizer's); logged as `<name>/learning_rate`, the rate the step used.
      log_keys: the window means named in the progress line.
      extra_summaries: more scalars per logging window.
      empty_message: the error when `data` ends before `steps`.

    Returns:
      {'train_seconds', 'seconds_per_step' (first, tracing step left out),
      'num_skipped_train', 'steps_trained'}.

    Raises:
      FloatingPointError: a non-finite loss, naming the step and the last checkpoint.
      ValueError: `data` ended early.
    """
    if self.manager is None:
      raise RuntimeError('FineTune.fit before restore')
    skips = pipeline.SkipCounter(f'{self.name}/train')
    start = self.step
    sums: Dict[str, float] = {}
    count, tick = 0, time.perf_counter()
    began, first_done = time.perf_counter(), None
    iterator = iter(data)
    for step in range(start + 1, self.steps + 1):
      try:
        batch = next(iterator)
      except StopIteration:
        raise ValueError(f'{self.name}: {empty_message} (step {step} of {self.steps})') from None
      out = step_fn(batch)
      if isinstance(out, dict):
        total, metrics = out.get('total_loss', out.get('loss')), out
      else:
        total, metrics = out
      if not math.isfinite(float(total)):
        raise FloatingPointError(
          f'{self.name}: non-finite loss at step {step} ({float(total)}, step values '
          f'{ {k: float(v) for k, v in metrics.items()} }); last checkpoint: {self.manager.latest_checkpoint}'
        )
      if isinstance(batch, dict) and pipeline.SKIPPED_KEY in batch:
        skips.update(batch[pipeline.SKIPPED_KEY], batch.get(pipeline.SKIPPED_SOURCES_KEY))
      for tag, value in metrics.items():
        sums[tag] = sums.get(tag, 0.0) + float(value)
      count += 1
      if self.summary_every_steps and (step % self.summary_every_steps == 0 or step == self.steps):
        self.scalars(dict({k: float(v) for k, v in metrics.items()}, learning_rate=self._rate(schedule, step)), step)
      if first_done is None:
        first_done = time.perf_counter()
      if step % self.log_every_steps == 0 or step == self.steps:
        self._log_window(step, sums, count, tick, schedule, log_keys, extra_summaries)
        sums, count, tick = {}, 0, time.perf_counter()
      if step % self.checkpoint_every_steps == 0 or step == self.steps:
        self.manager.save(checkpoint_number=step)
    done, end = self.step - start, time.perf_counter()
    steady = (end - first_done) / (done - 1) if done > 1 and first_done else end - began
    return {'train_seconds': end - began, 'seconds_per_step': steady, 'num_skipped_train': skips.count,
            'steps_trained': done}  # fmt: skip

  def _log_window(self, step, sums, count, tick, schedule, log_keys, extra_summaries) -> None:
    means = {tag: value / count for tag, value in sums.items()}
    means['learning_rate'] = self._rate(schedule, step)
    means['steps_per_second'] = count / max(time.perf_counter() - tick, 1e-9)
    means.update(extra_summaries() if extra_summaries else {})
    if self.progress:
      shown = ', '.join(f'{k} {means[k]:.4f}' for k in log_keys if k in means)
      logging.info('%s step %d/%d: %s, lr %.3g, %.2f steps/s', self.name, step, self.steps, shown,
                   means['learning_rate'], means['steps_per_second'])  # fmt: skip
    if self.summary_every_steps:  # The step values went out already; keep the window's rate.
      means = {k: v for k, v in means.items() if k not in sums and k != 'learning_rate'}
    self.scalars(means, step)

  def _rate(self, schedule, step: int) -> float:
    # The rate the last step used: the schedule at the iteration count before it.
    if schedule is None:
      rate = self.optimizer.learning_rate
      return float(rate(step - 1) if callable(rate) else rate)
    return float(schedule(step - 1)) if callable(schedule) else float(schedule)

  def scalars(self, values: Dict[str, float], step: Optional[int] = None) -> None:
    """Writes `<name>/<tag>` scalars at `step` (default: the current step) and flushes."""
    with self.writer.as_default(step=self.step if step is None else step):
      for tag, value in values.items():
        tf.summary.scalar(f'{self.name}/{tag}', float(value))
    self.writer.flush()

  @property
  def latest_checkpoint(self) -> Optional[str]:
    return self.manager.latest_checkpoint if self.manager else None
