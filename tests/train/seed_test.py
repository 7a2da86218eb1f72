"""runtime.seed draws a fresh run's initial weights (`distributed.build_model`, what the coordinator builds)."""

import numpy as np
import tensorflow as tf
from tiny_configs import TINY_TRUNK, tiny_relative_position

from mtssl_tf.configs import override, validate_all
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import build_tasks
from mtssl_tf.train.distributed import build_model
from mtssl_tf.train.experiment import ExperimentConfig


def _weights(seed, source):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': TINY_TRUNK,
    'runtime': {'seed': seed},
    'tasks': {'relative_position': tiny_relative_position()},
  })  # fmt: skip
  validate_all(cfg)
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)  # Fresh heads each time.
  samples = {'relative_position': next(iter(tasks['relative_position'].dataset(ReadOptions(), source, seed=0)))}
  model, _ = build_model(cfg, tasks, samples, 'float32')
  return [v.numpy() for v in model.trainable_variables]


def test_the_seed_fixes_the_initial_weights(tiny_world):
  source = tiny_world['sources']['images_train']
  first, other = _weights(0, source), _weights(1, source)
  tf.random.set_seed(7)  # Whatever ran before in the process does not matter: the build seeds itself.
  again = _weights(0, source)
  assert len(first) == len(again) == len(other) > 4
  for a, b in zip(first, again):
    # Same seed, same ops on the same machine: the same draws (initialisers are elementwise, no reductions).
    np.testing.assert_array_equal(a, b)
  # Another seed draws other weights (constant-initialised biases and BN parameters are equal either way).
  differs = [not np.array_equal(a, c) for a, c in zip(first, other) if np.any(a != a.flat[0])]
  assert differs and all(differs)
