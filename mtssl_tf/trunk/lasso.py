"""Lasso mixing of block-3 units (Doersch & Zisserman 2017, §3.2).

Consumer n (a task head, or an evaluation head with its own layer) reads
sum_m alpha[n, m] * unit_m over the M block-3 units, with each row of alpha at unit
L2 norm and an L1 penalty on alpha that drives each row towards few units.

The unit-norm constraint is kept by reparameterisation: the layer stores free
weights `v` and uses alpha = v / ||v|| row-wise. Unlike a projection after each
update, this holds for every optimizer, including the per-task RMSProp applied on
parameter servers with raw resource ops, where Keras constraints never run.

What a head reads from its mix (`LassoConfig.mix_norm`, `head_input`). §3.2 adds
nothing but alpha: the head receives the mix, and the row constraint is there "to
control the output variance". Our pre-activation units leave their outputs
un-normalised, and the no-lasso trunk closes block 3 with a BatchNorm + ReLU (TF-Slim's
resnet_v2 'postnorm', `TrunkConfig.final_activation`). So by default ('trunk') the mix
takes block 3's place in front of that same closing BatchNorm + ReLU, shared by every
consumer as the trunk is: no parameters beyond alpha, alpha = e_M (init 'last') is
exactly the no-lasso network, and with `final_activation` off a head reads the bare
mix of the paper's formula. The row constraint keeps each mix at a unit's scale, so
the one BatchNorm sees comparable inputs from every task. 'per_consumer' instead gives
each consumer a new BatchNorm + ReLU of its own (the earlier choice of this project).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from mtssl_tf.configs.experiment import LASSO_INITS, LASSO_MIX_NORMS

_NORM_EPSILON = 1e-12


def initial_alpha(num_consumers: int, num_units: int, init: str = 'last') -> np.ndarray:
  """Initial alpha: 'last' picks the final unit (the plain trunk), 'uniform' spreads evenly."""
  if init == 'last':
    alpha = np.zeros((num_consumers, num_units), np.float32)
    alpha[:, -1] = 1.0
    return alpha
  if init == 'uniform':
    return np.full((num_consumers, num_units), 1.0 / np.sqrt(num_units), np.float32)
  raise ValueError(f'lasso init must be one of {LASSO_INITS}, got {init!r}')


class LassoMix(tf.keras.layers.Layer):
  """Holds alpha (consumers x units) and mixes block-3 units for each consumer.

  Calling the layer adds the L1 penalty of the rows it used to `layer.losses`, so
  a task's loss that sums `model.losses` pays for its own row only.
  """

  def __init__(
    self,
    num_consumers: int,
    num_units: int,
    l1_weight: float = 1e-3,
    init: str = 'last',
    consumer_names: Optional[Sequence[str]] = None,
    **kwargs,
  ):
    """Creates the layer.

    Args:
      num_consumers: N, the number of heads reading a mix.
      num_units: M, the number of block-3 units.
      l1_weight: weight of the L1 penalty on alpha.
      init: 'last' or 'uniform' (see `initial_alpha`).
      consumer_names: optional names of the rows (task names), for lookups and figures.
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    # autocast=False: the mix takes the units' dtype (bfloat16 under mixed precision)
    # whatever this layer's policy; alpha itself stays float32.
    kwargs.setdefault('autocast', False)
    super().__init__(**kwargs)
    if consumer_names is not None and len(consumer_names) != num_consumers:
      raise ValueError(f'{len(consumer_names)} consumer_names for {num_consumers} consumers')
    self.num_consumers = num_consumers
    self.num_units = num_units
    self.l1_weight = l1_weight
    self.consumer_names = list(consumer_names) if consumer_names else None
    # Variables stay float32 under mixed precision; the mix is cast to the units' dtype.
    self.raw_alpha = self.add_weight(
      'alpha',
      shape=(num_consumers, num_units),
      dtype=tf.float32,
      initializer=tf.constant_initializer(initial_alpha(num_consumers, num_units, init)),
      trainable=True,
      experimental_autocast=False,
    )

  def consumer_index(self, consumer) -> int:
    """Row index of `consumer`, given as an index or a name from `consumer_names`."""
    if isinstance(consumer, str):
      if not self.consumer_names or consumer not in self.consumer_names:
        raise KeyError(f'lasso has no consumer {consumer!r}; it has {self.consumer_names}')
      return self.consumer_names.index(consumer)
    if not 0 <= consumer < self.num_consumers:
      raise IndexError(f'lasso consumer {consumer} out of range [0, {self.num_consumers})')
    return int(consumer)

  def alpha(self) -> tf.Tensor:
    """The constrained alpha, [N, M] float32, each row of unit L2 norm."""
    norm = tf.sqrt(tf.reduce_sum(tf.square(self.raw_alpha), axis=1, keepdims=True) + _NORM_EPSILON)
    return self.raw_alpha / norm

  def penalty(self, consumer=None) -> tf.Tensor:
    """l1_weight * sum |alpha| over one consumer's row, or all rows if None."""
    alpha = self.alpha()
    if consumer is not None:
      alpha = alpha[self.consumer_index(consumer)]
    return self.l1_weight * tf.reduce_sum(tf.abs(alpha))

  def call(self, units: Sequence[tf.Tensor], consumer=None):
    """Mixes the units.

    Args:
      units: M tensors of identical shape (block-3 unit outputs).
      consumer: index or name of one row; None mixes for every consumer.

    Returns:
      One tensor (shape of a unit) for a single consumer, else a list of N tensors.
    """
    if len(units) != self.num_units:
      raise ValueError(f'lasso expects {self.num_units} block-3 units, got {len(units)}')
    alpha = self.alpha()
    rows = [self.consumer_index(consumer)] if consumer is not None else range(self.num_consumers)
    dtype = units[0].dtype
    # A running weighted sum instead of stacking M unit maps keeps peak memory at
    # one unit's size; with alpha at 0 the unit still gets a (zero) gradient path.
    outputs: List[tf.Tensor] = []
    for n in rows:
      weights = tf.cast(alpha[n], dtype)
      outputs.append(tf.add_n([weights[m] * u for m, u in enumerate(units)]))
    self.add_loss(self.penalty(consumer))
    return outputs[0] if consumer is not None else outputs

  def get_config(self):
    config = super().get_config()
    config.update(
      num_consumers=self.num_consumers,
      num_units=self.num_units,
      l1_weight=self.l1_weight,
      consumer_names=self.consumer_names,
    )
    return config


