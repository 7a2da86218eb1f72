"""Block 4: shapes, strides, that its variables train, and loading a stored one."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.trunk import block4
from mtssl_tf.trunk.block4 import Block4
from mtssl_tf.trunk.resnet_v2 import build_trunk

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def test_block4_on_the_trunk(tiny_trunk):
  trunk = build_trunk(tiny_trunk)
  block3 = trunk(tf.random.uniform([2, 64, 64, 3], -1, 1))['block3']
  assert block3.shape == (2, 4, 4, 128)
  block = Block4(tiny_trunk)
  out = block(block3, training=True)
  assert out.shape == (2, 2, 2, 256) and block.output_channels == 256
  assert float(tf.reduce_min(out)) >= 0.0  # Closing ReLU.
  assert Block4(tiny_trunk, stride=1, rate=2)(block3).shape == (2, 4, 4, 256)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(block(block3, training=True))
  grads = tape.gradient(loss, block.trainable_variables)
  assert all(g is not None for g in grads) and len(grads) == len(block.trainable_variables)


def test_bad_arguments(tiny_trunk):
  with pytest.raises(ValueError, match='block4'):
    Block4(tiny_trunk, stride=3)


def _saved_block4(config, path, units=3):
  """A checkpoint holding `Block4` at block4.CHECKPOINT_PATH, as the supervised baseline's does."""
  block = Block4(config, units=units)
  block(tf.zeros([1, 4, 4, config.width * 16]))
  return block, tf.train.Checkpoint(model=tf.train.Checkpoint(block4=block)).save(str(path / 'ckpt'))


def test_load_block4_copies_the_stored_block(tiny_trunk, tmp_path):
  stored, prefix = _saved_block4(tiny_trunk, tmp_path)
  assert block4.stored_units(prefix) == 3
  fresh = Block4(tiny_trunk)
  fresh(tf.zeros([1, 4, 4, 128]))
  block4.load_block4(fresh, prefix)
  for a, b in zip(fresh.variables, stored.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # Copied, not computed.


def test_load_block4_errors_name_the_checkpoint(tiny_trunk, tmp_path):
  _, prefix = _saved_block4(tiny_trunk, tmp_path / 'a', units=2)
  block = Block4(tiny_trunk)
  with pytest.raises(ValueError, match='build the block first'):
    block4.load_block4(block, prefix)
  block(tf.zeros([1, 4, 4, 128]))
  with pytest.raises(ValueError, match=rf'{prefix}.*model/block4 has 2 units, the new one 3'):
    block4.load_block4(block, prefix)
  trunk_only = tf.train.Checkpoint(model=tf.train.Checkpoint(other=tf.Variable(1.0))).save(str(tmp_path / 'b' / 'c'))
  assert block4.stored_units(trunk_only) == 0
  with pytest.raises(ValueError, match=rf'{trunk_only}.*no block 4.*model/block4'):
    block4.load_block4(block, trunk_only)
  wider = dataclasses.replace(tiny_trunk, width=16)
  _, wide_prefix = _saved_block4(wider, tmp_path / 'd')
  with pytest.raises(ValueError, match=rf'{wide_prefix}.*does not fit'):
    block4.load_block4(block, wide_prefix)
  with pytest.raises(ValueError, match='cannot be read'):
    block4.stored_units(str(tmp_path / 'missing'))
