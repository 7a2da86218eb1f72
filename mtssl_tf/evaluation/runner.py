"""Runs one evaluation from an eval config: data sources, trunk, protocol, results.

The protocol comes from the registry (`protocols.py`); this module only resolves the
sources (the synthetic world's for empty ones), the precision and the trunk's input,
and hands the protocol its `Context`.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from absl import logging

from mtssl_tf import hardware
from mtssl_tf.configs.base import save_config
from mtssl_tf.evaluation import backbone, protocols
from mtssl_tf.evaluation.config import EvalConfigBase, load_eval_config, run_preprocessing
from mtssl_tf.evaluation.protocol import Context

__all__ = ['load_eval_config', 'run', 'headline', 'sources_for']


def sources_for(name: str, cfg: EvalConfigBase) -> Tuple[str, str]:
  """The (train, test) source specs of evaluation `name`; empty ones come from the synthetic world."""
  cls = protocols.protocol_class(name)
  section = cfg.section(name)
  specs = [getattr(section, f) for f in cls.source_fields]
  if all(specs):
    return specs[0], specs[1]
  from mtssl_tf.data.synthetic.world import default_world_dir, make_world

  world_dir = cfg.world_dir or default_world_dir(cfg.world_preset)
  logging.info('%s: empty data sources read the synthetic world in %s', name, world_dir)
  world = make_world(world_dir, cfg.world_preset)
  return tuple(spec or world['sources'][key] for spec, key in zip(specs, cls.world_sources))


def context(name: str, cfg: EvalConfigBase, model_dir: str, progress: bool = True) -> Context:
  """The protocol's context: its validated section, resolved sources and trunk input."""
  train_spec, test_spec = sources_for(name, cfg)
  return Context(
    name=name,
    section=cfg.section(name),
    model_dir=model_dir,
    out_dir=backbone.eval_dir(model_dir, name),
    train_spec=train_spec,
    test_spec=test_spec,
    preprocessing=run_preprocessing(cfg),
    init=cfg.init,
    trunk_config=cfg.trunk,
    config=cfg,
    precision=hardware.resolve_precision(cfg.precision),
    random_init=cfg.random_init,
    random_init_images=cfg.random_init_images,
    progress=progress,
  )


def run(name: str, cfg: EvalConfigBase, model_dir: str) -> Dict[str, Any]:
  """Runs evaluation `name` and returns its results (also in results.json).

  Raises:
    ValueError: unknown evaluation.
    ConfigError, DataError, FileNotFoundError: named config, data or init problems.
  """
  cls = protocols.protocol_class(name)
  ctx = context(name, cfg, model_dir)
  save_config(cfg, ctx.out_dir, 'eval_config.yaml')
  if ctx.precision != 'float32':
    import tensorflow as tf

    tf.keras.mixed_precision.set_global_policy(ctx.precision)
  if cls.uses_init:
    logging.info('%s: trunk from %s, %s input', name, cfg.init, ctx.preprocessing)
  return cls().run(ctx)


def headline(name: str, results: Dict[str, Any]) -> Dict[str, Any]:
  """The few numbers worth printing from a results dict (the protocol's `headline` keys)."""
  metrics = results.get('metrics') if isinstance(results.get('metrics'), dict) else {}
  keys = protocols.protocol_class(name).headline if name in protocols.names() else ()
  out = {k: results.get(k, metrics.get(k)) for k in keys}
  return {k: v for k, v in out.items() if v is not None} or results
