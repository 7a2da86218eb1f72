"""Noroozi §5 teacher features: conv4 max-pooled to 5x5x384 (AlexNet) and 4x4x512 (VGG16)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.trunk.alexnet import AlexNet
from mtssl_tf.trunk.teacher_features import adaptive_max_pool, teacher_features, teacher_shape
from mtssl_tf.trunk.vgg16 import VGG16


def _symbolic(model, size):
  return model(tf.keras.Input([size, size, 3]))


@pytest.mark.parametrize(
  'kind,model_fn,size',
  [
    ('alexnet', lambda: AlexNet('standard', fc_units=()), 227),  # conv4 13x13.
    ('alexnet', lambda: AlexNet('jigsaw', fc_units=()), 227),  # Jigsaw teacher on a whole image: conv4 27x27.
    ('vgg16', lambda: VGG16(fc_units=()), 224),  # conv4_3 28x28.
  ],
  ids=['alexnet_227', 'alexnet_jigsaw_227', 'vgg16_224'],
)
def test_full_width_teacher_shapes_are_section5(kind, model_fn, size):
  # Full-width convolutions traced symbolically (no image is computed).
  endpoints = _symbolic(model_fn(), size)
  grid = teacher_features(endpoints, kind, flatten=False)
  assert tuple(grid.shape[1:]) == teacher_shape(kind) == {'alexnet': (5, 5, 384), 'vgg16': (4, 4, 512)}[kind]
  assert tuple(teacher_features(endpoints, kind).shape[1:]) == (math.prod(teacher_shape(kind)),)


def test_tiny_width_features_on_images():
  images = tf.random.uniform([2, 227, 227, 3], -1, 1, seed=0)
  features = teacher_features(AlexNet(width=1 / 16, fc_units=())(images), 'alexnet')
  assert features.shape == (2, 5 * 5 * 24)
  features = teacher_features(VGG16(width=1 / 16, fc_units=())(images[:, :224, :224]), 'vgg16')
  assert features.shape == (2, 4 * 4 * 32)
  assert teacher_shape('vgg16', 32) == (4, 4, 32)


@pytest.mark.parametrize('height,width,grid', [(13, 13, 5), (28, 28, 4), (27, 27, 5), (6, 9, 4), (5, 5, 5)])
def test_adaptive_max_pool_matches_the_bin_rule(height, width, grid):
  # Distinct small integers: maxima are exact on every code path.
  x = np.random.default_rng(0).permutation(height * width * 3).reshape(1, height, width, 3).astype(np.float32)
  out = adaptive_max_pool(tf.constant(x), grid).numpy()
  for i in range(grid):
    r0, r1 = i * height // grid, -(-(i + 1) * height // grid)
    for j in range(grid):
      c0, c1 = j * width // grid, -(-(j + 1) * width // grid)
      np.testing.assert_array_equal(out[0, i, j], x[0, r0:r1, c0:c1].max(axis=(0, 1)))


def test_vgg_grid_is_a_plain_7x7_stride_7_pool():
  x = tf.constant(np.random.default_rng(1).permutation(28 * 28).reshape(1, 28, 28, 1).astype(np.float32))
  np.testing.assert_array_equal(adaptive_max_pool(x, 4).numpy(), tf.nn.max_pool2d(x, 7, 7, 'VALID').numpy())


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='resnet'):
    teacher_features({'conv4': tf.zeros([1, 13, 13, 8])}, 'resnet')
  with pytest.raises(ValueError, match='conv4_3'):
    teacher_features({'conv4': tf.zeros([1, 28, 28, 8])}, 'vgg16')
  with pytest.raises(ValueError, match='at least'):
    adaptive_max_pool(tf.zeros([1, 3, 3, 8]), 5)
