"""What each worker of the cluster reads: its task's pipeline, in one element structure shared by all.

`ClusterCoordinator.schedule` cannot pin a closure to a worker, so the worker's dataset
decides what it trains (distributed.py, step 1). Worker w serves one task
(`TaskConfig.workers` consecutive workers per task, in registry order). Every worker's
dataset is built by one function, so all share one element structure: the union of every
task's batch (other tasks' fields are constant zeros) plus the task's index and the
worker's, and `choose_from_datasets` keyed by the worker's index makes each worker read
only its own task's pipeline, sharded within the task's pool.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import tensorflow as tf

from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks.base import Task


def worker_pools(tasks: Dict[str, Task]) -> List[int]:
  """Task index served by each worker: `workers` consecutive workers per task."""
  pools = []
  for index, task in enumerate(tasks.values()):
    pools += [index] * task.config.workers
  return pools


def union_dataset(name: str, ds: tf.data.Dataset, dummies: Dict[str, tf.Tensor], index: int, worker=0):
  """Task batches in the union structure: own fields filled, the others zeros; 'worker' names the pipeline."""
  others = {k: v for k, v in dummies.items() if not k.startswith(name + '/')}

  def merge(batch):
    merged = dict(others)  # Constants, folded into the map (a single-task run has none).
    merged.update({f'{name}/{k}': v for k, v in batch.items()})
    merged['task'] = tf.constant(index, tf.int32)
    merged['worker'] = tf.cast(worker, tf.int32)
    return merged

  return ds.map(merge)


def per_worker_dataset_fn(strategy, tasks: Dict[str, Task], samples, sources: Dict[str, str], pools: List[int], seed):
  """The function `ClusterCoordinator.create_per_worker_dataset` calls on every worker.

  Args:
    strategy: the run's ParameterServerStrategy.
    tasks: the run's tasks, in registry order.
    samples: task name -> a sample batch (its structure and dtypes make the union).
    sources: task name -> data source.
    pools: `worker_pools(tasks)`.
    seed: `runtime.seed` (orders every pipeline).

  Returns:
    A tf.function returning the distributed dataset.
  """
  dummies = {f'{n}/{k}': tf.zeros(v.shape, v.dtype) for n, batch in samples.items() for k, v in batch.items()}
  starts = np.cumsum([0] + [task.config.workers for task in tasks.values()])[:-1].tolist()

  def dataset_fn(_):
    worker = tf.distribute.coordinator.experimental_get_current_worker_index()
    datasets = []
    for i, (name, task) in enumerate(tasks.items()):
      size = task.config.workers
      shard = tf.clip_by_value(tf.cast(worker, tf.int64) - starts[i], 0, size - 1)
      options = ReadOptions(shard_index=shard, num_shards=size, seed=seed)
      datasets.append(union_dataset(name, task.dataset(options, sources[name], seed=seed), dummies, i, worker))
    choice = tf.gather(tf.constant(pools, tf.int64), worker)
    return tf.data.Dataset.choose_from_datasets(datasets, tf.data.Dataset.from_tensors(choice).repeat())

  @tf.function
  def per_worker():
    return strategy.distribute_datasets_from_function(dataset_fn)

  return per_worker
