"""Fixtures for knowledge-transfer tests: the evaluation tests' `pretrained` run, and tiny configs."""

import importlib.util
import pathlib

import pytest

from mtssl_tf.configs import TrunkConfig
from mtssl_tf.transfer.config import TransferConfig

# The evaluation tests' tiny pre-training run (checkpoint + SavedModel of one trunk), shared
# rather than copied. Loaded by path: tests are not a package (--import-mode=importlib).
_spec = importlib.util.spec_from_file_location(
  'evaluation_conftest', pathlib.Path(__file__).parents[1] / 'evaluation' / 'conftest.py'
)
_evaluation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_evaluation)
pretrained = _evaluation.pretrained


def tiny_transfer_config(world, init: str = 'random', num_clusters: int = 4) -> TransferConfig:
  """The whole chain at test size on the tiny world (40 train, 20 validation images of 64 px)."""
  cfg = TransferConfig()
  sources = world['sources']
  trunk = TrunkConfig()
  trunk.units_per_block, trunk.width = (1, 1, 2), 8
  e = cfg.extract
  e.source, e.init, e.trunk, e.preprocessing = sources['images_train'], init, trunk, 'rgb'
  e.image_size, e.crop_size, e.batch_size, e.shard_size, e.grid = 64, 64, 16, 12, 2
  c = cfg.cluster
  c.num_clusters, c.iterations, c.seed = num_clusters, 5, 0
  t = cfg.train
  t.width, t.dropout, t.image_size, t.crop_size, t.steps, t.batch_size = 0.125, 0.0, 64, 56, 4, 8
  t.batch_norm = True  # Small-world training (the paper's network has LRN).
  t.log_every_steps, t.checkpoint_every_steps, t.shuffle_buffer = 2, 4, 40
  p = cfg.probe
  p.train_source, p.validation_source = sources['images_train'], sources['images_validation']
  p.image_size, p.crop_size, p.steps, p.batch_size, p.eval_batch_size = 64, 56, 3, 8, 10
  p.log_every_steps, p.checkpoint_every_steps, p.shuffle_buffer = 3, 3, 40
  return cfg


@pytest.fixture
def transfer_config(tiny_world):
  """A fresh tiny `TransferConfig` (random-init teacher) per test."""
  return tiny_transfer_config(tiny_world)
