"""One-process multi-task training: tasks alternate, losses fall, summaries are written, and the
per-task RMSProp is the configured one (the distributed trainer's)."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig, override
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.experiment import TrainConfig
from mtssl_tf.train.local import LocalTrainer
from mtssl_tf.train.rmsprop import PerTaskRMSProp

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _tasks(lasso_rows=False):
  cfg = TasksConfig()
  override(cfg, {
    'relative_position': dict(enabled=True, batch_size=8, patch_size=16, gap=4, jitter=1, min_area=4096,
                              max_area=4096, min_downsample=4, hidden_units=32, color_dropping=False),
    'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=16, hidden_units=32),
  })  # fmt: skip
  return build_tasks(cfg, 16)


def test_round_robin_training_writes_task_metrics(tiny_world, tiny_trunk, tmp_path):
  tasks = _tasks()
  assert list(tasks) == ['relative_position', 'exemplar']
  datasets = {n: t.dataset(ReadOptions(), tiny_world['sources']['images_train'], seed=0) for n, t in tasks.items()}
  lasso = LassoConfig()
  lasso.enabled = True
  model = MultiTaskModel(tiny_trunk, tasks, lasso)
  trainer = LocalTrainer(model, datasets, TrainConfig(), summary_dir=str(tmp_path / 'train'))
  alpha_before = model.lasso.alpha().numpy()
  logs = trainer.run(steps=8, log_every=2)
  assert trainer.optimizer.iterations['relative_position'].numpy() == 4
  assert trainer.optimizer.iterations['exemplar'].numpy() == 4
  assert logs['relative_position'].steps == [2, 4] and 'accuracy' in logs['relative_position'].values
  assert 'triplet_accuracy' in logs['exemplar'].values
  assert not np.allclose(model.lasso.alpha().numpy(), alpha_before)  # Lasso rows train too.
  events = glob.glob(str(tmp_path / 'train' / 'events.out.tfevents.*'))
  assert events
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {'relative_position/loss', 'relative_position/accuracy', 'exemplar/loss'} <= tags


def _first_step_moves(tiny_world, tiny_trunk, train):
  """|change| of the first trunk kernel after one relative-position step, and the trainer."""
  tf.keras.utils.set_random_seed(0)
  tasks = _tasks()
  datasets = {n: t.dataset(ReadOptions(), tiny_world['sources']['images_train'], seed=0) for n, t in tasks.items()}
  trainer = LocalTrainer(MultiTaskModel(tiny_trunk, tasks, LassoConfig()), datasets, train)
  kernel = trainer.model.trunk.trainable_variables[0]
  before = kernel.numpy()
  trainer.run(steps=1, log_every=100)
  return np.abs(kernel.numpy() - before), trainer


@pytest.mark.numerics
def test_local_trainer_uses_the_configured_per_task_rmsprop(tiny_world, tiny_trunk):
  train = TrainConfig()
  moved, trainer = _first_step_moves(tiny_world, tiny_trunk, train)
  optimizer = trainer.optimizer
  assert isinstance(optimizer, PerTaskRMSProp)  # The distributed trainer's optimizer, from the same fields.
  assert (optimizer.learning_rate, optimizer.decay, optimizer.momentum, optimizer.epsilon, optimizer.variant) == (
    train.learning_rate, train.rmsprop_decay, train.rmsprop_momentum, train.rmsprop_epsilon, train.rmsprop_variant
  )  # fmt: skip
  # Slots per (task, variable): the shared trunk has one set per task, only the task that stepped moved.
  trunk_kernel = trainer.model.trunk.trainable_variables[0]
  rp_ms, _ = optimizer.slots('relative_position', trunk_kernel)
  ex_ms, _ = optimizer.slots('exemplar', trunk_kernel)
  assert np.any(rp_ms.numpy() > 0) and not np.any(ex_ms.numpy())
  # Defaults (mean square from 0, epsilon 1e-10): the first step is lr * g / sqrt((1 - decay) g^2 + eps),
  # at most lr / sqrt(1 - decay) = 3.16e-3 and that size wherever |g| >> sqrt(eps / (1 - decay)) = 3e-5.
  first = train.learning_rate / np.sqrt(1.0 - train.rmsprop_decay)
  assert moved.max() <= first * (1 + 1e-4)  # float32 rounding of one update.
  assert np.median(moved) > 0.5 * first


@pytest.mark.numerics
def test_local_trainer_follows_the_configured_epsilon(tiny_world, tiny_trunk):
  # The same first step with epsilon 100: lr * g / sqrt(0.1 g^2 + 100) ~ lr * |g| / 10, far
  # below the default's lr / sqrt(0.1) for this kernel's gradients (median |g| ~0.6 at init,
  # measured; the margin holds for |g| up to ~3).
  default, _ = _first_step_moves(tiny_world, tiny_trunk, TrainConfig())
  train = TrainConfig()
  train.rmsprop_epsilon = 100.0
  large, trainer = _first_step_moves(tiny_world, tiny_trunk, train)
  assert trainer.optimizer.epsilon == 100.0
  assert np.median(large) < 0.1 * np.median(default)
