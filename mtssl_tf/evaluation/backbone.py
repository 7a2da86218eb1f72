"""Where an evaluation's trunk comes from: random init, a checkpoint, or a SavedModel.

Every evaluation starts from one of:

* `random`: fresh initialisation (the paper's control row);
* a pre-training checkpoint: a file prefix (`.../checkpoints/ckpt-12`), a checkpoint
  folder (its latest checkpoint), or a run's `model_dir` (its `checkpoints/` latest);
* an exported SavedModel folder (`mtssl-export`, or a run's `saved_model/`).

Only the trunk's variables are read (pre-training heads, optimizer slots and the
lasso alphas are ignored), by object path, so the same code reads both: a checkpoint
holds `model.trunk`, a SavedModel's `variables/` holds the exported module's
`model.trunk`. A trunk config that does not match the stored one is a clear error.

Any trunk kind of the registry (`trunk.registry`: 'resnet_v2', 'alexnet', 'vgg16') is
built and read the same way; the kind, like the shape, comes from the run's own
config.yaml (`load_layered`). Protocols that need ResNet-v2's block structure (lasso
over block-3 units, block 4, a chosen output stride) declare it and refuse other
kinds before anything is loaded (`check_trunk_kind`).

What the trunk sees (`EVAL_INPUTS`, one choice for evaluation, transfer extraction and
export): Doersch & Zisserman §3.3 replicate L three times "so that the network can be
evaluated on color images", so every trunk, harmonized or not, is evaluated on colour
by default: 'rgb', sRGB scaled to [-1, 1], the range of the harmonized L / 50 - 1
(on grey pixels the two differ by at most 0.07). 'harmonized' feeds grey (L
replicated) when asked; 'as_trained' feeds each trunk its pre-training input (grey
only when every task of the run was harmonized), the other column of Table 3.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple, TypeVar

import tensorflow as tf

from mtssl_tf.configs import TrunkConfig
from mtssl_tf.configs.base import Config, ConfigError, override, parse_override, read_yaml, validate_all
from mtssl_tf.configs.experiment import ALEXNET_ENDPOINTS, LASSO_INITS, LASSO_MIX_NORMS, VGG16_ENDPOINTS
from mtssl_tf.trunk.inputs import PREPROCESSING, preprocess
from mtssl_tf.trunk.registry import build_trunk
from mtssl_tf.trunk.restore import read_model_part

RANDOM = 'random'
C = TypeVar('C', bound=Config)
# Evaluation input choices (see the module docstring); colour is the paper's.
EVAL_INPUTS = ('rgb', 'harmonized', 'as_trained')
DEFAULT_EVAL_INPUT = 'rgb'
# Endpoint names a protocol's config may name, over every trunk kind (whether the loaded
# trunk has it is checked against the trunk itself); 'block3/unit_NN' too for ResNet-v2.
RESNET_ENDPOINTS = ('stem', 'block1', 'block2', 'block3', 'final')
ENDPOINT_NAMES = tuple(dict.fromkeys(RESNET_ENDPOINTS + ALEXNET_ENDPOINTS + VGG16_ENDPOINTS))
# Side of the blank image that creates a new trunk's variables (they do not depend on it;
# every kind has a non-empty final map at 64 px: AlexNet's pool5 is 1x1).
BUILD_SIZE = 64


def is_endpoint_name(name: str) -> bool:
  """Whether `name` is an endpoint of some trunk kind (`ENDPOINT_NAMES` or 'block3/unit_NN')."""
  return name in ENDPOINT_NAMES or (name.startswith('block3/unit_') and name[len('block3/unit_') :].isdigit())


def check_trunk_kind(protocol: str, kind: str, allowed: Sequence[str], why: str) -> None:
  """Raises `ConfigError` naming the protocol and `trunk.kind` when `kind` is not in `allowed`.

  Args:
    protocol: the protocol's name.
    kind: the trunk's kind (`TrunkConfig.kind` or a built trunk's `kind`).
    allowed: the kinds the protocol runs on.
    why: what the protocol needs from those kinds (one phrase).
  """
  if kind not in allowed:
    raise ConfigError(
      f'{protocol}: needs a trunk of kind {" or ".join(repr(k) for k in allowed)} ({why}); this trunk.kind is {kind!r}'
    )


@dataclasses.dataclass
class LassoMixConfig(Config):
  """A protocol's own lasso mix of the block-3 units (Doersch §3.2), shared by linear, detection and depth.

  Attributes:
    use_lasso: the protocol's head reads a new learned mix of every block-3 unit.
    lasso_l1_weight: L1 weight on that alpha row (the pre-training default, 1e-3).
    lasso_init: 'last' (starts as the plain block-3 output) or 'uniform'.
    lasso_mix_norm: 'trunk' (default): the mix takes block 3's place and goes through the
      trunk's own closing BN-ReLU (frozen as the trunk is); 'per_consumer': a new BN-ReLU
      trained on the mix (see `LassoConfig.mix_norm`).
  """

  use_lasso: bool = False
  lasso_l1_weight: float = 1e-3
  lasso_init: str = 'last'
  lasso_mix_norm: str = 'trunk'


def lasso_alpha(lasso: Any) -> List[float]:
  """A protocol's own lasso mix's alpha (its one consumer row), as floats for results.json and summaries."""
  return [float(a) for a in lasso.alpha().numpy()[0]]


def check_lasso_fields(cfg: LassoMixConfig, section: str) -> None:
  """Raises `ConfigError` naming `<section>.<key>` for an impossible lasso field."""
  if cfg.lasso_l1_weight < 0:
    raise ConfigError(f'{section}.lasso_l1_weight: must be >= 0, got {cfg.lasso_l1_weight}')
  if cfg.lasso_init not in LASSO_INITS:
    raise ConfigError(f'{section}.lasso_init: must be one of {LASSO_INITS}, got {cfg.lasso_init!r}')
  if cfg.lasso_mix_norm not in LASSO_MIX_NORMS:
    raise ConfigError(f'{section}.lasso_mix_norm: must be one of {LASSO_MIX_NORMS}, got {cfg.lasso_mix_norm!r}')


def resolve_source(source: str) -> Tuple[str, str]:
  """Classifies an init source: ('random', ''), ('checkpoint', prefix) or ('saved_model', dir).

  Raises:
    FileNotFoundError: the path holds neither a checkpoint nor a SavedModel (named).
  """
  if not source or source == RANDOM:
    return RANDOM, ''
  if tf.io.gfile.isdir(source):
    if tf.io.gfile.exists(os.path.join(source, 'saved_model.pb')):
      return 'saved_model', source
    for folder in (source, os.path.join(source, 'checkpoints')):
      latest = tf.train.latest_checkpoint(folder) if tf.io.gfile.isdir(folder) else None
      if latest:
        return 'checkpoint', latest
    if tf.io.gfile.exists(os.path.join(source, 'saved_model', 'saved_model.pb')):
      return 'saved_model', os.path.join(source, 'saved_model')
  elif tf.io.gfile.exists(source + '.index'):
    return 'checkpoint', source
  raise FileNotFoundError(
    f'init source {source!r}: no checkpoint (prefix, folder or run dir with checkpoints/) and no SavedModel found'
  )


def run_config_section(source: str, section: str) -> Dict[str, Any]:
  """A section of the run config stored beside a checkpoint or SavedModel, or {}.

  Looks for `config.yaml` in the source's folder and its parents (two levels:
  run/checkpoints/ckpt-N, run/saved_model), where `mtssl-train` writes it.
  """
  kind, path = resolve_source(source)
  if kind == RANDOM:
    return {}
  folder = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
  for _ in range(3):
    candidate = os.path.join(folder, 'config.yaml')
    if tf.io.gfile.exists(candidate):
      return dict(read_yaml(candidate).get(section) or {})
    folder = os.path.dirname(folder)
  return {}


def run_input_convention(preprocessing: str, source: str) -> str:
  """'rgb' or 'harmonized': `preprocessing` itself, or for 'as_trained' the pre-training input of the run at `source`.

  Raises:
    ValueError: `preprocessing` is not one of `EVAL_INPUTS`.
  """
  if preprocessing not in EVAL_INPUTS:
    raise ValueError(f'preprocessing: must be one of {EVAL_INPUTS}, got {preprocessing!r}')
  if preprocessing != 'as_trained':
    return preprocessing
  from mtssl_tf.tasks import input_convention

  return input_convention(run_config_section(source, 'tasks'))


def run_trunk_config(source: str) -> Dict[str, Any]:
  """The pre-training run's `trunk` section, so `--init=<run>` needs no trunk flags."""
  return run_config_section(source, 'trunk')


