"""Typed, strict configs on top of Model Garden's `hyperparams.Config`.

Model Garden's `Config` gives dataclass fields, YAML round trips and locking, but
its overrides only reject unknown keys of the top level of each dict, report them
without their dotted path, and accept any value type. Users of a multi-hour cluster
job need a misspelt key, a wrong type or an impossible value to fail at once, with
the full key named, before any server or model is built. This module adds that:

* `override(cfg, values)` walks nested dicts, checking each key against the
  dataclass fields (with a "did you mean" suggestion) and each value against the
  field's type annotation.
* Every config class may define `validate()`, raising `ConfigError` for values
  that are well typed but impossible (e.g. an output stride of 12).
* `load_config()` composes defaults, YAML files and `key.path=value` overrides,
  then validates; `save_config()` writes the resolved config next to a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Iterable, Mapping, Optional, Sequence, Type, TypeVar

import yaml
from official.modeling.hyperparams import base_config


class ConfigError(ValueError):
  """A config key, type or value is wrong. The message names the key."""


@dataclasses.dataclass
class Config(base_config.Config):
  """Base class of every mtssl_tf config.

  Subclasses declare typed fields with defaults and may override `validate`,
  which is called on every sub-config by `validate_all` (children first).
  """

  def validate(self) -> None:
    """Raises `ConfigError` if a value is impossible. Override in subclasses."""


C = TypeVar('C', bound=Config)


def _field_types(cfg: Config) -> dict[str, Any]:
  # `_get_annotations` resolves string annotations and drops Config internals.
  return cfg._get_annotations()  # pylint: disable=protected-access


def _type_name(tp: Any) -> str:
  return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')


def _check_value(path: str, tp: Any, value: Any) -> Any:
  """Returns `value` coerced to `tp` (int -> float, list -> tuple) or raises."""
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if origin is typing.Union:
    if value is None and type(None) in args:
      return None
    errors = []
    for arm in args:
      if arm is type(None):
        continue
      try:
        return _check_value(path, arm, value)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(errors[0] if len(errors) == 1 else f'{path}: {value!r} matches none of {_type_name(tp)}')
  if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f'{path}: expected a list, got {type(value).__name__} {value!r}')
    elem = args[0] if args else Any
    checked = [_check_value(f'{path}[{i}]', elem, v) for i, v in enumerate(value)]
    return tuple(checked) if origin is tuple or tp is tuple else checked
  if tp is Any:
    return value
  if tp is bool:
    if not isinstance(value, bool):
      raise ConfigError(f'{path}: expected true/false, got {type(value).__name__} {value!r}')
    return value
  if tp is int:
    # bool is an int in Python; a YAML `true` for a count is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f'{path}: expected an integer, got {type(value).__name__} {value!r}')
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f'{path}: expected a number, got {type(value).__name__} {value!r}')
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise ConfigError(f'{path}: expected a string, got {type(value).__name__} {value!r}')
    return value
  raise ConfigError(f'{path}: unsupported field type {_type_name(tp)}')


def override(cfg: C, values: Mapping[str, Any], prefix: str = '') -> C:
  """Overrides `cfg` in place from a nested mapping, strictly.

  Args:
    cfg: the config to modify.
    values: nested dict of new values, e.g. `{'trunk': {'output_stride': 8}}`.
    prefix: dotted path of `cfg` inside the root config, for error messages.

  Returns:
    `cfg`, for chaining.

  Raises:
    ConfigError: an unknown key (with a suggestion) or a value of the wrong type.
  """
  if not isinstance(values, Mapping):
    raise ConfigError(f'{prefix or "<root>"}: expected a mapping of keys, got {values!r}')
  types = _field_types(cfg)
  for key, value in values.items():
    path = f'{prefix}.{key}' if prefix else str(key)
    if key not in types:
      close = difflib.get_close_matches(str(key), list(types), n=1)
      hint = f'; did you mean {(prefix + "." if prefix else "") + close[0]!r}?' if close else ''
      raise ConfigError(f'unknown config key {path!r}{hint} (known: {", ".join(sorted(types))})')
    current = getattr(cfg, key)
    if isinstance(current, Config):
      override(current, value, path)
      continue
    tp = types[key]
    sub = _config_class(tp)
    if sub is not None:  # An Optional[SubConfig] that is currently None.
      if value is None:
        setattr(cfg, key, None)
      else:
        setattr(cfg, key, override(sub(), value, path))
      continue
    setattr(cfg, key, _check_value(path, tp, value))
  return cfg


def _config_class(tp: Any) -> Optional[Type[Config]]:
  for arm in typing.get_args(tp) or (tp,):
    if isinstance(arm, type) and issubclass(arm, Config):
      return arm
  return None


def validate_all(cfg: Config, prefix: str = '') -> None:
  """Calls `validate()` on every sub-config, then on `cfg`, naming the failing path."""
  for key in _field_types(cfg):
    value = getattr(cfg, key)
    if isinstance(value, Config):
      validate_all(value, f'{prefix}.{key}' if prefix else key)
  try:
    cfg.validate()
  except ConfigError as e:
    raise ConfigError(_qualify(str(e), prefix)) from None


def _qualify(msg: str, prefix: str) -> str:
  """Gives a validate() message the full dotted path of its config.

  Messages name keys relative to their config ('batch_size: ...') or starting with
  the config's own name ('trunk.output_stride: ...', 'exemplar.margin: ...').
  """
  if not prefix or msg.startswith(prefix + '.'):
    return msg
  last = prefix.rsplit('.', 1)[-1]
  if msg.startswith(last + '.'):
    return f'{prefix}{msg[len(last) :]}'
  return f'{prefix}.{msg}'


def parse_override(text: str) -> dict[str, Any]:
  """Parses `a.b.c=value` (value in YAML syntax) into `{'a': {'b': {'c': value}}}`.

  Raises:
    ConfigError: if the text has no `=` or an empty key.
  """
  key, sep, raw = text.partition('=')
  key = key.strip()
  if not sep or not key or any(not part for part in key.split('.')):
    raise ConfigError(f'override {text!r} is not of the form key.path=value')
  try:
    value = yaml.safe_load(raw) if raw.strip() else ''
  except yaml.YAMLError as e:
    raise ConfigError(f'override {key!r}: value {raw!r} is not valid YAML ({e})') from None
  nested: dict[str, Any] = {}
  node = nested
  parts = key.split('.')
  for part in parts[:-1]:
    node = node.setdefault(part, {})
  node[parts[-1]] = value
  return nested


def read_yaml(path: str) -> dict[str, Any]:
  """Reads a YAML config file; errors name the file."""
  try:
    with open(path, encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except OSError as e:
    raise ConfigError(f'cannot read config file {path!r}: {e.strerror}') from None
  except yaml.YAMLError as e:
    raise ConfigError(f'config file {path!r} is not valid YAML: {e}') from None
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ConfigError(f'config file {path!r} must hold a mapping, got {type(data).__name__}')
  return data


def load_config(
  config_cls: Type[C],
  yaml_paths: Iterable[str] = (),
  overrides: Iterable[str] = (),
) -> C:
  """Builds a validated config: defaults, then each YAML file, then each override.

  Args:
    config_cls: the root config class.
    yaml_paths: YAML files applied in order.
    overrides: strings `key.path=value`, applied after the files.

  Returns:
    The resolved, validated config.

  Raises:
    ConfigError: naming the file or key at fault.
  """
  cfg = config_cls()
  for path in yaml_paths:
    try:
      override(cfg, read_yaml(path))
    except ConfigError as e:
      msg = str(e)
      raise ConfigError(msg if path in msg else f'{path}: {msg}') from None
  for text in overrides:
    override(cfg, parse_override(text))
  validate_all(cfg)
  return cfg


def save_config(cfg: Config, model_dir: str, filename: str = 'config.yaml') -> str:
  """Writes the resolved config as YAML into `model_dir`; returns the file path."""
  import tensorflow as tf  # Local: gs:// and other tf.io filesystems for model_dir.

  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, filename)
  with tf.io.gfile.GFile(path, 'w') as f:
    yaml.safe_dump(to_plain(cfg), f, sort_keys=False)
  return path


def to_plain(cfg: Config) -> dict[str, Any]:
  """The config as plain dicts/lists, the form YAML and JSON take."""

  def plain(v):
    if isinstance(v, Config):
      return {k: plain(getattr(v, k)) for k in _field_types(v)}
    if isinstance(v, (list, tuple)):
      return [plain(x) for x in v]
    return v

  return plain(cfg)
