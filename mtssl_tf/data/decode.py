"""Image decoding that accepts what users' files really hold. Pure TF (worker-safe).

JPEG, PNG, GIF and BMP; grayscale, grayscale+alpha, RGBA, CMYK JPEG and 16-bit PNG
all come out as uint8 RGB [H, W, 3]. Bytes that cannot be decoded raise inside the
op; `robust_map` turns such elements into skipped-and-counted ones.
"""

from __future__ import annotations

import tensorflow as tf


def to_rgb_uint8(image: tf.Tensor) -> tf.Tensor:
  """Converts a decoded [H, W, C] image (C in 1-4, uint8 or uint16) to uint8 RGB."""
  if image.dtype == tf.uint16:
    # Keep the high byte: 16-bit PNGs are full-range, so this is exact rounding down.
    image = tf.cast(tf.bitwise.right_shift(image, 8), tf.uint8)
  elif image.dtype != tf.uint8:
    image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
  channels = tf.shape(image)[-1]
  # Drop alpha (2 = gray+alpha, 4 = RGBA), then replicate gray.
  image = tf.cond(
    tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4)),
    lambda: image[..., :-1],
    lambda: image,
  )
  image = tf.cond(
    tf.equal(tf.shape(image)[-1], 1),
    lambda: tf.tile(image, [1, 1, 3]),
    lambda: image,
  )
  image.set_shape([None, None, 3])
  return image


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes any supported image bytes to uint8 RGB [H, W, 3].

  JPEG goes through `decode_jpeg` with 3 channels (libjpeg converts grayscale and
  CMYK itself); other formats through `decode_image`, keeping their bit depth and
  channels so that `to_rgb_uint8` can convert them correctly. Animated GIFs give
  their first frame.

  Args:
    encoded: scalar string tensor.

  Returns:
    uint8 [H, W, 3]. Raises `InvalidArgumentError` at run time on undecodable bytes.
  """

  def other():
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint16, expand_animations=False)
    return to_rgb_uint8(image)

  # decode_image(dtype=uint16) scales 8-bit data up by 257, so the high byte is exact.
  image = tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.decode_jpeg(encoded, channels=3),
    other,
  )
  image.set_shape([None, None, 3])
  return image


def diagnose(encoded: tf.Tensor) -> tf.Tensor:
  """Why bytes that failed to decode are bad, as a short scalar string (pure TF).

  Only called for elements that already failed, so it favours a useful reason over
  speed: empty input, an unrecognised header, or a JPEG/PNG cut short (a JPEG ends with
  the end-of-image marker FF D9, a PNG with its IEND chunk).
  """
  length = tf.strings.length(encoded)
  head = tf.strings.substr(encoded, 0, 8)
  tail2 = tf.strings.substr(encoded, tf.maximum(length - 2, 0), 2)
  tail8 = tf.strings.substr(encoded, tf.maximum(length - 8, 0), 8)
  is_png = tf.equal(head, b'\x89PNG\r\n\x1a\n')
  is_other = tf.logical_or(
    tf.equal(tf.strings.substr(head, 0, 4), b'GIF8'), tf.equal(tf.strings.substr(head, 0, 2), b'BM')
  )
  reasons = [
    (tf.equal(length, 0), 'empty file'),
    (
      tf.logical_and(tf.io.is_jpeg(encoded), tf.not_equal(tail2, b'\xff\xd9')),
      'truncated JPEG (no end-of-image marker)',
    ),
    (tf.logical_and(is_png, tf.not_equal(tail8, b'IEND\xaeB`\x82')), 'truncated PNG (no IEND chunk)'),
    (tf.logical_not(tf.reduce_any([tf.io.is_jpeg(encoded), is_png, is_other])), 'not an image (unrecognised header)'),
  ]
  reason = tf.constant('corrupt image data')
  for condition, text in reversed(reasons):
    reason = tf.where(condition, tf.constant(text), reason)
  return reason


def image_shape(encoded: tf.Tensor) -> tf.Tensor:
  """[height, width] of encoded image bytes without a full decode when it is a JPEG."""

  def jpeg():
    return tf.io.extract_jpeg_shape(encoded)[:2]

  def other():
    return tf.shape(decode_rgb(encoded))[:2]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def decode_and_crop_rgb(encoded: tf.Tensor, crop_window: tf.Tensor) -> tf.Tensor:
  """Decodes only the crop [y, x, h, w] of a JPEG (cheaper); other formats decode then crop.

  Args:
    encoded: scalar string tensor.
    crop_window: int32 [4] = [offset_y, offset_x, height, width], inside the image.

  Returns:
    uint8 [height, width, 3].
  """
  crop_window = tf.cast(crop_window, tf.int32)

  def jpeg():
    return tf.io.decode_and_crop_jpeg(encoded, crop_window, channels=3)

  def other():
    image = decode_rgb(encoded)
    return tf.image.crop_to_bounding_box(image, crop_window[0], crop_window[1], crop_window[2], crop_window[3])

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image.set_shape([None, None, 3])
  return image