def load_layered(cfg: C, files: Iterable[str] = (), overrides: Iterable[str] = (), init_key: str = 'init',
                 extra: Sequence[Tuple[str, Dict[str, Any]]] = ()) -> C:  # fmt: skip
  """Defaults, then the init run's trunk section, then YAML files, then overrides, then `extra`; validated.

  The one loader of every config that starts from a trained trunk (`mtssl-eval`'s and
  `mtssl-transfer`'s): the trunk shape stored beside the init source (`run_trunk_config`)
  becomes the default of the `trunk` section next to `init_key`, so a user names the
  run and nothing else; files and overrides still win.

  Args:
    cfg: the defaults (modified and returned).
    files: YAML files applied in order.
    overrides: `key.path=value` strings.
    init_key: dotted path of the init source field ('init', 'extract.init'); its
      section holds the `trunk` to fill.
    extra: more (where, values) layers applied last (e.g. a flag).

  Raises:
    ConfigError: a bad key, type or value (named, with the YAML file), or an init
      source that does not exist.
  """
  layers = [(path, read_yaml(path)) for path in files]
  layers += [('--override', parse_override(text)) for text in overrides]
  layers += list(extra)
  *parents, leaf = init_key.split('.')
  section = cfg
  for name in parents:
    section = getattr(section, name)
  init = getattr(section, leaf)
  for _, values in layers:
    node = values
    for name in parents:
      node = node.get(name) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node:
      init = node[leaf]
  if isinstance(init, str) and init:
    try:
      run_trunk = run_trunk_config(init)
    except FileNotFoundError as e:
      raise ConfigError(f'{init_key}: {e}') from None
    if run_trunk:
      override(section.trunk, run_trunk, prefix='.'.join([*parents, 'trunk']))
  for where, values in layers:
    try:
      override(cfg, values)
    except ConfigError as e:
      raise ConfigError(f'{where}: {e}' if where.endswith('.yaml') and where not in str(e) else str(e)) from None
  validate_all(cfg)
  return cfg


