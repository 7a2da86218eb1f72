"""The plain Lloyd pass's TF steps: nearest centroids by blocked GEMM, and cluster sums (`kmeans.py`).

Apart from `kmeans.py` so the k-means driver reads as the algorithm; `kmeans_bounds.py` scores its active
rows with the same GEMM form.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

# Rows per distance block: a [rows, k] float32 score block of this many bytes stays in the L3 cache while it
# is reduced (argmin, min) right after its GEMM. At k=2000, D=1024 on a busy 2-core EPYC, blocks of 8-32 MB
# (1024-4096 rows) were within noise of each other, 64 MB ~2x slower; 16 MB is the middle.
SCORE_BLOCK_BYTES = 16 << 20

_MATRIX = tf.TensorSpec([None, None], tf.float32)
_VECTOR = tf.TensorSpec([None], tf.float32)
_SCALAR = tf.TensorSpec([], tf.int32)


def block_rows(k: int) -> int:
  """Rows per distance block: a [rows, k] float32 score block of ~SCORE_BLOCK_BYTES (cache-sized)."""
  return max(256, SCORE_BLOCK_BYTES // (4 * k))


def nearest_blocks(x, neg2_centroids, centroid_sq, rows):
  """Nearest centroid and squared distance (clamped at 0) of each row, one [rows, k] score block at a time.

  The block's GEMM output is reduced (argmin, min) while it is still in cache: the
  [n, k] score matrix is never materialised. ||c||^2 - 2 x.c ranks the centroids (-2 is
  folded into the centroids, exact in float); ||x||^2 is added to the minimum only.
  """
  blocks = (tf.shape(x)[0] + rows - 1) // rows
  labels = tf.TensorArray(tf.int32, size=blocks, infer_shape=False)
  sq_dist = tf.TensorArray(tf.float32, size=blocks, infer_shape=False)
  for i in tf.range(blocks):
    block = x[i * rows : (i + 1) * rows]
    scores = tf.linalg.matmul(block, neg2_centroids, transpose_b=True) + centroid_sq
    labels = labels.write(i, tf.math.argmin(scores, axis=1, output_type=tf.int32))
    nearest = tf.reduce_sum(tf.square(block), axis=1) + tf.reduce_min(scores, axis=1)
    sq_dist = sq_dist.write(i, tf.maximum(nearest, 0.0))  # float32 cancellation can dip below 0.
  return labels.concat(), sq_dist.concat()


@tf.function(input_signature=[_MATRIX, _MATRIX, _VECTOR, _SCALAR])
def _nearest(x, neg2_centroids, centroid_sq, rows):
  return nearest_blocks(x, neg2_centroids, centroid_sq, rows)


@tf.function(input_signature=[_MATRIX, _MATRIX, _VECTOR, _SCALAR])
def _assign_and_sum(x, neg2_centroids, centroid_sq, rows):
  """One Lloyd pass over a batch in one call: labels, summed squared distance (float64), per-cluster sums."""
  labels, sq_dist = nearest_blocks(x, neg2_centroids, centroid_sq, rows)
  sums = tf.math.unsorted_segment_sum(x, labels, tf.shape(neg2_centroids)[0])
  return labels, tf.reduce_sum(tf.cast(sq_dist, tf.float64)), sums


class Centroids:
  """Centroids as the tensors the steps take, built once per iteration, not per batch."""

  def __init__(self, centroids: np.ndarray):
    self.neg2 = tf.constant(-2.0 * centroids)
    self.sq = tf.constant(np.einsum('ij,ij->i', centroids, centroids))
    self.rows = tf.constant(block_rows(len(centroids)), tf.int32)

  def nearest(self, x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    return _nearest(x, self.neg2, self.sq, self.rows)

  def assign_and_sum(self, x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    return _assign_and_sum(x, self.neg2, self.sq, self.rows)
