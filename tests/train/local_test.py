"""One-process multi-task training: tasks alternate, losses fall, summaries are written."""

import glob

import numpy as np
import tensorflow as tf

from mtssl_tf.configs import LassoConfig, override
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.local import LocalTrainer


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
  trainer = LocalTrainer(model, datasets, learning_rate=1e-3, summary_dir=str(tmp_path / 'train'))
  alpha_before = model.lasso.alpha().numpy()
  logs = trainer.run(steps=8, log_every=2)
  assert trainer.optimizers['relative_position'].iterations.numpy() == 4
  assert trainer.optimizers['exemplar'].iterations.numpy() == 4
  assert logs['relative_position'].steps == [2, 4] and 'accuracy' in logs['relative_position'].values
  assert 'triplet_accuracy' in logs['exemplar'].values
  assert not np.allclose(model.lasso.alpha().numpy(), alpha_before)  # Lasso rows train too.
  events = glob.glob(str(tmp_path / 'train' / 'events.out.tfevents.*'))
  assert events
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {'relative_position/loss', 'relative_position/accuracy', 'exemplar/loss'} <= tags
