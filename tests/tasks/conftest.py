"""Fixtures for task tests: a tiny trunk config and a tiny synthetic world (once per session)."""

import pytest

from mtssl_tf.configs import LassoConfig, TrunkConfig
from mtssl_tf.data.synthetic.world import make_world


@pytest.fixture(scope='session')
def tiny_world(tmp_path_factory):
  return make_world(str(tmp_path_factory.mktemp('world')), 'tiny', seed=0)


@pytest.fixture
def tiny_trunk():
  cfg = TrunkConfig()
  cfg.units_per_block = (1, 1, 2)
  cfg.width = 8
  return cfg


@pytest.fixture
def no_lasso():
  return LassoConfig()
