"""Fixtures for evaluation tests: a tiny pre-training run's checkpoint and SavedModel."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig, TrunkConfig, save_config
from mtssl_tf.export.saved_model import export
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.tasks.relative_position import RelativePositionConfig, RelativePositionTask
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.trunk.registry import build_trunk

# `--import-mode=importlib` puts no test folder on sys.path; this one holds test modules whose helpers others reuse
# (fast_rcnn_test.py imports detection_convnet_test.py's tiny config and student).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def tiny_trunk_config() -> TrunkConfig:
  """Units (1, 1, 2), width 8: the evaluations' test trunk."""
  cfg = TrunkConfig()
  cfg.units_per_block = (1, 1, 2)
  cfg.width = 8
  return cfg


def write_conv_run(run_dir: str, kind: str, seed: int = 3, **section):
  """A pre-training run folder of a `kind` trunk (config.yaml, checkpoints/ with the trunk at model/trunk).

  `section` sets fields of the trunk's section (width, batch_norm, variant, ...); every
  variable gets distinctive seeded values, so a test can compare them with what an
  evaluation loads. Returns the built trunk.
  """
  cfg = ExperimentConfig()
  cfg.trunk.kind = kind
  for key, value in section.items():
    setattr(getattr(cfg.trunk, kind), key, value)
  save_config(cfg, run_dir)
  trunk = build_trunk(cfg.trunk)
  trunk(tf.zeros([1, 64, 64, 3]), training=False)
  rng = np.random.default_rng(seed)
  for v in trunk.variables:
    positive = any(k in v.name for k in ('gamma', 'variance'))
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32) + (1.0 if positive else 0.0))
  tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))
  return trunk


@pytest.fixture(scope='session')
def conv_run():
  """`write_conv_run(run_dir, kind, seed=3, **section)`: a seeded pre-training run of a conv trunk."""
  return write_conv_run


@pytest.fixture(scope='session')
def pretrained(tmp_path_factory):
  """A 'pre-trained' run dir: config.yaml, checkpoints/ckpt-1, saved_model/.

  The trunk's weights are random but distinctive (seeded); tests compare them with
  what an evaluation loads. Returns a dict: run_dir, checkpoint, saved_model,
  trunk_config, and `weights` (the trunk variables by name).
  """
  run_dir = str(tmp_path_factory.mktemp('pretrained'))
  trunk_config = tiny_trunk_config()
  cfg = ExperimentConfig()
  cfg.trunk = trunk_config
  save_config(cfg, run_dir)
  task_config = RelativePositionConfig()
  task_config.hidden_units = 16
  tasks = {'relative_position': RelativePositionTask(task_config)}
  model = MultiTaskModel(trunk_config, tasks, LassoConfig())
  model.trunk(tf.zeros([1, 64, 64, 3]))
  rng = np.random.default_rng(7)
  for v in model.trunk.variables:
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32) + (1.0 if 'gamma' in v.name or 'variance' in v.name else 0))
  checkpoint = tf.train.Checkpoint(model=model).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))
  saved_model = export(model, os.path.join(run_dir, 'saved_model'))
  return {
    'run_dir': run_dir,
    'checkpoint': checkpoint,
    'saved_model': saved_model,
    'trunk_config': trunk_config,
    'weights': {v.name: v.numpy() for v in model.trunk.variables},
  }
