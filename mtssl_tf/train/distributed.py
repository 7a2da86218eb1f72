"""Multi-task pre-training under ParameterServerStrategy (Doersch & Zisserman 2017, §4).

How a step flows:
1. Worker pools. Worker w serves one task (`TaskConfig.workers` consecutive workers per
   task); its dataset decides what it trains, since `schedule` cannot pin a closure to a
   worker (`worker_input.py`: one element structure for all, each worker reading only its
   own task's pipeline).
2. Compute closures. The coordinator keeps `train.closures_per_worker` generic closures
   per worker in flight, each with a gradient slot of its own, and takes each as it
   finishes, not in schedule order (`in_flight.py`), so a slow task's closure holds back
   no other task's results and keeps no worker idle. On the worker a closure switches on
   the task id; in 'hybrid' mode it first waits until its task's open update has room
   (`admission.py`: §4's workers wait while their task's update is applied, so every
   gradient is taken at the weights of the update before), then computes that task's
   loss and gradients and assigns them into its slot on the parameter servers
   (`GradientSlots`; assignment makes re-run closures harmless). Under
   `train.accumulate: worker` a closure reads its weights once, runs its task's K_t
   steps on them in a loop on the worker and assigns the gradients' sum once (K_t
   times less traffic each way; `snapshot.py`).
3. Per-task aggregation. When K_t (`aggregate_steps`) steps of task t have finished,
   the coordinator averages exactly their slots and applies the result with t's own
   RMSProp slots (`PerTaskRMSProp`), then re-opens the task's admission. The apply runs
   from the coordinator, which is never re-run, with every op on the parameter servers;
   tasks never wait for each other ('hybrid'); 'async' is K_t = 1 and nobody waits;
   'sync' runs rounds of one closure per worker, then updates every task, then the next
   round.
4. Accounting. Each update counts the steps whose gradients it applied (in the same
   function as the apply): steps of a task that have not yet filled an aggregate are
   not counted, so a checkpoint's counters are exactly the steps in its weights, and a
   resume after a crash re-does (at most K_t - 1 per task) rather than loses counted
   work. Crossing a cost tick keeps a checkpoint (besides time-based ones; one
   checkpoint if an update crosses several); counters live in the checkpoint.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf import hardware
from mtssl_tf.data import pipeline
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import build_tasks
from mtssl_tf.tasks.base import Task
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import knn, optim, snapshot, worker_input
from mtssl_tf.train.admission import RoundGate
from mtssl_tf.train.checkpointing import TracedCheckpoint
from mtssl_tf.train.cost import CostTracker
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.train.grad_slots import GradientSlots
from mtssl_tf.train.in_flight import ORDERS, InFlight
from mtssl_tf.train.progress import MAX_BATCH_METRICS, Tally, Window, batch_metric_names
from mtssl_tf.trunk.lasso import alpha_image


def build_model(cfg: ExperimentConfig, tasks: Dict[str, Task], samples, precision: str):
  """The run's model, built on sample batches, its initial weights drawn from `runtime.seed`.

  The seed makes a config's fresh run start from the same weights every time (a resumed
  run restores them instead); without it a small network's run-to-run spread includes
  its initialisation.

  Returns:
    (model, outputs of `build_all` on the samples).
  """
  tf.keras.utils.set_random_seed(cfg.runtime.seed)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso, precision)
  return model, model.build_all(samples)


def unique_variables(groups) -> List[tf.Variable]:
  """Variables of several lists, each once, in first-seen order."""
  seen, out = set(), []
  for variables in groups:
    for v in variables:
      if id(v) not in seen:
        seen.add(id(v))
        out.append(v)
  return out


class DistributedTrainer:
  """Builds everything on the coordinator, then trains with `run()`."""

  def __init__(
    self, cfg: ExperimentConfig, model_dir: str, resolver, sources: Dict[str, str], fetch_order: str = 'finished',
    prepared=None,
  ):  # fmt: skip
    """Creates the strategy, model, optimizer, gradient slots, datasets and checkpoints.

    Args:
      cfg: validated experiment config.
      model_dir: checkpoints, summaries and export go here.
      resolver: cluster resolver (workers and PS).
      sources: task name -> default data source (used where a task's config has none).
      fetch_order: 'finished' (§4: closures taken as they finish) or 'scheduled' (the
        old in-order fetch, for benchmarks/task_balance.py's before/after comparison).
      prepared: what `mtssl_tf.train.launch.prepare` built in this process (a `Prepared`):
        its tasks and sample batches are used instead of building and reading them again.
        None: built and read here.
    """
    self.cfg = cfg
    self.model_dir = model_dir
    self.tasks = prepared.tasks if prepared is not None else build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)
    self.names = list(self.tasks)
    self.pools = worker_input.worker_pools(self.tasks)
    self.sources = sources
    t = cfg.train
    self.num_workers = len(self.pools)
    self.window = t.closures_per_worker * self.num_workers  # Closures in flight (docstring, 2).
    if fetch_order not in ORDERS:
      raise ValueError(f'fetch_order must be one of {ORDERS}, got {fetch_order!r}')
    self.fetch_order = fetch_order
    aggregate = {n: 1 if t.mode == 'async' else task.config.aggregate_steps for n, task in self.tasks.items()}
    self.aggregate = aggregate
    # Worker accumulation: a closure runs its task's K_t steps and writes their sum once.
    on_worker = t.mode == 'hybrid' and t.accumulate == 'worker'
    self.steps_per_closure = max(aggregate.values()) if on_worker else 1
    # Slots: the closures in flight, plus those waiting for an aggregate (one short
    # closure per task at most under worker accumulation).
    waiting = len(aggregate) if on_worker else sum(k - 1 for k in aggregate.values())
    num_slots = max(self.window + waiting, self.num_workers)
    # Sample batches (coordinator-side) give the union structure, build variables and
    # feed the image summaries; `prepare` reads them as here (seed 0, repeated).
    if prepared is not None:
      self.samples = dict(prepared.samples)
    else:
      self.samples = {n: next(iter(task.dataset(ReadOptions(), sources[n], seed=0))) for n, task in self.tasks.items()}
    # Free the sample pipelines' functions before connecting: collected later, TF's eager
    # context asks every server to remove them (measured: 168 gRPC errors at connect).
    gc.collect()
    self.strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)
    precision, why = hardware.explain_precision(cfg.runtime.precision)
    logging.info('precision: %s (%s)', precision, why)
    with self.strategy.scope():
      self.model, outputs = build_model(cfg, self.tasks, self.samples, precision)
      # Too many batch metrics is an error now, before any step (the closures check again when traced).
      for name, task in self.tasks.items():
        batch_metric_names(name, task.batch_metrics(outputs[name], self.samples[name]))
      self.variables = {n: self.model.task_variables(n) for n in self.names}
      self.slots = GradientSlots(unique_variables(self.variables.values()), num_slots)
      if self.steps_per_closure > 1:
        snapshot.check_supported(self.model.variables)
      self.optimizer = optim.from_config(t, self.variables)
      self.cost = CostTracker({n: task.config.cost_per_step for n, task in self.tasks.items()}, t.cost_tick)
      # A task's workers wait for its open update (docstring, 3); not tracked by the checkpoint.
      self.gate = None
      if t.mode == 'hybrid' and t.wait_for_update:
        rounds = [1 if on_worker else aggregate[n] for n in self.names]
        self.gate = RoundGate(rounds, num_slots, t.wait_timeout_seconds)
      # Per task, updates applied by this trainer (the gate's epoch, across `run` calls) and steps applied at a
      # later epoch than they were admitted in.
      self.epochs = {n: 0 for n in self.names}
      self.stale_steps = {n: 0 for n in self.names}
    # Traced once per run: TF's eager save retraces at every save on several devices (checkpointing.py).
    self.checkpoint = TracedCheckpoint(model=self.model, optimizer=self.optimizer, cost=self.cost)
    self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(model_dir, 'checkpoints'), max_to_keep=3)
    self.tick_manager = tf.train.CheckpointManager(
      self.checkpoint, os.path.join(model_dir, 'ticks'), max_to_keep=None, checkpoint_name='tick'
    )
    if self.manager.latest_checkpoint:
      # Resume order: weights, optimizer slots and counters together, before any step.
      self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
      logging.info('resumed from %s at cost %.2f', self.manager.latest_checkpoint, self.cost.total())
    self.free_slots = list(range(num_slots))
    self.touched: Dict[str, List[tf.Variable]] = {}  # Filled when the worker step is traced.
    self.metric_names: Dict[str, List[str]] = {}
    self.iterator = iter(
      self.coordinator.create_per_worker_dataset(
        worker_input.per_worker_dataset_fn(
          self.strategy, self.tasks, self.samples, sources, self.pools, cfg.runtime.seed
        )
      )
    )
    self.worker_step = self._make_worker_step()
    self.apply_fns = {}
    self.last_logged: Dict[str, Dict[str, float]] = {}  # Per task: the last window's means.
    self.writer = tf.summary.create_file_writer(os.path.join(model_dir, 'train'))
    # The kNN monitor (train/knn.py; None when off): scores each tick checkpoint with a trunk of its own,
    # in a coordinator thread while closures keep being scheduled.
    self.knn = knn.monitor_for_run(cfg, model_dir)
    # Undecodable inputs per task, counted per worker pipeline and named (train_result.json).
    self.skips = {n: pipeline.SkipCounter(n) for n in self.names}

  # ----- worker side -----

  def _make_worker_step(self):
    model, names, strategy = self.model, self.names, self.strategy
    # Worker accumulation: K_t steps per closure, on weights read once (snapshot.py).
    multi_step = self.steps_per_closure > 1

    def compute(name, x, snap=None):
      batch = {k.split('/', 1)[1]: v for k, v in x.items() if k.startswith(name + '/')}
      if snap is None:
        _, task_loss, outputs, grads, _ = model.compute_gradients(name, batch)
      else:
        weights, others = snap
        with snapshot.read_from(self.variables[name], weights, others) as sources:
          _, task_loss, outputs, grads, _ = model.compute_gradients(name, batch, sources)
      metrics = model.tasks[name].batch_metrics(outputs, batch)
      self.metric_names[name] = batch_metric_names(name, metrics)
      values = [tf.cast(metrics[k], tf.float32) for k in self.metric_names[name]]
      values += [tf.constant(0.0)] * (MAX_BATCH_METRICS - len(values))
      # The pipeline's running skip count and the last example's names of recent skips.
      skipped = (tf.reduce_max(batch[pipeline.SKIPPED_KEY]), batch[pipeline.SKIPPED_SOURCES_KEY][-1])
      return tf.cast(task_loss, tf.float32), tf.stack(values), skipped, grads

    def step(name, first, iterator, slot, budget):
      variables = self.variables[name]
      snap = None
      if multi_step:
        # One read of every trainable variable from the parameter servers for all K steps;
        # every other variable (batch-norm statistics, other heads) is read where used.
        own = {id(v) for v in variables}
        snap = [v.read_value() for v in variables], [v for v in model.variables if id(v) not in own]
      loss, metrics, skipped, grads = strategy.run(lambda x: compute(name, x, snap), args=(first,))
      # Which variables this task's loss reaches (e.g. not the unused final BN under lasso).
      self.touched[name] = [v for g, v in zip(grads, variables) if g is not None]
      reached = [g is not None for g in grads]
      grads = [g for g in grads if g is not None]
      steps = tf.minimum(tf.constant(self.aggregate[name], tf.int32), budget)

      def more(i, loss, metrics, skipped, grads):
        # The next steps of the same task: this worker's dataset only holds its task.
        step_loss, m, s, g = strategy.run(lambda x: compute(name, x, snap), args=(next(iterator),))
        g = [b for b, r in zip(g, reached) if r]
        return (
          i + 1,
          loss + step_loss,
          metrics + m,
          (tf.maximum(skipped[0], s[0]), s[1]),
          [a + b for a, b in zip(grads, g)],
        )

      if multi_step:  # Otherwise keep the graph free of a loop that never runs.
        _, loss, metrics, skipped, grads = tf.while_loop(
          lambda i, *_: i < steps, more, (tf.constant(1), loss, metrics, skipped, grads)
        )
      # One write of the K steps' gradient sum; the coordinator divides by the steps.
      with tf.control_dependencies(self.slots.write(slot, zip(grads, self.touched[name]))):
        n = tf.cast(steps, tf.float32)
        return tf.identity(steps), loss / n, metrics / n, skipped

    def branch(index, name, first, iterator, slot, budget):
      # Admission before any weight is read: the step's reads wait for its control dependencies.
      epoch, waited = tf.constant(-1, tf.int64), tf.constant(0.0, tf.float64)
      if self.gate is not None:
        epoch, waited = self.gate.admit(index, slot)
      began = tf.timestamp()  # After admission: the step's weights are read from here on.
      with tf.control_dependencies([epoch, began]):
        return (epoch, waited, began, *step(name, first, iterator, slot, budget))

    @tf.function
    def worker_step(iterator, slot, budget):
      first = next(iterator)
      branches = [lambda i=i, n=n: branch(i, n, first, iterator, slot, budget) for i, n in enumerate(names)]
      epoch, waited, began, *outputs = tf.switch_case(first['task'], branches)
      with tf.control_dependencies(outputs):
        end = tf.timestamp()
      # The worker's clock from admission to the end (input of later steps included): busy time per pool.
      return (first['task'], first['worker'], *outputs, epoch, waited, began, end)

    return worker_step

  def _apply_fn(self, name: str):
    """Coordinator-side update of task `name` from the mean gradient held in some of its slots."""
    if name not in self.apply_fns:
      # One trace per task. A partial, not a closure: TF's frequent-retracing warning counts
      # traces per Python code object, so five tasks' closures of one `def` looked like one
      # function retraced five times; each partial is keyed apart.
      self.apply_fns[name] = tf.function(
        functools.partial(self._apply, name),
        input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)],
      )
    return self.apply_fns[name]

  def _apply(self, name: str, slots: tf.Tensor, steps: tf.Tensor) -> None:
    variables = self.touched[name]
    update = self.optimizer.apply(name, [(self.slots.mean(v, slots, steps), v) for v in variables])
    # The accounting counts steps in the function that applies them, never before
    # (module docstring, 4): a checkpoint's counters are the steps in its weights.
    with tf.control_dependencies([update]):
      counted = self.cost.add(name, steps)
    if self.gate is not None:
      # After the new weights (and the counters): a closure admitted in the next epoch reads them.
      with tf.control_dependencies([counted]):
        self.gate.reopen(self.names.index(name))

  def _update(self, name: str, pending: List[Tuple[int, int, int]]) -> None:
    """Applies one update of `name` from its pending (slot, steps, admission epoch) results, frees the slots."""
    slots = [slot for slot, _, _ in pending]
    self._apply_fn(name)(tf.constant(slots, tf.int32), tf.constant(sum(n for _, n, _ in pending), tf.int32))
    if self.gate is not None:
      self.stale_steps[name] += sum(epoch != self.epochs[name] for _, _, epoch in pending)
      self.epochs[name] += 1
    self.free_slots.extend(slots)

  # ----- coordinator loop -----

  def _schedule(self, key: Tuple[int, int]):
    slot, budget = key  # The same key schedules a re-run into the same slot.
    args = (self.iterator, tf.constant(slot, tf.int32), tf.constant(budget, tf.int32))
    return self.coordinator.schedule(self.worker_step, args=args)

  def run(self) -> Dict[str, Dict[str, float]]:
    """Trains until `train.total_steps` worker steps are done (counting resumed ones).

    Each closure runs up to `steps_per_closure` steps (its task's K_t under worker
    accumulation, else 1), within a budget the coordinator reserves, so the run ends
    at exactly `total_steps`: a closure with less budget than its K_t runs only when
    no other is in flight, and it is the last. Closures are taken as they finish
    (`fetch_order`); 'sync' takes a whole round before its updates.

    Returns:
      Per task: steps (all applied) and optimizer updates so far (restored ones
      included), closures fetched by this run, the fraction of this run its pool's
      workers spent in closures (`worker_busy`, on the workers' clocks, from its first
      closure's start to its last one's end; waiting for admission is not busy), the
      seconds its closures waited for admission (`waited_seconds`), the steps applied
      at a later epoch than they were admitted in (`stale_steps`: 0 unless a wait timed
      out; None when closures do not wait), and the last logged window's loss and
      batch metrics.

    Raises:
      FloatingPointError: a non-finite loss, naming the task and its steps; no
        checkpoint is written after it, so the last one on disk is good.
    """
    t = self.cfg.train
    # Steps taken from finished closures; the counters hold only the applied ones, and
    # every taken step is applied by the end of the run.
    fetched = self.cost.task_steps()
    done = reserved = sum(fetched.values())
    in_flight = InFlight(self._schedule, self.fetch_order)
    pending = {n: [] for n in self.names}
    tally = Tally(self.names)  # Closures, seconds busy and seconds waiting for admission (admission.py).
    window = Window(self.names)
    last_log = last_ckpt = start = time.time()
    start_done = done
    while done < t.total_steps:
      if t.mode == 'sync':
        round_size = min(self.num_workers, t.total_steps - done)
        for _ in range(round_size):
          in_flight.add((self.free_slots.pop(), 1))
        reserved += round_size
      else:
        while len(in_flight) < self.window and reserved < t.total_steps:
          budget = min(self.steps_per_closure, t.total_steps - reserved)
          if budget < self.steps_per_closure and len(in_flight):
            break  # The tail: one short closure at a time (see the docstring).
          in_flight.add((self.free_slots.pop(), budget))
          reserved += budget
      for _ in range(len(in_flight) if t.mode == 'sync' else 1):
        (slot, budget), (task_index, worker, steps, loss, metrics, skipped, epoch, wait, began, ended), _ = (
          in_flight.next()
        )
        name, steps = self.names[int(task_index)], int(steps)
        if not np.isfinite(loss):
          raise FloatingPointError(
            f'{name}: non-finite loss {loss} at task step {fetched[name] + 1}'
            + (f' (of a closure of {steps} steps)' if steps > 1 else '')
            + f'; the last checkpoint in {self.manager.directory} is kept'
          )
        fetched[name] += steps
        tally.add(name, began, ended, float(wait))
        done += steps
        reserved -= budget - steps  # A task with a smaller K_t returns the rest.
        window.add(name, float(loss), metrics, steps)
        self.skips[name].update(skipped[0], skipped[1], pipeline_id=int(worker))
        pending[name].append((slot, steps, int(epoch)))
        if t.mode != 'sync' and sum(n for _, n, _ in pending[name]) >= self.aggregate[name]:
          self._update(name, pending[name])
          pending[name] = []
      if t.mode == 'sync':
        for name in self.names:
          if pending[name]:
            self._update(name, pending[name])
            pending[name] = []
      if self.cost.due_ticks():
        self._save(self.tick_manager, done)
      now = time.time()
      if now - last_ckpt >= t.checkpoint_every_seconds:
        self._save(self.manager, done)
        last_ckpt = now
      if now - last_log >= t.log_every_seconds or done >= t.total_steps:
        self._log(done, window, (done - start_done) / max(now - start, 1e-6), now - start)
        window = Window(self.names, window)
        last_log = now
    # Steps that did not fill an aggregate are applied rather than dropped.
    for name in self.names:
      if pending[name]:
        self._update(name, pending[name])
    if self.cost.due_ticks():
      self._save(self.tick_manager, done)
    self._save(self.manager, done)
    if self.knn is not None:
      self.knn.close()  # The last tick's evaluation is written before the run returns.
    steps = self.cost.task_steps()
    return {
      n: {
        'steps': steps[n],
        'updates': int(self.optimizer.iterations[n].numpy()),
        'closures': tally.closures[n],
        'worker_busy': tally.busy_fraction(n, self.tasks[n].config.workers),
        'waited_seconds': round(tally.waited[n], 3),
        'stale_steps': self.stale_steps[n] if self.gate is not None else None,
        'skipped_examples': self.skips[n].count,
        'skipped_sources': self.skips[n].sources,
        **self.last_logged.get(n, {}),
      }
      for n in self.names
    }

  def _save(self, manager: tf.train.CheckpointManager, done: int) -> None:
    # A step whose loss is not yet fetched may already have written non-finite batch-norm
    # statistics; never let such weights replace the last good checkpoint.
    if not bool(self._all_finite()):
      raise FloatingPointError(f'non-finite weights before the checkpoint at step {done}; last checkpoint kept')
    manager.save(checkpoint_number=done)
    if manager is self.tick_manager and self.knn is not None:
      self.knn.on_tick(manager.latest_checkpoint, done, int(self.cost.last_tick.numpy()), self.cost.total())

  @tf.function
  def _all_finite(self):
    checks = []
    for v in self.model.variables:
      with tf.device(v.device):  # Reduce on the parameter server; ship one bool.
        checks.append(tf.reduce_all(tf.math.is_finite(v)))
    return tf.reduce_all(checks)

  def _log(self, done: int, window: Window, rate: float, elapsed: float) -> None:
    t = self.cfg.train
    eta = (t.total_steps - done) / max(rate, 1e-9)
    parts = []
    for name in self.names:
      values = window.means(name, self.metric_names.get(name, []))
      if values is not None:
        self.last_logged[name] = values
        skipped = f' skipped {self.skips[name].count}' if self.skips[name].count else ''
        parts.append(f'{name} ' + ' '.join(f'{k} {v:.4f}' for k, v in values.items()) + skipped)
    logging.info(
      'step %d/%d, %.2f steps/s, cost %.2f, ETA %.0f s | %s',
      done, t.total_steps, rate, self.cost.total(), eta, ', '.join(parts),
    )  # fmt: skip
    with self.writer.as_default(step=done):
      tf.summary.scalar('train/cost', self.cost.total())
      tf.summary.scalar('train/steps_per_second', rate)
      for name in self.names:
        if window.losses[name]:
          for key, value in self.last_logged[name].items():
            tf.summary.scalar(f'{name}/{key}', value)
        tf.summary.scalar(f'{name}/steps_per_second', window.total_steps[name] / max(elapsed, 1e-6))
        tf.summary.scalar(f'{name}/skipped_examples', self.skips[name].count)
      if self.model.lasso is not None:
        tf.summary.image('lasso/abs_alpha', alpha_image(self.model.lasso.alpha()))
    self.writer.flush()

  def write_image_summaries(self, step: int) -> None:
    """Sample visualisations of every task on its sample batch (run from the coordinator)."""
    with self.writer.as_default(step=step):
      for name, task in self.tasks.items():
        _, _, outputs = self.model.task_step_outputs(name, self.samples[name], training=False)
        for key, images in task.image_summaries(outputs, self.samples[name]).items():
          tf.summary.image(f'{name}/{key}', images, max_outputs=4)
    self.writer.flush()