def consumer_norm(mix_norm: str, name: str, dtype=None) -> Optional[tf.keras.layers.BatchNormalization]:
  """A consumer's own BatchNorm for `mix_norm` 'per_consumer'; None for 'trunk' (the trunk's closes the mix)."""
  if mix_norm not in LASSO_MIX_NORMS:
    raise ValueError(f'lasso mix_norm must be one of {LASSO_MIX_NORMS}, got {mix_norm!r}')
  return tf.keras.layers.BatchNormalization(name=name, dtype=dtype) if mix_norm == 'per_consumer' else None


def final_activation(trunk, x: tf.Tensor, training=None) -> tf.Tensor:
  """The trunk's closing BatchNorm + ReLU on a block-3-shaped tensor (identity without `final_activation`)."""
  return x if trunk.post_bn is None else tf.nn.relu(trunk.post_bn(x, training=training))


def head_input(mixed: tf.Tensor, norm, trunk=None, training=None) -> tf.Tensor:
  """The features a head reads from its lasso mix (see the module docstring).

  Args:
    mixed: the consumer's mix of block-3 units.
    norm: its own BatchNorm ('per_consumer', from `consumer_norm`), or None ('trunk').
    trunk: the `ResNetV2Trunk` whose closing BatchNorm + ReLU a 'trunk' mix goes through.
    training: BatchNorm mode (for 'trunk', the mode the trunk itself runs in).
  """
  if norm is not None:
    return tf.nn.relu(norm(mixed, training=training))
  if trunk is None:
    raise ValueError("lasso mix_norm 'trunk' needs the trunk whose closing BatchNorm the mix goes through")
  return final_activation(trunk, mixed, training)


def alpha_image(alpha, cell: int = 12) -> tf.Tensor:
  """Renders |alpha| as an RGB heat map (the paper's Figure 4) for tf.summary.image.

  Rows are consumers (tasks), columns block-3 units 1..M, each cell `cell` pixels
  square; white is 0 and dark red is the largest |alpha| in the matrix.

  Args:
    alpha: [N, M] tensor or array.
    cell: pixel size of one matrix entry.

  Returns:
    uint8 tensor [1, N * cell, M * cell, 3].
  """
  a = tf.abs(tf.convert_to_tensor(alpha, tf.float32))
  a = a / tf.maximum(tf.reduce_max(a), 1e-12)
  white = tf.constant([1.0, 1.0, 1.0])
  dark_red = tf.constant([0.55, 0.0, 0.05])
  rgb = white + a[..., None] * (dark_red - white)  # [N, M, 3]
  rgb = tf.repeat(tf.repeat(rgb, cell, axis=0), cell, axis=1)
  return tf.cast(tf.round(rgb * 255.0), tf.uint8)[None]
