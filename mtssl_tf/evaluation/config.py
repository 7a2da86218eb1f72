"""The config of `mtssl-eval`: where the trunk comes from, and each evaluation's protocol."""

from __future__ import annotations

import dataclasses
from typing import Iterable

from mtssl_tf.configs.base import Config, ConfigError, override, parse_override, read_yaml, validate_all
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.depth import DepthEvalConfig
from mtssl_tf.evaluation.detection import DetectionEvalConfig
from mtssl_tf.evaluation.linear import LinearEvalConfig
from mtssl_tf.evaluation.supervised import SupervisedConfig

EVALUATIONS = ('linear', 'detection', 'depth', 'supervised')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')


@dataclasses.dataclass
class EvalConfig(Config):
  """Root config of `mtssl-eval`.

  Attributes:
    init: the trunk's source: 'random' (the paper's control), a checkpoint prefix or
      folder, a pre-training run's model_dir, or a SavedModel folder. The supervised
      baseline ignores it (it trains from scratch).
    trunk: the trunk's shape. When `init` is a run whose config.yaml is found, its
      trunk section is the default here (files and overrides still win).
    preprocessing: the trunk's input (`backbone.EVAL_INPUTS`): 'rgb' colour, the
      paper's for every trunk (Doersch §3.3: harmonized trunks are evaluated on
      colour); 'harmonized' grey (L replicated); 'as_trained' the pre-training run's
      input (grey when every task was harmonized).
    precision: Keras dtype policy of the evaluation.
    world_preset: synthetic world used for sources left empty.
    world_dir: where that world lives (empty: ~/.cache/mtssl_tf/world_<preset>).
    linear: frozen linear classification (and per-layer probes).
    detection: Faster R-CNN on VOC07.
    depth: NYU depth with up-projection.
    supervised: the "ImageNet labels" baseline.
  """

  init: str = backbone.RANDOM
  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  preprocessing: str = backbone.DEFAULT_EVAL_INPUT
  precision: str = 'float32'
  world_preset: str = 'small'
  world_dir: str = ''
  linear: LinearEvalConfig = dataclasses.field(default_factory=LinearEvalConfig)
  detection: DetectionEvalConfig = dataclasses.field(default_factory=DetectionEvalConfig)
  depth: DepthEvalConfig = dataclasses.field(default_factory=DepthEvalConfig)
  supervised: SupervisedConfig = dataclasses.field(default_factory=SupervisedConfig)

  def validate(self) -> None:
    if self.preprocessing not in backbone.EVAL_INPUTS:
      raise ConfigError(f'preprocessing: must be one of {backbone.EVAL_INPUTS}, got {self.preprocessing!r}')
    if self.precision not in PRECISIONS:
      raise ConfigError(f'precision: must be one of {PRECISIONS}, got {self.precision!r}')


def load_eval_config(files: Iterable[str] = (), overrides: Iterable[str] = (), init: str = '') -> EvalConfig:
  """Defaults, then the init run's trunk section, then YAML files, then overrides.

  Args:
    files: YAML files applied in order.
    overrides: `key.path=value` strings.
    init: overrides `init` (the --init flag); '' keeps the files' value.

  Raises:
    ConfigError: a bad key, type or value (named), or an init source that does not exist.
  """
  cfg = EvalConfig()
  layers = [(path, read_yaml(path)) for path in files]
  layers += [('--override', parse_override(text)) for text in overrides]
  if init:
    layers.append(('--init', {'init': init}))
  source = init
  for _, values in layers:
    source = values.get('init', source)
  try:
    run_trunk = backbone.run_trunk_config(source or cfg.init)
  except FileNotFoundError as e:
    raise ConfigError(f'init: {e}') from None
  if run_trunk:
    override(cfg, {'trunk': run_trunk}, prefix='')
  for where, values in layers:
    try:
      override(cfg, values)
    except ConfigError as e:
      raise ConfigError(f'{where}: {e}' if where.endswith('.yaml') and where not in str(e) else str(e)) from None
  validate_all(cfg)
  return cfg


def run_preprocessing(cfg: EvalConfig) -> str:
  """The trunk's input, 'rgb' or 'harmonized': the config's, or the pre-training run's for 'as_trained'."""
  return backbone.run_input_convention(cfg.preprocessing, cfg.init)
