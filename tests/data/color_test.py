"""sRGB <-> Lab: textbook values, agreement with tensorflow-io and numpy, round trips."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import color

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _random_rgb(shape=(32, 32, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
  'rgb, lab',
  [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.2408, 80.0925, 67.2032)),
    ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
    ((0, 0, 255), (32.2970, 79.1875, -107.8602)),
    ((128, 128, 128), (53.5850, 0.0, 0.0)),
  ],
)
def test_textbook_values(rgb, lab):
  got = color.rgb_to_lab(tf.constant([rgb], tf.uint8)).numpy()[0]
  np.testing.assert_allclose(got, lab, atol=2e-3)


def test_matches_numpy_formula_and_tensorflow_io():
  tfio = pytest.importorskip(
    'tensorflow_io', reason='tensorflow-io: reference line only (BUILD.md, Two dependency lines)'
  )

  rgb = _random_rgb()
  ours = color.rgb_to_lab(tf.constant(rgb)).numpy()
  np.testing.assert_allclose(ours, color.rgb_to_lab_np(rgb / 255.0), atol=1e-3)
  theirs = tfio.experimental.color.rgb_to_lab(tf.constant(rgb / 255.0, tf.float32)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=0.01)
  # Float input takes the formula path instead of the table; same result.
  np.testing.assert_allclose(color.rgb_to_lab(tf.constant(rgb / 255.0, tf.float32)).numpy(), ours, atol=1e-3)


def test_round_trip_and_lightness_only():
  rgb = _random_rgb(seed=1)
  lab = color.rgb_to_lab(tf.constant(rgb))
  np.testing.assert_allclose(color.lab_to_rgb(lab).numpy(), rgb / 255.0, atol=1e-4)
  np.testing.assert_allclose(color.lab_to_rgb_np(lab.numpy()), rgb / 255.0, atol=1e-4)
  np.testing.assert_allclose(color.rgb_to_lightness(tf.constant(rgb)).numpy()[..., 0], lab.numpy()[..., 0], atol=1e-4)


def test_harmonize_replicates_lightness():
  rgb = _random_rgb(seed=2)
  out = color.harmonize(tf.constant(rgb)).numpy()
  lightness = color.rgb_to_lab(tf.constant(rgb)).numpy()[..., 0]
  assert out.shape == (32, 32, 3)
  for c in range(3):
    np.testing.assert_allclose(out[..., c], lightness / 50.0 - 1.0, atol=1e-5)


def test_same_in_tf_data():
  rgb = _random_rgb((4, 8, 8, 3), seed=3)
  eager = color.rgb_to_lab(tf.constant(rgb)).numpy()
  ds = tf.data.Dataset.from_tensor_slices(rgb).map(color.rgb_to_lab)
  np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), eager, atol=1e-5)
