"""Flags shared by every mtssl_tf binary and their conversion into a config."""

from __future__ import annotations

from typing import Type, TypeVar

from absl import flags

from mtssl_tf.configs.base import Config, load_config

C = TypeVar('C', bound=Config)


def define_config_flags() -> None:
  """Defines --config (repeatable YAML files), --override (repeatable) and --model_dir."""
  flags.DEFINE_multi_string('config', [], 'YAML config file(s), applied in order over the built-in defaults.')
  flags.DEFINE_multi_string(
    'override', [], 'key.path=value (YAML value), applied after the files, e.g. --override=trunk.output_stride=8.'
  )
  flags.DEFINE_string('model_dir', None, 'Directory for outputs; the resolved config is written there as config.yaml.')


def config_from_flags(config_cls: Type[C], flag_values: flags.FlagValues) -> C:
  """Loads and validates the config named by the parsed flags (errors name the key)."""
  return load_config(config_cls, flag_values.config, flag_values.override)
