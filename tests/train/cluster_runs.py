"""Two-task cluster runs of the trainer tests (distributed_test.py, distributed_faults_test.py).

Runs go through the local supervisor, which starts the servers and the coordinator as
subprocesses; results are read from the files a run writes.
"""

import os
import time

import tensorflow as tf
from tiny_configs import TINY_TRUNK, tiny_relative_position

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.train import launch
from mtssl_tf.train.experiment import ExperimentConfig


def two_task_config(world_dir, **train):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': TINY_TRUNK,
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {
      'relative_position': tiny_relative_position(batch_size=4, aggregate_steps=3),
      'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16,
                       cost_per_step=0.5),
    },
    # A checkpoint every 2 s: the fault tests watch them (each save costs ~0.2-1 s here).
    'train': {**dict(total_steps=24, world_preset='tiny', world_dir=world_dir, log_every_seconds=2.0,
                     checkpoint_every_seconds=2.0, cost_tick=5.0), **train},
  })  # fmt: skip
  validate_all(cfg)
  return cfg


def supervised_run(cfg, model_dir, on_cluster=None, max_restarts=0):
  path = save_config(cfg, str(model_dir), 'input.yaml')
  return launch.supervise_local(cfg, str(model_dir), [f'--config={path}'], max_restarts, on_cluster)


def checkpoint_values(model_dir, attempts=50):
  """The latest checkpoint's values, read while the run may still be writing checkpoints.

  The manager keeps 3 checkpoints, so the one `latest_checkpoint` names can be deleted
  before it is read (a fast task saves several per second): such a read is retried.
  """
  for attempt in range(attempts):
    try:
      reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints')))
      return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError):
      if attempt == attempts - 1:
        raise
      time.sleep(0.1)


def expected_updates(steps, k):
  # Full aggregates of K steps, plus one last partial aggregate applied at the end.
  return steps // k + (1 if steps % k else 0)
