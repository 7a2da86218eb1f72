"""Runs one evaluation from an `EvalConfig`: data sources, trunk, protocol, results."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from absl import logging

from mtssl_tf.configs.base import save_config
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.config import EvalConfig, load_eval_config, run_preprocessing

__all__ = ['load_eval_config', 'run', 'headline', 'sources_for']

# Evaluation -> (config fields of its two sources, the synthetic world's entries for them).
_SOURCES = {
  'linear': (('train_source', 'validation_source'), ('images_train', 'images_validation')),
  'supervised': (('train_source', 'validation_source'), ('images_train', 'images_validation')),
  'detection': (('train_source', 'test_source'), ('detection_trainval', 'detection_test')),
  'depth': (('train_source', 'test_source'), ('depth_train', 'depth_test')),
}

_HEADLINE = {
  'linear': ('top1', 'top5'),
  'supervised': ('top1', 'top5'),
  'detection': (
    'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point',
    'PascalBoxes_Precision/mAP@0.5IOU',
    'PascalBoxes_Precision/mAP@0.75IOU',
  ),
  'depth': ('delta1', 'delta2', 'delta3', 'abs_rel', 'rms', 'log10'),
}


def sources_for(name: str, cfg: EvalConfig) -> Tuple[str, str]:
  """The (train, test) source specs of evaluation `name`; empty ones come from the synthetic world."""
  from mtssl_tf.train.launch import default_world_dir

  section = getattr(cfg, name)
  fields, world_keys = _SOURCES[name]
  specs = [getattr(section, f) for f in fields]
  if all(specs):
    return specs[0], specs[1]
  from mtssl_tf.data.synthetic.world import make_world

  world_dir = cfg.world_dir or default_world_dir(cfg.world_preset)
  logging.info('%s: empty data sources read the synthetic world in %s', name, world_dir)
  world = make_world(world_dir, cfg.world_preset)
  return tuple(spec or world['sources'][key] for spec, key in zip(specs, world_keys))


def run(name: str, cfg: EvalConfig, model_dir: str) -> Dict[str, Any]:
  """Runs evaluation `name` and returns its results (also in results.json).

  Raises:
    ValueError: unknown evaluation.
    ConfigError, DataError, FileNotFoundError: named config, data or init problems.
  """
  if name not in _SOURCES:
    raise ValueError(f'unknown evaluation {name!r}; choose one of {sorted(_SOURCES)}')
  train_spec, test_spec = sources_for(name, cfg)
  save_config(cfg, backbone.eval_dir(model_dir, name), 'eval_config.yaml')
  if cfg.precision != 'float32':
    import tensorflow as tf

    tf.keras.mixed_precision.set_global_policy(cfg.precision)
  if name == 'supervised':
    from mtssl_tf.evaluation.supervised import run_supervised

    return run_supervised(cfg.supervised, cfg.trunk, model_dir, train_spec, test_spec, precision=cfg.precision)
  trunk = backbone.load_trunk(cfg.init, cfg.trunk, cfg.precision)
  preprocessing = run_preprocessing(cfg)
  logging.info('%s: trunk from %s, %s input', name, cfg.init, preprocessing)
  kwargs = dict(preprocessing=preprocessing, init_source=cfg.init)
  if name == 'linear':
    from mtssl_tf.evaluation.linear import run_linear

    return run_linear(cfg.linear, trunk, model_dir, train_spec, test_spec, **kwargs)
  if name == 'depth':
    from mtssl_tf.evaluation.depth import run_depth

    return run_depth(cfg.depth, trunk, model_dir, train_spec, test_spec, **kwargs)
  from mtssl_tf.evaluation.detection import run_detection

  return run_detection(cfg.detection, trunk, model_dir, train_spec, test_spec, **kwargs)


def headline(name: str, results: Dict[str, Any]) -> Dict[str, Any]:
  """The few numbers worth printing from a results dict."""
  metrics = results.get('metrics') if isinstance(results.get('metrics'), dict) else {}
  out = {k: results.get(k, metrics.get(k)) for k in _HEADLINE.get(name, ())}
  return {k: v for k, v in out.items() if v is not None} or results
