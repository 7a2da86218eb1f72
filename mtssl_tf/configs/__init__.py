"""Typed configs: dataclasses, YAML files and `key.path=value` overrides."""

from mtssl_tf.configs.base import (
  Config,
  ConfigError,
  load_config,
  override,
  parse_override,
  save_config,
  to_plain,
  validate_all,
)
from mtssl_tf.configs.experiment import (
  DemoConfig,
  ExperimentConfig,
  LassoConfig,
  RuntimeConfig,
  TrunkConfig,
)

__all__ = [
  'Config',
  'ConfigError',
  'DemoConfig',
  'ExperimentConfig',
  'LassoConfig',
  'RuntimeConfig',
  'TrunkConfig',
  'load_config',
  'override',
  'parse_override',
  'save_config',
  'to_plain',
  'validate_all',
]
