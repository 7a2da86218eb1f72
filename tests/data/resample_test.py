"""resize_windows: windows of an antialiased resize equal the full resize then the crop."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import resample

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

# Each output is a normalised sum of at most 2 ceil(in / out) + 1 taps per axis of values
# in [0, 255]: float32 rounding (eps 6e-8 relative) of two such sums stays below
# 255 * 6e-8 * 2 * (taps + 2) ~ 1e-4 at the largest downscale here (5x, 11 taps).
TOLERANCE = 2e-4


@pytest.mark.parametrize(
  'image_shape, size',
  [
    ((64, 64), (56, 56)),  # Jigsaw-like mild downscale.
    ((48, 40), (70, 60)),  # Upscale (relative position's rescale of small images).
    ((90, 120), (60, 80)),
    ((150, 100), (31, 17)),  # Strong downscale, different per axis.
    ((30, 30), (30, 30)),  # Same size: the identity.
  ],
)
def test_windows_equal_full_resize_then_crop(image_shape, size):
  rng = np.random.default_rng(sum(image_shape))
  image = rng.integers(0, 256, (*image_shape, 3), dtype=np.uint8)
  full = tf.image.resize(tf.cast(image, tf.float32), size, antialias=True).numpy()
  side = min(size) // 2
  offsets = np.array([[0, 0], [size[0] - side, size[1] - side], [size[0] // 3, size[1] // 4]], np.int32)
  got = resample.resize_windows(tf.constant(image), size, offsets, side).numpy()
  assert got.shape == (3, side, side, 3) and got.dtype == np.float32
  for window, (y, x) in zip(got, offsets):
    np.testing.assert_allclose(window, full[y : y + side, x : x + side], atol=TOLERANCE)


def test_float_input_and_tf_data():
  image = np.random.default_rng(1).uniform(0.0, 1.0, (40, 52, 3)).astype(np.float32)
  full = tf.image.resize(image, [33, 45], antialias=True).numpy()
  fn = lambda x: resample.resize_windows(x, tf.constant([33, 45]), tf.constant([[2, 5]]), 16)  # noqa: E731
  eager = fn(tf.constant(image)).numpy()[0]
  # Values in [0, 1]: the bound above divided by 255.
  np.testing.assert_allclose(eager, full[2:18, 5:21], atol=TOLERANCE / 255.0)
  in_data = next(iter(tf.data.Dataset.from_tensors(image).map(fn))).numpy()[0]
  np.testing.assert_allclose(in_data, eager, atol=TOLERANCE / 255.0)
