"""A task's batch metrics travel in a fixed-size closure result: too many is a named error, not a silent drop."""

import pytest

from mtssl_tf.configs import LassoConfig, override
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.progress import MAX_BATCH_METRICS, batch_metric_names


def test_more_batch_metrics_than_fit_is_an_error_naming_the_task(tiny_world, tiny_trunk):
  cfg = TasksConfig()
  override(cfg, {
    'relative_position': dict(enabled=True, batch_size=2, patch_size=16, gap=4, jitter=1, min_area=4096,
                              max_area=4096, min_downsample=4, hidden_units=8),
  })  # fmt: skip
  task = build_tasks(cfg, 16)['relative_position']
  batch = next(iter(task.dataset(ReadOptions(), tiny_world['sources']['images_train'], seed=0)))
  model = MultiTaskModel(tiny_trunk, {task.name: task}, LassoConfig())
  outputs = model.build_all({task.name: batch})[task.name]
  metrics = task.batch_metrics(outputs, batch)
  assert batch_metric_names(task.name, metrics) == sorted(metrics)  # The task's own fit.

  # The same task reporting one metric more than a closure carries.
  many = {f'extra_{i}': metrics['accuracy'] for i in range(MAX_BATCH_METRICS + 1 - len(metrics))}
  with pytest.raises(ValueError, match=rf'relative_position: batch_metrics reports {MAX_BATCH_METRICS + 1} metrics'):
    batch_metric_names(task.name, {**metrics, **many})
