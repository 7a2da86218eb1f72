"""Typed configs: dataclasses, YAML files and `key.path=value` overrides.

The experiment-level classes are loaded lazily (PEP 562): `ExperimentConfig` holds
every task's config, and task modules import `mtssl_tf.configs.base`, so an eager
import here would be circular.
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

_EXPERIMENT_NAMES = ('DemoConfig', 'ExperimentConfig', 'LassoConfig', 'RuntimeConfig', 'TrunkConfig')


def __getattr__(name):
  if name in _EXPERIMENT_NAMES:
    from mtssl_tf.configs import experiment

    return getattr(experiment, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
  'Config',
  'ConfigError',
  'load_config',
  'override',
  'parse_override',
  'save_config',
  'to_plain',
  'validate_all',
  *_EXPERIMENT_NAMES,
]
