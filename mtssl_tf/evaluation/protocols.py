"""The registry of evaluation protocols: one line per protocol.

`mtssl-eval --eval`, `EvalConfig`'s sections, the grid's `evaluations:` and the
results tables all read this registry. Entries are `module:Class` strings so that
listing the names (flag parsing, `--help`) does not import TensorFlow; the class is
imported on first use.

Adding a protocol: write `mtssl_tf/evaluation/<name>.py` with a `Protocol` subclass
(see `protocol.py`), its test, one line below and a YAML file in configs/eval/.
A protocol kept outside the package is registered without editing it by the
environment variable `MTSSL_EVAL_PROTOCOLS=name=module:Class[,name=module:Class...]`
(read at import, so `mtssl-eval --help` and the grid see it too).
"""

from __future__ import annotations

import importlib
import os
from typing import Dict, List, Tuple, Type

PLUGINS_ENV = 'MTSSL_EVAL_PROTOCOLS'
_REGISTRY: Dict[str, str] = {}


def register(name: str, target: str) -> None:
  """Registers protocol `name` as `module:Class` (a `Protocol` subclass whose `name` is `name`).

  Raises:
    ValueError: the name is taken or malformed.
  """
  if not name.isidentifier():
    raise ValueError(f'protocol name {name!r} must be an identifier (it is a config section)')
  if name in _REGISTRY and _REGISTRY[name] != target:
    raise ValueError(f'protocol {name!r} is already registered as {_REGISTRY[name]}')
  _REGISTRY[name] = target


def unregister(name: str) -> None:
  """Removes a protocol (tests that register a toy one clean up with this)."""
  _REGISTRY.pop(name, None)


# One line per protocol, in the order of the papers' tables.
register('linear', 'mtssl_tf.evaluation.linear:LinearProtocol')
register('detection', 'mtssl_tf.evaluation.detection:DetectionProtocol')
register('depth', 'mtssl_tf.evaluation.depth:DepthProtocol')
register('supervised', 'mtssl_tf.evaluation.supervised:SupervisedProtocol')
register('knn', 'mtssl_tf.evaluation.knn:KnnProtocol')
register('voc07_svm', 'mtssl_tf.evaluation.svm:Voc07SvmProtocol')
register('voc07_lowshot', 'mtssl_tf.evaluation.svm:Voc07LowShotProtocol')
register('voc07_cls', 'mtssl_tf.evaluation.voc_classification:Voc07ClassificationProtocol')
register('voc12_seg', 'mtssl_tf.evaluation.segmentation:Voc12SegmentationProtocol')
register('figures', 'mtssl_tf.evaluation.embedding:FiguresProtocol')
register('nonlinear', 'mtssl_tf.evaluation.nonlinear:NonlinearProtocol')
register('places_linear', 'mtssl_tf.evaluation.places:PlacesLinearProtocol')
register('filters', 'mtssl_tf.evaluation.filters:FiltersProtocol')


def _register_plugins(text: str) -> None:
  for item in filter(None, (part.strip() for part in text.split(','))):
    name, sep, target = item.partition('=')
    if not sep or ':' not in target:
      raise ValueError(f'{PLUGINS_ENV}: {item!r} is not name=module:Class')
    register(name.strip(), target.strip())


_register_plugins(os.environ.get(PLUGINS_ENV, ''))


def names() -> Tuple[str, ...]:
  """The registered protocol names, in registration order (no TensorFlow import)."""
  return tuple(_REGISTRY)


def protocol_class(name: str) -> Type:
  """The `Protocol` subclass registered as `name`.

  Raises:
    ValueError: no such protocol (the message lists the registered ones), or the
      registered class does not declare that name.
  """
  if name not in _REGISTRY:
    raise ValueError(f'unknown evaluation {name!r}; choose one of {list(_REGISTRY)}')
  module, _, attr = _REGISTRY[name].partition(':')
  cls = getattr(importlib.import_module(module), attr)
  if getattr(cls, 'name', None) != name:
    raise ValueError(f'{_REGISTRY[name]} declares name {getattr(cls, "name", None)!r}, registered as {name!r}')
  return cls


def protocol_classes() -> List[Type]:
  """Every registered `Protocol` subclass, in registration order."""
  return [protocol_class(n) for n in _REGISTRY]


def with_init() -> Tuple[str, ...]:
  """Protocols that evaluate a given trunk (the grid runs them on a row's network)."""
  return tuple(c.name for c in protocol_classes() if c.uses_init)
