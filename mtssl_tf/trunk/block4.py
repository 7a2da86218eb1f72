"""ResNet-v2 block 4: the part of ResNet-101 the shared trunk leaves out.

The evaluations add it back where the protocol needs the full network: Faster R-CNN
uses block 4 as its proposal-classification head (randomly initialised for
self-supervised trunks, Doersch §5), and the supervised "ImageNet labels" baseline
trains trunk + block 4. Three units of bottleneck width 8 x `width` (512 for
ResNet-101, 2048 output channels), the first one projecting and striding, then the
ResNet-v2 closing BatchNorm + ReLU. Layer names follow tf.keras.applications
(`conv5_block1_...`, `post_bn`) so ImageNet weights can be copied in by name.

A trained block 4 lives in the supervised baseline's checkpoints at the object path
`model/block4` (`SupervisedModel.block4`); `stored_units` and `load_block4` read it from
there, e.g. into the detector's box head (Doersch §5: "transfer block 4 into the proposal
categorization head"). Like the trunk's units, its first unit is pre-activation: it
reads the raw block-3 sum (the `block3` endpoint), not the BN-ReLU `final` endpoint.
"""

from __future__ import annotations

import re

import tensorflow as tf

from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.trunk.resnet_v2 import PreactBottleneck
from mtssl_tf.trunk.restore import read_model_part

# Object path of block 4 in a supervised-baseline checkpoint (`Checkpoint(model=SupervisedModel)`).
CHECKPOINT_PATH = 'model/block4'


class Block4(tf.keras.layers.Layer):
  """Block 4 of ResNet-v2 on top of the trunk's block-3 output."""

  def __init__(self, config: TrunkConfig, units: int = 3, stride: int = 2, rate: int = 1, **kwargs):
    """Creates the units.

    Args:
      config: the trunk config (width and BatchNorm settings are shared).
      units: residual units (3 in ResNet-50/101/152).
      stride: stride of the first unit (2 as in ResNet; 1 keeps the resolution,
        e.g. on 7x7 ROI crops).
      rate: atrous rate of the 3x3 convolutions (for a stride-1 block 4 on a feature
        map, 2 keeps the receptive field).
      **kwargs: passed to `tf.keras.layers.Layer` (name, dtype).
    """
    kwargs.setdefault('name', 'block4')
    super().__init__(**kwargs)
    if units < 1 or stride not in (1, 2) or rate < 1:
      raise ValueError(f'block4: need units >= 1, stride 1 or 2, rate >= 1; got {units}, {stride}, {rate}')
    self.stride = stride
    self.rate = rate
    self.units = [
      PreactBottleneck(
        config.width * 8,
        projection=(u == 0),
        bn_momentum=config.batch_norm_momentum,
        bn_epsilon=config.batch_norm_epsilon,
        name=f'conv5_block{u + 1}',
        dtype=self.dtype_policy,
      )
      for u in range(units)
    ]
    self.post_bn = tf.keras.layers.BatchNormalization(
      momentum=config.batch_norm_momentum, epsilon=config.batch_norm_epsilon, name='post_bn', dtype=self.dtype_policy
    )

  @property
  def output_channels(self) -> int:
    """4 x 8 x width: 2048 for ResNet-101."""
    return self.units[0].width * 4

  def call(self, block3: tf.Tensor, training=None) -> tf.Tensor:
    """block-3 output (un-normalised, the `block3` endpoint) -> block-4 features after BN-ReLU."""
    x = block3
    for u, unit in enumerate(self.units):
      x = unit(x, training=training, stride=self.stride if u == 0 else 1, rate=self.rate)
    return tf.nn.relu(self.post_bn(x, training=training))


def stored_units(prefix: str) -> int:
  """Residual units of the block 4 held at `CHECKPOINT_PATH` in checkpoint `prefix`; 0 when it holds none.

  Raises:
    ValueError: `prefix` is not a readable checkpoint (named).
  """
  try:
    names = [name for name, _ in tf.train.list_variables(prefix)]
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'checkpoint {prefix!r} cannot be read: {str(e).splitlines()[0][:200]}') from None
  pattern = re.compile(rf'{CHECKPOINT_PATH}/units/(\d+)/')
  return len({match.group(1) for match in map(pattern.match, names) if match})


def load_block4(block4: Block4, prefix: str) -> None:
  """Fills a built `Block4` with the one stored at `CHECKPOINT_PATH` in checkpoint `prefix`.

  Args:
    block4: the block to fill; its variables must exist (the layer has been called).
    prefix: a checkpoint prefix, e.g. a supervised baseline's `.../checkpoints/ckpt-N`.

  Raises:
    ValueError: the checkpoint holds no block 4, one with another number of units, or one
      of another width (the message names the file and `CHECKPOINT_PATH`).
  """
  if not block4.built:
    raise ValueError('load_block4: build the block first (call it once), so its variables exist')
  units = stored_units(prefix)
  if not units:
    raise ValueError(
      f'checkpoint {prefix!r} holds no block 4 (no variables under {CHECKPOINT_PATH}/): only a supervised '
      "baseline's checkpoint (mtssl-eval --eval=supervised) has a trained block 4"
    )
  if units != len(block4.units):
    raise ValueError(
      f'checkpoint {prefix!r}: the block 4 at {CHECKPOINT_PATH} has {units} units, the new one {len(block4.units)}'
    )
  try:
    read_model_part(prefix, block4=block4)
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
      f'checkpoint {prefix!r}: the block 4 at {CHECKPOINT_PATH} does not fit the new one (bottleneck width '
      f'{block4.units[0].width}, from the trunk width): {str(e).splitlines()[0][:300]}'
    ) from None
