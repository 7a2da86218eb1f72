"""Typed configs: dataclasses, YAML files and `key.path=value` overrides, and the shared sections.

The root config of a pre-training run, `ExperimentConfig`, nests every task's config and
lives with the trainer (`mtssl_tf.train.experiment`); this package imports no task.
"""

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
from mtssl_tf.configs.experiment import DemoConfig, LassoConfig, RuntimeConfig, TrunkConfig

__all__ = [
  'Config',
  'ConfigError',
  'DemoConfig',
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