def describe_trunk(config: TrunkConfig) -> str:
  """The fields that decide a trunk's variables, for error messages ('alexnet (variant=standard, width=1.0, ...)')."""
  if config.kind == 'resnet_v2':
    return f'resnet_v2 (units_per_block={tuple(config.units_per_block)}, width={config.width})'
  section = getattr(config, config.kind)
  fields = f'width={section.width}, batch_norm={section.batch_norm}'
  if config.kind == 'alexnet':
    fields = f'variant={section.variant}, {fields}'
  return f'{config.kind} ({fields})'


def load_trunk(source: str, config: TrunkConfig, precision: str = 'float32') -> tf.keras.Model:
  """Builds a trunk of `config.kind` (`trunk.registry`) and fills it from `source` (see the module docstring).

  Args:
    source: 'random', a checkpoint prefix/folder/run dir, or a SavedModel folder.
    config: the trunk's kind and shape; must match the stored one (`load_layered` takes
      both from the run's config.yaml).
    precision: Keras dtype policy of the new trunk.

  Returns:
    A built trunk with the registry's interface (trainable; evaluations freeze it when
    their protocol says so).

  Raises:
    FileNotFoundError: nothing usable at `source`.
    ValueError: the run's config.yaml names another trunk kind, or the stored trunk does
      not match `config` (the message names the source, the kind and the shape).
  """
  kind, path = resolve_source(source)
  stored = run_trunk_config(source)  # {} without a config.yaml: then only the variables can tell.
  stored_kind = stored.get('kind', 'resnet_v2') if stored else config.kind  # Runs before the registry: ResNet-v2.
  if stored_kind != config.kind:
    raise ValueError(
      f'init source {source!r}: its run was trained with trunk.kind={stored_kind!r} (config.yaml), '
      f'but trunk.kind={config.kind!r} was asked; drop the trunk.kind override or pick the matching run'
    )
  trunk = build_trunk(config, precision=precision)
  trunk(tf.zeros([1, BUILD_SIZE, BUILD_SIZE, 3]), training=False)  # Creates the variables to restore into.
  if kind == RANDOM:
    return trunk
  prefix = path if kind == 'checkpoint' else os.path.join(path, 'variables', 'variables')
  try:
    if kind == 'saved_model' and not _holds_model_trunk(prefix):
      _assign_by_name(trunk, tf.saved_model.load(path), path)
      return trunk
    # A checkpoint holds the trunk at model/trunk (MultiTaskModel); so does a SavedModel
    # exported before TrunkExport kept only its signatures' variables (`trunk_variables`).
    read_model_part(prefix, trunk=trunk)
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
      f'init source {source!r} ({kind}) does not hold a trunk of shape {describe_trunk(config)}: '
      f'{str(e).splitlines()[0][:300]}'
    ) from None
  return trunk


