"""The config of `mtssl-eval`: where the trunk comes from, and each evaluation's protocol."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Tuple

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import backbone, protocols
from mtssl_tf.evaluation import random_init as random_inits

PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16')


@dataclasses.dataclass
class EvalConfigBase(Config):
  """Root config of `mtssl-eval`; `eval_config_class()` adds one section per registered protocol.

  Attributes:
    init: the trunk's source: 'random' (the paper's control), a checkpoint prefix or
      folder, a pre-training run's model_dir, or a SavedModel folder. Protocols that
      train their own trunk (the supervised baseline) ignore it.
    trunk: the trunk's shape. When `init` is a run whose config.yaml is found, its
      trunk section is the default here (files and overrides still win).
    preprocessing: the trunk's input (`backbone.EVAL_INPUTS`): 'rgb' colour, the
      paper's for every trunk (Doersch §3.3: harmonized trunks are evaluated on
      colour); 'harmonized' grey (L replicated); 'as_trained' the pre-training run's
      input (grey when every task was harmonized).
    precision: Keras dtype policy of the evaluation; 'auto' is mixed_bfloat16 only where the
      hardware computes bf16 natively (`hardware.resolve_precision`). float32 by default: the
      evaluations' figures were measured in it.
    random_init: how `init: random` draws an AlexNet (`evaluation.random_init`):
      'data_dependent' (Krähenbühl et al. 2016 on the protocol's training images, the
      paper's Random row) or 'fillers' (Caffe's Gaussian fillers only).
    random_init_images: training images the data-dependent initialisation reads
      (magic_init: 10 batches of 16).
    world_preset: synthetic world used for sources left empty.
    world_dir: where that world lives (empty: ~/.cache/mtssl_tf/world_<preset>).
    <protocol>: each registered protocol's section (`protocols.py`), e.g. linear
      (frozen linear classification and per-layer probes), detection (Faster R-CNN on
      VOC07), depth (NYU depth with up-projection), supervised (the "ImageNet labels"
      baseline).
  """

  init: str = backbone.RANDOM
  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  preprocessing: str = backbone.DEFAULT_EVAL_INPUT
  precision: str = 'float32'
  random_init: str = random_inits.DATA_DEPENDENT
  random_init_images: int = random_inits.IMAGES
  world_preset: str = 'small'
  world_dir: str = ''

  def validate(self) -> None:
    if self.preprocessing not in backbone.EVAL_INPUTS:
      raise ConfigError(f'preprocessing: must be one of {backbone.EVAL_INPUTS}, got {self.preprocessing!r}')
    if self.precision not in PRECISIONS:
      raise ConfigError(f'precision: must be one of {PRECISIONS}, got {self.precision!r}')
    random_inits.check(self.random_init, self.random_init_images)

  def section(self, name: str) -> Config:
    """The config section of protocol `name`."""
    return getattr(self, name)


_CLASSES: Dict[Tuple[str, ...], type] = {}


def eval_config_class() -> type:
  """`EvalConfigBase` plus one section per registered protocol (rebuilt when the registry changes)."""
  key = protocols.names()
  if key not in _CLASSES:
    fields = []
    for cls in protocols.protocol_classes():
      fields.append((cls.name, cls.config_class, dataclasses.field(default_factory=cls.config_class)))
    _CLASSES[key] = dataclasses.make_dataclass('EvalConfig', fields, bases=(EvalConfigBase,))
    _CLASSES[key].__module__ = __name__
  return _CLASSES[key]


EvalConfig = eval_config_class()


def load_eval_config(files: Iterable[str] = (), overrides: Iterable[str] = (), init: str = '') -> EvalConfigBase:
  """Defaults, then the init run's trunk section, then YAML files, then overrides.

  Args:
    files: YAML files applied in order.
    overrides: `key.path=value` strings.
    init: overrides `init` (the --init flag); '' keeps the files' value.

  Raises:
    ConfigError: a bad key, type or value (named), or an init source that does not exist.
  """
  extra = [('--init', {'init': init})] if init else []
  return backbone.load_layered(eval_config_class()(), files, overrides, 'init', extra)


def run_preprocessing(cfg: EvalConfigBase) -> str:
  """The trunk's input, 'rgb' or 'harmonized': the config's, or the pre-training run's for 'as_trained'."""
  return backbone.run_input_convention(cfg.preprocessing, cfg.init)
