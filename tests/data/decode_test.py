"""Decoding the image kinds real collections hold, eagerly and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import decode
from mtssl_tf.data.synthetic.classification import odd_images

ODD = odd_images(seed=3)
DECODABLE = ['rgb_jpeg', 'gray_jpeg', 'cmyk_jpeg', 'rgba_png', 'gray_png', 'gray_alpha_png', 'png16', 'bmp', 'gif']
UNDECODABLE = ['truncated_jpeg', 'garbage', 'empty']


def _reference():
  return decode.decode_rgb(tf.constant(ODD['bmp'])).numpy().astype(np.int32)  # Lossless original.


@pytest.mark.parametrize('kind', DECODABLE)
def test_every_decodable_kind_becomes_uint8_rgb(kind):
  image = decode.decode_rgb(tf.constant(ODD[kind]))
  assert image.dtype == tf.uint8 and image.shape == (64, 64, 3)
  err = np.abs(image.numpy().astype(np.int32) - _reference()).mean()
  # Lossless colour kinds match exactly; JPEG, gray and palette kinds approximately.
  assert err == 0 if kind in ('rgba_png', 'png16', 'bmp') else err < 25


def test_sixteen_bit_png_keeps_the_high_byte():
  wide = tf.constant(np.array([[[0, 257, 65535]]], np.uint16))
  np.testing.assert_array_equal(decode.to_rgb_uint8(wide).numpy(), [[[0, 1, 255]]])


@pytest.mark.parametrize('kind', UNDECODABLE)
def test_undecodable_bytes_raise(kind):
  with pytest.raises(tf.errors.InvalidArgumentError):
    decode.decode_rgb(tf.constant(ODD[kind]))


def test_same_result_eagerly_and_in_tf_data():
  eager = [decode.decode_rgb(tf.constant(ODD[k])).numpy() for k in DECODABLE]
  ds = tf.data.Dataset.from_tensor_slices([ODD[k] for k in DECODABLE]).map(decode.decode_rgb)
  for a, b in zip(eager, ds.as_numpy_iterator()):
    np.testing.assert_array_equal(a, b)


def test_decode_and_crop_equals_decode_then_crop():
  window = tf.constant([5, 7, 20, 30])
  for kind in ('rgb_jpeg', 'rgba_png'):
    encoded = tf.constant(ODD[kind])
    full = decode.decode_rgb(encoded)[5:25, 7:37]
    np.testing.assert_array_equal(decode.decode_and_crop_rgb(encoded, window).numpy(), full.numpy())


def test_image_shape_without_full_decode():
  np.testing.assert_array_equal(decode.image_shape(tf.constant(ODD['rgb_jpeg'])).numpy(), [64, 64])
  np.testing.assert_array_equal(decode.image_shape(tf.constant(ODD['tiny_jpeg'])).numpy(), [12, 12])
  np.testing.assert_array_equal(decode.image_shape(tf.constant(ODD['png16'])).numpy(), [64, 64])
