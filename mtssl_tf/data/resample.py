"""Windows of an antialiased resize, computed without resizing the rest of the image.

Tasks that resize an image and then cut small pieces from it (relative position's two
patches, Jigsaw++'s crop) spend most of their input time resizing pixels they throw
away. `resize_windows` returns windows of `tf.image.resize(image, size,
antialias=True)` (bilinear) directly: the same triangle filter as TF's
ScaleAndTranslate kernel (tensorflow/core/kernels/image/scale_and_translate_op.cc:
sample position (x + 0.5) / scale, a kernel stretched by max(1 / scale, 1) so that a
downscale averages every source pixel, taps clamped to the image and weights
normalised to sum to 1), evaluated only at the windows' output pixels. Both passes are
a gather of K taps and a weighted sum, so the cost is that of the windows, whatever the
size of the image; only the source rows and columns they read are cast to float.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import tensorflow as tf

IntLike = Union[int, tf.Tensor]


def _taps(in_size: tf.Tensor, out_size: tf.Tensor, start: tf.Tensor, count: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Source indices and weights of output pixels start .. start + count - 1, for both axes at once.

  Args:
    in_size: int32 [2], the image's (height, width).
    out_size: int32 [2], the full resize's (height, width).
    start: int32 [2, N], per axis the first output pixel of each of N windows.
    count: window side.

  Returns:
    (int32 [2, N, count, K] source indices clamped to the image, float32 [2, N, count, K]
    weights summing to 1 over K; K = min(2 ceil(kernel scale) + 1, in_size) of the
    larger scale, TF's span size, the extra taps of the other axis weighted 0).
  """
  in_f = tf.cast(in_size, tf.float32)[:, None, None]
  # TF computes scale = out / in in float32, then inv_scale = 1 / scale.
  inv_scale = 1.0 / (tf.cast(out_size, tf.float32)[:, None, None] / in_f)
  kernel_scale = tf.maximum(inv_scale, 1.0)  # Triangle radius 1, stretched when downscaling.
  taps = tf.reduce_max(tf.minimum(2 * tf.cast(tf.math.ceil(kernel_scale), tf.int32) + 1, in_size[:, None, None]))
  sample = (tf.cast(start[:, :, None] + tf.range(count), tf.float32) + 0.5) * inv_scale  # [2, N, count]
  last = in_size[:, None, None] - 1
  first = tf.clip_by_value(tf.cast(tf.math.ceil(sample - kernel_scale - 0.5), tf.int32), 0, last)
  end = tf.clip_by_value(tf.cast(tf.math.floor(sample + kernel_scale - 0.5), tf.int32), 0, last) + 1
  source = first[..., None] + tf.range(taps)
  distance = (tf.cast(source, tf.float32) + 0.5 - sample[..., None]) * (1.0 / kernel_scale[..., None])
  weight = tf.nn.relu(1.0 - tf.abs(distance)) * tf.cast(source < end[..., None], tf.float32)
  weight = weight / tf.reduce_sum(weight, axis=-1, keepdims=True)
  return tf.minimum(source, last[..., None]), weight


def resize_windows(image: tf.Tensor, size: Sequence[IntLike], offsets: tf.Tensor, window: int) -> tf.Tensor:
  """Square windows of `tf.image.resize(image, size, antialias=True)`, computing only those.

  Window n equals `tf.image.resize(image, size, antialias=True)[y:y + window, x:x + window]`
  for (y, x) = offsets[n], within float32 rounding (the same weights, summed in another
  order).

  Args:
    image: [H, W, C], any real dtype (uint8 images are cast after the windows' source
      pixels are cut out).
    size: [2] (height, width) of the full resize.
    offsets: int [N, 2], (y, x) of each window's top-left corner in the resized image;
      every window must lie inside it.
    window: static window side.

  Returns:
    float32 [N, window, window, C].
  """
  shape = tf.shape(image)[:2]
  size = tf.cast(tf.convert_to_tensor(size), tf.int32)
  offsets = tf.transpose(tf.cast(tf.convert_to_tensor(offsets), tf.int32))  # [2, N]
  (rows, cols), (row_weights, col_weights) = (tf.unstack(t, num=2) for t in _taps(shape, size, offsets, window))
  # Crop before converting: only the source rows and columns the windows read.
  top, left = tf.reduce_min(rows), tf.reduce_min(cols)
  region = tf.cast(image[top : tf.reduce_max(rows) + 1, left : tf.reduce_max(cols) + 1], tf.float32)
  # Rows, then columns: each a gather of the K taps and their weighted sum.
  by_rows = tf.reduce_sum(tf.gather(region, rows - top) * row_weights[..., None, None], axis=2)  # [N, h, W, C]
  by_cols = tf.gather(by_rows, cols - left, axis=2, batch_dims=1)  # [N, h, w, K, C]
  return tf.reduce_sum(by_cols * col_weights[:, None, :, :, None], axis=3)