def _holds_model_trunk(prefix: str) -> bool:
  return any(name.startswith('model/trunk/') for name, _ in tf.train.list_variables(prefix))


def _variable_key(variable: tf.Variable) -> str:
  # Without the top layer's name: 'trunk/conv1/kernel:0' and 'trunk_1/conv1/kernel:0' are one weight.
  return variable.name.split('/', 1)[-1]


def _assign_by_name(trunk: tf.keras.Model, loaded, path: str) -> None:
  """Fills `trunk` from a TrunkExport SavedModel's `trunk_variables`, matched by variable name.

  Raises:
    ValueError: a trunk variable is missing from the export or has another shape.
  """
  stored = {_variable_key(v): v for v in getattr(loaded, 'trunk_variables', [])}
  missing = [v.name for v in trunk.variables if _variable_key(v) not in stored]
  if missing:
    raise ValueError(f'{len(missing)} trunk variables are not in {path}, e.g. {missing[:3]}')
  for v in trunk.variables:
    value = stored[_variable_key(v)]
    if value.shape != v.shape:
      raise ValueError(f'{v.name} has shape {value.shape.as_list()} in {path}, expected {v.shape.as_list()}')
    v.assign(value)


def input_fn(mode: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """uint8 images -> trunk input: colour ('rgb') or grey ('harmonized'), see `EVAL_INPUTS`."""
  if mode not in PREPROCESSING:
    raise ValueError(f'preprocessing must be one of {PREPROCESSING}, got {mode!r}')
  return lambda images: preprocess(images, mode)


def eval_dir(model_dir: str, name: str) -> str:
  """`<model_dir>/eval/<name>`: an evaluation's summaries, checkpoints and results."""
  path = os.path.join(model_dir, 'eval', name)
  tf.io.gfile.makedirs(path)
  return path


def write_results(model_dir: str, name: str, results: Dict[str, Any]) -> str:
  """Writes `<model_dir>/eval/<name>/results.json` atomically; returns its path."""
  return write_json(os.path.join(eval_dir(model_dir, name), 'results.json'), results)


def write_json(path: str, results: Dict[str, Any]) -> str:
  """Writes `results` to `path` atomically (sorted keys, NumPy scalars as floats); returns `path`."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True, default=float)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
