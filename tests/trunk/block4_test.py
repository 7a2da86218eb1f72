"""Block 4: shapes, strides, and that its variables train."""

import pytest
import tensorflow as tf

from mtssl_tf.trunk.block4 import Block4
from mtssl_tf.trunk.resnet_v2 import build_trunk


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
