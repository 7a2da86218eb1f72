"""Shared fixtures. Tests use the tiny trunk unless the full one is the point."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from mtssl_tf.configs import TrunkConfig  # noqa: E402
from mtssl_tf.data.synthetic.world import make_world  # noqa: E402


@pytest.fixture
def tiny_trunk_config() -> TrunkConfig:
  """Units (1, 1, 2), width 16: every code path of the real trunk, ~0.2M parameters."""
  cfg = TrunkConfig()
  cfg.units_per_block = (1, 1, 2)
  cfg.width = 16
  return cfg


@pytest.fixture
def tiny_trunk() -> TrunkConfig:
  """An even smaller trunk (width 8) for task and trainer tests."""
  cfg = TrunkConfig()
  cfg.units_per_block = (1, 1, 2)
  cfg.width = 8
  return cfg


@pytest.fixture(scope='session')
def tiny_world(tmp_path_factory):
  """The 'tiny' synthetic world, written once per test session (per xdist worker)."""
  return make_world(str(tmp_path_factory.mktemp('world')), 'tiny', seed=0)
