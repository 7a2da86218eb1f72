"""A forward pass of the trunk on generated images, and a readable report of it."""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, Tuple

import tensorflow as tf

from mtssl_tf import hardware
from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.trunk import registry
from mtssl_tf.trunk.lasso import LassoMix
from mtssl_tf.trunk.resnet_v2 import build_trunk


@dataclasses.dataclass
class TrunkSummary:
  """What `summarize_trunk` measured."""

  units_per_block: Tuple[int, ...]
  output_stride: int
  precision: str
  input_shape: Tuple[int, ...]
  endpoint_shapes: Dict[str, Tuple[int, ...]]
  endpoint_dtypes: Dict[str, str]
  trainable_params: int
  total_params: int
  build_seconds: float
  forward_seconds: float
  lasso_params: int = 0
  kind: str = 'resnet_v2'
  description: str = ''

  def report(self) -> str:
    """Human-readable multi-line report."""
    if self.kind == 'resnet_v2':
      header = (
        f'ResNet-v2 trunk, units per block {tuple(self.units_per_block)}, '
        f'output stride {self.output_stride}, precision {self.precision}'
      )
    else:
      header = f'{self.description}, output stride {self.output_stride} (fixed), precision {self.precision}'
    lines = [
      header,
      f'input {self.input_shape}',
      'endpoints:',
    ]
    units = [k for k in self.endpoint_shapes if k.startswith('block3/unit_')]
    for name, shape in self.endpoint_shapes.items():
      if name in units[1:-1]:
        continue  # Identical to the first and last unit; listed as a range.
      lines.append(f'  {name:<16} {str(shape):<22} {self.endpoint_dtypes[name]}')
      if len(units) > 2 and name == units[0]:
        lines.append(f'  ... {len(units) - 2} more block-3 units ...')
    lines += [
      f'parameters: {self.total_params:,} ({self.trainable_params:,} trainable)'
      + (f', lasso alpha {self.lasso_params}' if self.lasso_params else ''),
      f'build {self.build_seconds:.1f} s, forward pass {self.forward_seconds:.2f} s',
    ]
    return '\n'.join(lines)


def summarize_trunk(cfg: Config) -> TrunkSummary:
  """Builds the configured trunk, runs it on seeded random images and measures it.

  Args:
    cfg: a validated experiment config (`mtssl_tf.train.experiment.ExperimentConfig`; this layer
      reads only its trunk, lasso, runtime and demo sections; `demo` sets the input).

  Returns:
    A `TrunkSummary`.
  """
  tf.random.set_seed(cfg.runtime.seed)
  start = time.perf_counter()
  precision = hardware.resolve_precision(cfg.runtime.precision)
  kind = cfg.trunk.kind
  if kind == 'resnet_v2':
    trunk = build_trunk(cfg.trunk, precision=precision)
    description = ''
  else:
    try:
      registry.final_size(cfg.trunk, cfg.demo.image_size)
    except ValueError as e:
      raise ConfigError(f'demo.image_size: too small for trunk.kind {kind!r}: {e}') from None
    trunk = registry.build_trunk(cfg.trunk, precision)
    trunk(tf.zeros([1, cfg.demo.image_size, cfg.demo.image_size, 3]), training=False)  # Creates the variables.
    section = getattr(cfg.trunk, kind)
    variant = f" '{section.variant}'" if kind == 'alexnet' else ''
    description = (
      f'{kind}{variant} trunk (conv layers), width {section.width:g}, batch_norm {section.batch_norm}, '
      f'final = {section.final_endpoint}'
    )
  build_seconds = time.perf_counter() - start
  shape = (cfg.demo.batch_size, cfg.demo.image_size, cfg.demo.image_size, 3)
  images = tf.random.uniform(shape, -1.0, 1.0, seed=cfg.runtime.seed)
  forward = tf.function(lambda x: trunk(x, training=False))
  forward(images)  # Trace once so the timing below is the steady-state pass.
  start = time.perf_counter()
  endpoints = forward(images)
  forward_seconds = time.perf_counter() - start
  lasso_params = 0
  if cfg.lasso.enabled and trunk.supports_lasso:
    lasso = LassoMix(1, trunk.num_units, cfg.lasso.l1_weight, cfg.lasso.init)
    lasso(trunk.block3_units(endpoints), consumer=0)
    lasso_params = int(lasso.raw_alpha.shape.num_elements())
  return TrunkSummary(
    units_per_block=tuple(cfg.trunk.units_per_block),
    output_stride=registry.fixed_stride(cfg.trunk) or cfg.trunk.output_stride,
    precision=precision,
    input_shape=shape,
    endpoint_shapes={k: tuple(v.shape) for k, v in endpoints.items()},
    endpoint_dtypes={k: v.dtype.name for k, v in endpoints.items()},
    trainable_params=int(sum(v.shape.num_elements() for v in trunk.trainable_variables)),
    total_params=int(trunk.count_params()),
    build_seconds=build_seconds,
    forward_seconds=forward_seconds,
    lasso_params=lasso_params,
    kind=kind,
    description=description,
  )
