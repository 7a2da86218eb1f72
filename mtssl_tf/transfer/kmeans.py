"""K-means of network features into pseudo-labels (Noroozi et al. 2018, §4), TF on CPU or GPU.

The knowledge-transfer step clusters a pre-trained network's features of ~1.3M images
into k clusters (2000 in the paper, 500-10000 swept); an image's cluster is its
pseudo-label. This is Euclidean k-means with Lloyd iterations, shaped for that size:

* Fitting runs on a seeded uniform sample of at most `k * max_points_per_centroid`
  points (faiss's convention: 256 per centroid, 512K of 1.3M at k=2000), drawn in one
  pass from an array or from a stream of chunks larger than memory. Every row gets a
  random key in stream order and the sample is the rows with the smallest keys, kept
  in stream order, so the same rows give the same sample however they are chunked:
  a fit from chunks equals a fit from their concatenation (`mtssl_tf/transfer/kmeans_sample.py`).
* Initial centroids: greedy k-means++ (D^2 sampling of 2 + ln k candidates per step,
  keeping the one that lowers the potential most, as scikit-learn), by default on the
  sample's projection onto its top 128 principal directions (randomized SVD of 8192
  rows) and on at most 16 sample points per centroid; or k distinct random sample points
  (faiss's start). The k sequential steps run in one TF loop, each scoring its
  candidates against every point with one GEMM, so the start runs on a GPU too.
  Why these defaults, measured: `mtssl_tf/transfer/kmeans_init.py`.
* An iteration assigns the sample in batches (TF tensors converted once, not per pass),
  one TF call per batch: per block of rows
  one GEMM (||c||^2 - 2 x.c; ||x||^2 is added to the minimum only), reduced to argmin
  and min while the block is in cache, then segment sums of the batch; the centroids
  move to the means of their points (sums accumulated in float64 across batches).
* After the first pass, exact distance bounds carried across passes (`cluster.bounds`,
  Yinyang k-means by default, `mtssl_tf/transfer/kmeans_bounds.py`) leave only the points
  whose nearest centroid can have changed to be searched, and only against the groups of
  centroids that can be nearer: the same assignments as scoring all n x k distances, up
  to float32 near-ties. At 100k x 1024, k=2000 (benchmarks/kmeans.py) the passes after
  the first two computed 79%, 47%, 20%, then < 1% of the distances.
* A cluster left empty is re-seeded with the point farthest from the centroid of the
  largest cluster. The next objective is bounded by the old labels scored against the
  new means, which never use the empty cluster, so re-seeding cannot raise it:
  `objective_history` is non-increasing, up to float32 rounding of the distances
  (about 1e-7 * ||x||^2 per point).
* Optional DeepCluster-style PCA-whitening (fitted on the sample) and L2
  normalisation; the centroids live in that transformed space and `assign` applies it.
* `assign` streams over any number of chunks; the labels do not depend on the chunking
  (up to exact float ties).

Memory: the sample (float32, n x D: 512K x 8192 is 17 GB; lower `max_points_per_centroid`
or use `pca_dims` to shrink the clustered copy), held twice while it is converted to TF
tensors for Lloyd (once after, where `fit` sampled it; an array fitted whole stays the
caller's), plus per batch its [k, D] sums and a few [rows, k] score blocks of
`SCORE_BLOCK_BYTES`; the start's projection is [16 k, init_dims]; with `bounds: yinyang`
n x k/10 float32 lower bounds (410 MB at 512K points, k=2000; one column with 'hamerly').
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError, override, to_plain

# Lloyd passes with distance bounds live in kmeans_bounds.py.
from mtssl_tf.transfer.kmeans_bounds import BOUNDS, BoundedLloyd, group_centroids

# The start (greedy k-means++ on a projection) lives in kmeans_init.py; default_trials is re-exported.
from mtssl_tf.transfer.kmeans_init import PROJECTIONS, default_trials, kmeans_plus_plus  # noqa: F401

# Feature chunks, batches, the seeded sample (as TF tensors for Lloyd) and its PCA live in kmeans_sample.py.
from mtssl_tf.transfer.kmeans_sample import (
  Features,
  TensorBatches,
  fit_pca,
  iter_batches,
  iter_chunks,
  sample_array,
  sample_stream,
)

# The plain pass's blocked-GEMM steps live in kmeans_steps.py.
from mtssl_tf.transfer.kmeans_steps import SCORE_BLOCK_BYTES, Centroids, block_rows  # noqa: F401

INITS = ('kmeans++', 'random')
# k-means++ is sequential: one pass over its points per centroid, k passes in all (each a GEMM of its
# 2 + ln k candidates), so it runs on a subsample of this many points per centroid (D^2 sampling needs
# coverage, not density): 16, 32 and 64 ended within 0.6% of each other after Lloyd (module docstring),
# at a cost proportional to the points.
INIT_POINTS_PER_CENTROID = 16
# Fewer points per centroid than this gives noisy centroids (faiss warns below 39).
MIN_POINTS_PER_CENTROID = 39
_FORMAT_VERSION = 1


@dataclasses.dataclass
class KMeansConfig(Config):
  """K-means of the extracted features (the `cluster` section of `TransferConfig`).

  Attributes:
    num_clusters: k, the number of pseudo-labels (2000 in the paper).
    init: 'kmeans++' (greedy D^2 sampling on at most `INIT_POINTS_PER_CENTROID` * k sample
      points) or 'random' (k distinct sample points, as faiss: 10-20% worse final
      objective). See the module docstring for the measured choice of the defaults.
    init_trials: k-means++ candidates per step (1: plain k-means++); 0 takes scikit-learn's
      2 + ln(k) (`default_trials`).
    init_dims: > 0 runs k-means++ on a projection of the sample to this many dims (the
      start's cost scales with them); 0 on the features (exact, 28-38 assignment passes
      at 100k x 1024, k=2000). 128: within 1-1.5% of the exact start's final objective
      on the three measured cases, 64 within ~2%, 32 10% worse on the benchmark's mixture.
    init_projection: 'pca' (the sample's top principal directions; keeps the clusters'
      separation far better than random at the same dims) or 'random' (Gaussian).
    iterations: Lloyd iterations (assignment + centroid update); 0 keeps the initial centroids.
    max_points_per_centroid: fit on a seeded uniform sample of at most k times this many
      points (faiss's convention); 0 fits on all points (held in memory).
    pca_dims: 0 clusters the features as they are; > 0 PCA-whitens them to this many
      dimensions first, fitted on the sample (the DeepCluster variant).
    l2_normalize: L2-normalise the features (after PCA) before clustering (DeepCluster).
    seed: sampling and initialisation; the same seed and data give the same centroids.
    batch_size: points per assignment batch; bounds memory (2 x batch_size x k floats).
    tolerance: stop early when the objective falls by less than this fraction in an
      iteration (0: run all iterations, or until no label changes).
    bounds: 'yinyang' (per-group lower bounds, Ding et al. 2015), 'hamerly' (one lower bound)
      or 'none': after the first pass, Lloyd scores only the points whose nearest centroid
      can have changed, with the same assignments as 'none' up to float32 near-ties
      (`mtssl_tf/transfer/kmeans_bounds.py`).
  """

  num_clusters: int = 2000
  init: str = 'kmeans++'
  init_trials: int = 0
  init_dims: int = 128
  init_projection: str = 'pca'
  iterations: int = 20
  max_points_per_centroid: int = 256
  pca_dims: int = 0
  l2_normalize: bool = False
  seed: int = 0
  batch_size: int = 65536
  tolerance: float = 0.0
  bounds: str = 'yinyang'

  def validate(self) -> None:
    if self.num_clusters < 2:
      raise ConfigError(f'cluster.num_clusters: need at least 2 clusters, got {self.num_clusters}')
    if self.init not in INITS:
      raise ConfigError(f'cluster.init: must be one of {INITS}, got {self.init!r}')
    if self.init_projection not in PROJECTIONS:
      raise ConfigError(f'cluster.init_projection: must be one of {PROJECTIONS}, got {self.init_projection!r}')
    if self.bounds not in BOUNDS:
      raise ConfigError(f'cluster.bounds: must be one of {BOUNDS}, got {self.bounds!r}')
    if self.batch_size < 1:
      raise ConfigError(f'cluster.batch_size: must be positive, got {self.batch_size}')
    for key in ('init_trials', 'init_dims', 'iterations', 'max_points_per_centroid', 'pca_dims', 'seed'):
      if getattr(self, key) < 0:
        raise ConfigError(f'cluster.{key}: must be >= 0, got {getattr(self, key)}')
    if not 0 <= self.tolerance < 1:
      raise ConfigError(f'cluster.tolerance: must be in [0, 1), got {self.tolerance}')


# ----------------------------------------------------------------------------- k-means


class KMeans:
  """Euclidean k-means (Lloyd) with subsampling, k-means++ and optional PCA-whitening/L2.

  Attributes:
    config: the `KMeansConfig`.
    centroids: float32 [k, D'] in the transformed (PCA/L2) space; None before `fit`.
    objective_history: mean squared distance of the fitting sample to its nearest
      centroid: [0] for the initial centroids, [i] after i Lloyd updates. The last entry
      is that of `centroids`. Up to `iterations + 1` entries (fewer when no label
      changes or the `tolerance` stops it). Non-increasing (see the module docstring).
    reseeded_history: empty clusters re-seeded after each of those assignments.
    active_history: fraction of the sample whose nearest centroid was searched in each of
      those assignments (the rest the bounds settled; 1.0 throughout with `bounds: none`).
    scored_history: fraction of the n x k distances computed in each. Both are saved; a file
      written before they existed loads them as empty lists.
    pca_mean, pca_matrix: the whitening (x - mean) @ matrix, or None without PCA.
    input_dims: D of the features `fit` saw.
    num_points_seen, num_points_fit: rows read by `fit`, and rows it clustered.
  """

  def __init__(self, config: KMeansConfig):
    config.validate()
    self.config = config
    self.centroids: Optional[np.ndarray] = None
    self.objective_history: List[float] = []
    self.reseeded_history: List[int] = []
    self.active_history: List[float] = []
    self.scored_history: List[float] = []
    self.pca_mean: Optional[np.ndarray] = None
    self.pca_matrix: Optional[np.ndarray] = None
    self.input_dims: Optional[int] = None
    self.num_points_seen = 0
    self.num_points_fit = 0

  # --------------------------------------------------------------------------- fit

  def fit(self, features: Features, progress: bool = True, init_centroids: Optional[np.ndarray] = None) -> KMeans:
    """Fits the centroids (and the PCA-whitening) on a sample of `features`.

    Args:
      features: float array [N, D]; or an iterable of [n_i, D] chunks, or a callable
        returning one (read once, to sample; it may be larger than memory).
      progress: log every iteration (objective, seconds, re-seeded clusters).
      init_centroids: optional [k, D'] initial centroids in the transformed space,
        replacing `config.init` (for benchmarks against other implementations).

    Returns:
      self.

    Raises:
      ValueError: fewer points than clusters, `pca_dims` above D, or malformed features.
    """
    cfg = self.config
    k = cfg.num_clusters
    start = time.perf_counter()
    capacity = k * cfg.max_points_per_centroid or None
    sample_rng = np.random.default_rng([cfg.seed, 0])
    if isinstance(features, (np.ndarray, tf.Tensor)):
      array = np.asarray(features)
      next(iter_chunks(array), None)  # Shape check.
      x, seen = sample_array(array, capacity, sample_rng), len(array)
    else:
      x, seen = sample_stream(iter_chunks(features), capacity, sample_rng)
    n, dims = x.shape
    if n < k:
      raise ValueError(f'cluster.num_clusters: {k} clusters need at least {k} points, got {n}')
    if n < MIN_POINTS_PER_CENTROID * k:
      logging.warning('k-means: only %.1f points per centroid (%d points, k=%d)', n / k, n, k)
    logging.info('k-means: fitting k=%d on %d of %d points (%d dims), sampled in %.1f s', k, n, seen, dims,
                 time.perf_counter() - start)  # fmt: skip
    self.input_dims, self.num_points_seen, self.num_points_fit = dims, seen, n
    self.pca_mean = self.pca_matrix = None
    if cfg.pca_dims:
      if cfg.pca_dims > dims:
        raise ValueError(f'cluster.pca_dims: {cfg.pca_dims} exceeds the {dims} feature dims')
      if cfg.pca_dims >= n:
        logging.warning('k-means: whitening to %d dims from %d points: trailing directions are noise', cfg.pca_dims, n)
      tick = time.perf_counter()
      self.pca_mean, self.pca_matrix = fit_pca(x, cfg.pca_dims, cfg.batch_size)
      logging.info(
        'k-means: PCA-whitening %d -> %d dims fitted in %.1f s', dims, cfg.pca_dims, time.perf_counter() - tick
      )
    if cfg.pca_dims or cfg.l2_normalize:
      x = self.transform(x)

    tick = time.perf_counter()
    if init_centroids is not None:
      centroids = np.array(init_centroids, np.float32)
      if centroids.shape != (k, x.shape[1]):
        raise ValueError(f'k-means: init_centroids must be [{k}, {x.shape[1]}], got {centroids.shape}')
    else:
      centroids = self.initialize(x)
    logging.info('k-means: %s init in %.1f s', 'given' if init_centroids is not None else cfg.init,
                 time.perf_counter() - tick)  # fmt: skip
    # Lloyd reads the sample from TF tensors converted once, batch by batch, and drops the numpy sample (where
    # fit owns it; both exist while converting): converting every batch again in every pass cost 25-35% of a
    # pass on the busy 2-core EPYC (100k x 1024, k=2000), fresh pages for each copy.
    batches = TensorBatches(x, cfg.batch_size)
    del x
    self.centroids = self._lloyd(batches, centroids, progress)
    history = self.objective_history
    logging.info('k-means: k=%d, objective %.6g -> %.6g after %d updates, %d empty clusters re-seeded, %.1f s in all',
                 k, history[0], history[-1], len(history) - 1, sum(self.reseeded_history),
                 time.perf_counter() - start)  # fmt: skip
    return self

  def initialize(self, x: np.ndarray) -> np.ndarray:
    """Initial centroids [k, D] of the (transformed) sample `x` by `config.init`, seeded by `config.seed`."""
    cfg = self.config
    n, k = len(x), cfg.num_clusters
    rng = np.random.default_rng([cfg.seed, 1])
    if cfg.init == 'random':
      return np.array(x[np.sort(rng.choice(n, k, replace=False))], np.float32)
    limit = k * INIT_POINTS_PER_CENTROID
    subset = x if n <= limit else x[np.sort(rng.choice(n, limit, replace=False))]
    return np.array(
      subset[kmeans_plus_plus(subset, k, rng, cfg.init_trials, cfg.init_dims, cfg.init_projection)], np.float32
    )

  def _lloyd(self, x: TensorBatches, centroids: np.ndarray, progress: bool) -> np.ndarray:
    """Runs the Lloyd iterations on the transformed sample; fills the histories; returns the centroids."""
    cfg = self.config
    n, k = x.rows, len(centroids)
    self.objective_history, self.reseeded_history, self.active_history, self.scored_history = [], [], [], []
    labels = np.empty(n, np.int32)
    bounded = None
    if cfg.bounds != 'none':
      bounded = BoundedLloyd(x.batches, group_centroids(centroids, cfg.bounds, cfg.seed), block_rows(k))
      self.active_history, self.scored_history = bounded.active_history, bounded.scored_history
    previous = None
    for iteration in range(cfg.iterations + 1):
      tick = time.perf_counter()
      update = iteration < cfg.iterations
      current = Centroids(centroids)
      total = 0.0
      sums = np.zeros(centroids.shape, np.float64) if update else None
      if bounded is not None:
        total, sums = bounded.run(centroids, labels, update)
      for start, batch in x.batches if bounded is None else ():
        # One call per batch: assignment, objective and cluster sums (summed in float64 across batches); the
        # last pass only scores the final centroids, without sums.
        if update:
          batch_labels, batch_total, batch_sums = current.assign_and_sum(batch)
          sums += batch_sums.numpy()
          total += float(batch_total)
        else:
          batch_labels, sq_dist = current.nearest(batch)
          total += float(np.sum(sq_dist.numpy(), dtype=np.float64))
        labels[start : start + batch.shape[0]] = batch_labels.numpy()
      if bounded is None:
        self.active_history.append(1.0)
        self.scored_history.append(1.0)
      counts = np.bincount(labels, minlength=k)
      objective = total / n
      self.objective_history.append(objective)
      # Same labels and no empty cluster: the means are the centroids just used, a fixed point.
      converged = previous is not None and counts.min() > 0 and np.array_equal(labels, previous)
      change = None
      if iteration:
        last = self.objective_history[-2]
        change = (last - objective) / last if last > 0 else 0.0
      stalled = cfg.tolerance > 0 and change is not None and change < cfg.tolerance
      reseeded = 0
      if update and not converged and not stalled:
        nonempty = counts > 0
        centroids = centroids.copy()
        centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
        reseeded = self._reseed(centroids, np.flatnonzero(~nonempty), x, labels, counts)
        previous = labels.copy()
      self.reseeded_history.append(reseeded)
      if progress:
        logging.info('k-means: iteration %d/%d: objective %.6g%s, %.2f s, %.1f%% of points searched, %.1f%% of '
                     'distances, %d empty clusters re-seeded', iteration, cfg.iterations, objective,
                     '' if change is None else f' ({-100 * change:+.3f}%)', time.perf_counter() - tick,
                     100 * self.active_history[-1], 100 * self.scored_history[-1], reseeded)  # fmt: skip
      if converged or stalled:
        logging.info('k-means: %s after %d updates', 'converged (no label changed)' if converged else
                     f'stopped (objective fell by less than {cfg.tolerance:g})', iteration)  # fmt: skip
        break
    return centroids

  @staticmethod
  def _reseed(centroids, empty, x, labels, counts) -> int:
    """Moves each empty cluster's centroid onto the point farthest from the largest cluster's centroid.

    Splitting the largest cluster (as faiss does) rather than placing the centroid at
    random keeps it inside the data. The non-empty centroids stay the means of their
    points, so the Lloyd bound (and a non-increasing objective) holds.
    """
    sizes = counts.astype(np.float64)
    taken = set()
    for cluster in empty:
      largest = int(np.argmax(sizes))
      members = np.flatnonzero(labels == largest)
      order = np.argsort(-np.sum(np.square(x.take(members) - centroids[largest]), axis=1), kind='stable')
      point = next((int(m) for m in members[order] if int(m) not in taken), int(members[order[0]]))
      taken.add(point)
      centroids[cluster] = x.take(np.array([point]))[0]
      sizes[largest] /= 2  # Expected split, so the next empty cluster may split another.
    if len(empty):
      logging.info('k-means: re-seeded %d empty clusters (%s%s)', len(empty), ', '.join(map(str, empty[:10])),
                   ', ...' if len(empty) > 10 else '')  # fmt: skip
    return len(empty)

  # --------------------------------------------------------------------------- use

  def transform(self, features: Features) -> np.ndarray:
    """Applies the fitted PCA-whitening and L2 normalisation (identity without them), float32 [N, D']."""
    cfg = self.config
    if cfg.pca_dims and self.pca_matrix is None:
      raise RuntimeError('k-means: transform before fit (the PCA is fitted by fit)')
    out = []
    for chunk in iter_chunks(features):
      self._check_dims(chunk)
      for _, batch in iter_batches(chunk, cfg.batch_size):
        if self.pca_matrix is not None:
          batch = (batch - self.pca_mean) @ self.pca_matrix
        if cfg.l2_normalize:
          batch = batch / np.maximum(np.linalg.norm(batch, axis=1, keepdims=True), 1e-12)
        out.append(batch.astype(np.float32, copy=False))
    if not out:
      return np.zeros(
        (0, self.pca_matrix.shape[1] if self.pca_matrix is not None else self.input_dims or 0), np.float32
      )
    return np.concatenate(out)

  def assign(self, features: Features) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, streaming over the chunks.

    Args:
      features: float array [N, D], an iterable of [n_i, D] chunks, or a callable returning one.

    Returns:
      labels int32 [N] and squared distances float32 [N] (in the transformed space), in input order.
    """
    if self.centroids is None:
      raise RuntimeError('k-means: assign before fit or load')
    current = Centroids(self.centroids)
    labels, sq_dists = [], []
    for chunk in iter_chunks(features):
      self._check_dims(chunk)
      for _, batch in iter_batches(chunk, self.config.batch_size):
        if self.config.pca_dims or self.config.l2_normalize:
          batch = self.transform(batch)
        batch_labels, sq_dist = current.nearest(tf.convert_to_tensor(batch))
        labels.append(batch_labels.numpy())
        sq_dists.append(sq_dist.numpy())
    if not labels:
      return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(labels), np.concatenate(sq_dists)

  def _check_dims(self, chunk: np.ndarray) -> None:
    if self.input_dims is not None and chunk.shape[1] != self.input_dims:
      raise ValueError(f'k-means: features have {chunk.shape[1]} dims, the clustering was fitted on {self.input_dims}')

  # --------------------------------------------------------------------------- files

  def save(self, path: str) -> None:
    """Writes centroids, PCA, config and histories to the .npz file `path` (atomically; gs:// works)."""
    if self.centroids is None:
      raise RuntimeError('k-means: save before fit')
    empty = np.zeros(0, np.float32)
    buffer = io.BytesIO()
    np.savez(
      buffer,
      version=np.int64(_FORMAT_VERSION),
      config=np.array(json.dumps(to_plain(self.config))),
      centroids=self.centroids,
      pca_mean=empty if self.pca_mean is None else self.pca_mean,
      pca_matrix=empty if self.pca_matrix is None else self.pca_matrix,
      objective_history=np.array(self.objective_history, np.float64),
      reseeded_history=np.array(self.reseeded_history, np.int64),
      active_history=np.array(self.active_history, np.float64),
      scored_history=np.array(self.scored_history, np.float64),
      counts=np.array([self.input_dims or 0, self.num_points_seen, self.num_points_fit], np.int64),
    )
    directory = os.path.dirname(path)
    if directory:
      tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(path + '.tmp', 'wb') as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)

  @classmethod
  def load(cls, path: str) -> KMeans:
    """Reads a `save`d clustering."""
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if int(data['version']) != _FORMAT_VERSION:
      raise ValueError(f'k-means: {path} has format version {int(data["version"])}, expected {_FORMAT_VERSION}')
    model = cls(override(KMeansConfig(), json.loads(str(data['config'])), prefix='cluster'))
    model.centroids = data['centroids']
    if data['pca_matrix'].size:
      model.pca_mean, model.pca_matrix = data['pca_mean'], data['pca_matrix']
    model.objective_history = [float(v) for v in data['objective_history']]
    model.reseeded_history = [int(v) for v in data['reseeded_history']]
    # Files written before the bounds (2026-12-01) have no work histories: read as empty.
    for name in ('active_history', 'scored_history'):
      setattr(model, name, [float(v) for v in data[name]] if name in data.files else [])
    model.input_dims, model.num_points_seen, model.num_points_fit = (int(v) for v in data['counts'])
    return model
