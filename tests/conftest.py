"""Shared fixtures. Tests use the tiny trunk unless the full one is the point."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from mtssl_tf.configs import TrunkConfig  # noqa: E402


@pytest.fixture
def tiny_trunk_config() -> TrunkConfig:
  """Units (1, 1, 2), width 16: every code path of the real trunk, ~0.2M parameters."""
  cfg = TrunkConfig()
  cfg.units_per_block = (1, 1, 2)
  cfg.width = 16
  return cfg
