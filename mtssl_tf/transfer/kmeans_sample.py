"""Inputs of k-means: feature chunks, float32 batches, the seeded uniform sample `fit` clusters, its PCA.

`KMeans.fit` (mtssl_tf/transfer/kmeans.py) clusters a sample of at most
`k * max_points_per_centroid` rows (faiss's convention). Every row gets a random key in
stream order and the sample is the rows with the smallest keys, kept in stream order, so
the same rows give the same sample however they are chunked (a fit from chunks equals a
fit from their concatenation), drawn in one pass over a stream larger than memory.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

# Whitening divides by sqrt(eigenvalue + eps): eps, relative to the top eigenvalue (scale-free), keeps
# zero-variance directions (dead units) finite and leaves the others whitened to within 1e-6 * top / value.
PCA_EPSILON = 1e-6
# An array [N, D], an iterable of [n_i, D] chunks, or a callable returning one (read once per call).
Features = Union[np.ndarray, Iterable[np.ndarray], Callable[[], Iterable[np.ndarray]]]


def iter_chunks(features: Features) -> Iterator[np.ndarray]:
  """Yields the non-empty 2-D chunks of an array, an iterable of arrays, or a callable returning one."""
  if isinstance(features, (np.ndarray, tf.Tensor)):
    source = [features]
  elif callable(features):
    source = features()
  else:
    source = features
  dims = None
  for chunk in source:
    chunk = np.asarray(chunk)
    if chunk.ndim != 2:
      raise ValueError(f'k-means: features must be 2-D [points, dims], got a chunk of shape {chunk.shape}')
    if dims is None:
      dims = chunk.shape[1]
    elif chunk.shape[1] != dims:
      raise ValueError(f'k-means: a chunk has {chunk.shape[1]} dims, the earlier ones {dims}')
    if len(chunk):
      yield chunk


def iter_batches(x: np.ndarray, batch_size: int) -> Iterator[Tuple[int, np.ndarray]]:
  """Yields (first row, contiguous float32 copy) of each `batch_size` rows of `x`."""
  for start in range(0, len(x), batch_size):
    yield start, np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)


def permute_rows(a: np.ndarray, order: np.ndarray) -> None:
  """`a[:] = a[order]` in place with one row of scratch (a copy would double the sample's memory)."""
  done = np.zeros(len(order), bool)
  for start in range(len(order)):
    if done[start] or order[start] == start:
      continue
    scratch = a[start].copy()
    i = start
    while True:
      done[i] = True
      j = order[i]
      if j == start:
        a[i] = scratch
        break
      a[i] = a[j]
      i = j


def sample_array(x: np.ndarray, capacity: Optional[int], rng: np.random.Generator) -> np.ndarray:
  """Rows of the `capacity` smallest keys (one uniform key per row), in row order; `x` itself if it fits."""
  if capacity is None or len(x) <= capacity:
    return np.asarray(x, np.float32)
  keys = rng.random(len(x))
  return np.asarray(x[np.sort(np.argpartition(keys, capacity - 1)[:capacity])], np.float32)


def sample_stream(chunks: Iterable[np.ndarray], capacity: Optional[int], rng: np.random.Generator):
  """`sample_array` of the concatenated chunks, in one pass and at most `capacity` rows of memory.

  Returns:
    (sample float32 [n, D], rows seen).
  """
  buf = None
  keys = index = None
  filled = seen = 0
  reordered = False
  for chunk in chunks:
    chunk_keys = rng.random(len(chunk))  # Drawn for every row, so keys do not depend on chunking.
    chunk_index = np.arange(seen, seen + len(chunk))
    seen += len(chunk)
    if buf is None:
      buf = np.empty((0, chunk.shape[1]), np.float32)
      keys, index = np.empty(0), np.empty(0, np.int64)
    free = len(chunk) if capacity is None else min(len(chunk), capacity - filled)
    if free > 0:
      if filled + free > len(buf):  # Grow by doubling: a stream's length is unknown.
        size = max(filled + free, 2 * len(buf))
        size = size if capacity is None else min(size, capacity)
        buf = np.concatenate([buf[:filled], np.empty((size - filled, buf.shape[1]), np.float32)])
        keys, index = np.resize(keys, size), np.resize(index, size)
      buf[filled : filled + free] = chunk[:free]
      keys[filled : filled + free] = chunk_keys[:free]
      index[filled : filled + free] = chunk_index[:free]
      filled += free
      chunk, chunk_keys, chunk_index = chunk[free:], chunk_keys[free:], chunk_index[free:]
    if not len(chunk):
      continue
    # Full: rows whose key beats the largest kept key replace the rows of the largest keys.
    candidates = np.flatnonzero(chunk_keys < keys.max())
    if not len(candidates):
      continue
    kept = np.argpartition(np.concatenate([keys, chunk_keys[candidates]]), capacity - 1)[:capacity]
    new = kept[kept >= capacity] - capacity
    slots = np.setdiff1d(np.arange(capacity), kept[kept < capacity], assume_unique=True)
    rows = candidates[new]
    buf[slots], keys[slots], index[slots] = chunk[rows], chunk_keys[rows], chunk_index[rows]
    reordered = True
  if buf is None:
    raise ValueError('k-means: no features (empty array or stream)')
  buf = buf[:filled]
  if reordered:
    permute_rows(buf, np.argsort(index[:filled], kind='stable'))
  return buf, seen


class TensorBatches:
  """The sample as TF tensors of `batch_size` rows, converted once for all Lloyd passes."""

  def __init__(self, x: np.ndarray, batch_size: int):
    self.rows, self.batch_size = len(x), batch_size
    self.batches = [(start, tf.convert_to_tensor(batch)) for start, batch in iter_batches(x, batch_size)]

  def take(self, index: np.ndarray) -> np.ndarray:
    """Rows `index` (sorted or not) as float32 numpy [len(index), D]."""
    out = np.empty((len(index), self.batches[0][1].shape[1]), np.float32)
    which = index // self.batch_size
    for b in np.unique(which):
      at = np.flatnonzero(which == b)
      out[at] = tf.gather(self.batches[b][1], index[at] - self.batches[b][0]).numpy()
    return out


# ----------------------------------------------------------------------------- PCA


def fit_pca(x: np.ndarray, dims: int, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Mean [D] and whitening matrix [D, dims] of the rows of `x` (covariance eigendecomposition)."""
  mean = np.zeros(x.shape[1], np.float64)
  for _, batch in iter_batches(x, batch_size):
    mean += batch.sum(axis=0, dtype=np.float64)
  mean = (mean / len(x)).astype(np.float32)
  cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
  for _, batch in iter_batches(x, batch_size):
    centered = batch - mean
    cov += centered.T @ centered  # float32 GEMM per batch, float64 across batches.
  values, vectors = np.linalg.eigh(cov / len(x))
  values, vectors = np.maximum(values[::-1][:dims], 0.0), vectors[:, ::-1][:, :dims]
  # eigh's signs are arbitrary: make each vector's largest component positive, for stable transforms.
  signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(dims)])
  vectors = vectors * np.where(signs == 0, 1.0, signs)
  eps = PCA_EPSILON * max(float(values[0]), float(np.finfo(np.float32).tiny))
  return mean, (vectors / np.sqrt(values + eps)).astype(np.float32)
