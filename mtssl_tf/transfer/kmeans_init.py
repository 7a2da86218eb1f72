"""The k-means start: greedy k-means++ (D^2 sampling) on a projection of the sample, in TF (GPU-ready).

Used by `mtssl_tf.transfer.kmeans.KMeans.initialize` (`cluster.init: kmeans++`, the default).
The k sequential steps run in one TF loop, each scoring its candidates against every point with
one GEMM, so the start runs on a GPU like the Lloyd iterations.

Why these defaults (measured with benchmarks/kmeans.py, final objective after Lloyd
over that from the exact greedy start on the features of <= 64 points per centroid,
the previous default, which cost 28-38 assignment passes at 100k x 1024, k=2000):
- random start: 1.198-1.203 at the benchmark's size (100k x 1024 mixture, k=2000, 10
  iterations), 1.164 on 400 overlapping blobs (20000 x 1024, k=400, 2 seeds), 1.106
  (1.05-1.22) on a miniature-like case (2000 x 256 ReLU mixture, k=20, 20
  iterations, 10 seeds): k-means++ stays the default. Plain one-candidate k-means++ ends 1.12
  (blobs) and 1.07 (miniature-like): greedy is worth its candidates.
- the dims of the start's space set its cost and its quality. PCA keeps far more of
  the clusters' separation than a random projection of the same dims (blobs at 32
  dims: PCA 0.996, Gaussian random 1.133; miniature-like at 16: 0.98 against 1.054).
  On the benchmark's mixture (2000 centres spread evenly over 1024 dims, the hardest
  case for a projection) PCA at 16, 32, 64 and 128 dims ends 1.161, 1.100, 1.017
  and 1.011 (1.016 with AVX2 emulated); on the blobs and the miniature-like case
  every PCA start from 32 dims on ends 0.977-1.002 (PCA drops the isotropic noise,
  so it may beat the exact start). 128 dims is the smallest within ~1-1.5% on all
  three.
- points per centroid barely matter at 128 or 64 dims (64 dims: 1.017, 1.020, 1.022
  at 64, 32, 16 per centroid on the benchmark; 128 dims at 16: 1.011, blobs 0.997,
  miniature-like 1.002 over 10 seeds), while the start's cost scales with them, so
  16. The start then costs 1.6-2.4 assignment passes at the benchmark's size (see
  benchmarks/README.md), where the exact one cost 28-38.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Rows per block of the start's two-level D^2 sampling (see `_greedy_d2_sampling`): a block is drawn by the
# cumulative sum of n / INIT_BLOCK block sums, then a row by one within the block, ~sqrt(n) work for both at the
# 100k-1M rows the start sees; 1024 also bounds the float32 block sums' relative error at 6e-5.
INIT_BLOCK = 1024
PROJECTIONS = ('pca', 'random')
# The start's PCA projection (`_principal_directions`): rows of the sample it is fitted on (enough for the
# leading directions of the data: their estimation error falls as 1/sqrt(rows)), and Halko et al. 2011's
# oversampling (10, their §4.2 default) and power iterations (2: accurate leading directions even where the
# spectrum decays slowly, §4.5).
PROJECTION_ROWS = 8192
PROJECTION_OVERSAMPLING = 10
PROJECTION_POWER_ITERATIONS = 2


def default_trials(k: int) -> int:
  """Candidates per greedy k-means++ step: scikit-learn's 2 + ln(k) (sklearn/cluster/_kmeans.py, _kmeans_plusplus)."""
  return 2 + int(np.log(k))


def _principal_directions(x: np.ndarray, dims: int, rng: np.random.Generator) -> tf.Tensor:
  """Top `dims` principal directions [D, dims] of a seeded sample of `x`'s rows, by randomized SVD, in TF.

  Halko, Martinsson & Tropp 2011 (Alg. 4.4: range of a Gaussian sketch with
  `PROJECTION_POWER_ITERATIONS` power iterations, then an exact SVD of the [dims + oversampling, D]
  projection) on at most `PROJECTION_ROWS` centred rows: a few [rows, D] x [D, dims + 10]
  GEMMs, far less than one assignment pass.
  """
  n = len(x)
  rows = rng.choice(n, PROJECTION_ROWS, replace=False) if n > PROJECTION_ROWS else np.arange(n)
  sample = tf.convert_to_tensor(x[np.sort(rows)])
  sample -= tf.reduce_mean(sample, axis=0)
  width = min(dims + PROJECTION_OVERSAMPLING, *sample.shape)
  basis = tf.linalg.matmul(sample, rng.standard_normal((int(x.shape[1]), width), dtype=np.float32))
  for _ in range(PROJECTION_POWER_ITERATIONS):  # Re-orthonormalised each time (Alg. 4.4) for float32.
    basis = tf.linalg.matmul(sample, tf.linalg.matmul(sample, tf.linalg.qr(basis)[0], transpose_a=True))
  _, _, directions = tf.linalg.svd(tf.linalg.matmul(tf.linalg.qr(basis)[0], sample, transpose_a=True))
  return directions[:, :dims]


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, trials: int = 0, dims: int = 0,
                     projection: str = 'pca') -> np.ndarray:  # fmt: skip
  """Indices [k] of rows of `x` chosen by greedy D^2 sampling (Arthur & Vassilvitskii 2007), in TF.

  Args:
    x: float32 [n, D], n >= k.
    k: rows to choose.
    rng: draws the first row (uniform), the uniforms that sample candidates and the
      projection, so a seeded generator gives the same rows on the same machine.
    trials: candidates per step (1: plain k-means++); 0 takes `default_trials(k)`.
    dims: 0 < dims < D samples by the distances of `x` projected to `dims` dimensions
      (one [n, D] x [D, dims] GEMM); 0 or >= D by the distances of `x` itself.
    projection: 'pca', onto `x`'s top `dims` principal directions (randomized SVD of a
      sample), or 'random', a seeded Gaussian random projection (Johnson-Lindenstrauss).

  Returns:
    int64 [k] row indices in the order chosen.
  """
  if projection not in PROJECTIONS:
    raise ValueError(f'cluster.init_projection: must be one of {PROJECTIONS}, got {projection!r}')
  x = np.asarray(x, np.float32)
  if 0 < dims < x.shape[1]:
    if projection == 'pca':
      matrix = _principal_directions(x, dims, rng)
    else:  # Entries N(0, 1/dims): squared distances are preserved in expectation.
      matrix = rng.standard_normal((x.shape[1], dims), dtype=np.float32) / np.float32(np.sqrt(dims))
    # Projected a block of rows at a time: TF copies what it is given, and one [n, D] copy (fresh pages) cost
    # 1-2 s at 100k x 1024 on the busy 2-core EPYC, more than the projection's GEMM.
    x = tf.concat([tf.linalg.matmul(x[i : i + PROJECTION_ROWS], matrix) for i in range(0, len(x), PROJECTION_ROWS)], 0)
  else:
    x = tf.convert_to_tensor(x)
  trials = trials or default_trials(k)
  first = np.int32(rng.integers(int(x.shape[0])))
  draws = rng.random((k - 1, trials))
  return _greedy_d2_sampling(x, first, tf.constant(draws, tf.float64)).numpy().astype(np.int64)


@tf.function(
  input_signature=[
    tf.TensorSpec([None, None], tf.float32),
    tf.TensorSpec([], tf.int32),
    tf.TensorSpec([None, None], tf.float64),
  ]
)
def _greedy_d2_sampling(x, first, draws):
  """Row indices [1 + len(draws)] of `x` by greedy D^2 sampling, all steps in one TF loop (no host trips).

  Each step draws `draws.shape[1]` candidates with probability proportional to D^2 (the
  squared distance to the nearest chosen row), scores all of them against every row with
  one GEMM and keeps the one that leaves the smallest potential (sum of D^2).

  A step touches each row's D^2 a few times only, so it is laid out for that (per op at
  100k rows, 16 dims, 9 candidates on the 2-core EPYC: the GEMM as [candidates, n] 0.21
  ms against 0.43 as [n, candidates], the min/max 0.22 against 0.59, block sums by
  reshape 0.11 against 0.45 by segment sum, and a float64 cumsum over all n rows
  0.4-0.5 ms, now over n / INIT_BLOCK): rows as columns [D + 2, n'] of (x, ||x||^2, 1),
  so one [candidates, D + 2] x [D + 2, n'] GEMM yields the squared distances
  ||c||^2 + ||x||^2 - 2 x.c; n' pads n to whole blocks of `INIT_BLOCK` with zero columns,
  whose distance and D^2 are 0 (never drawn). Sampling is two-level: a block by the
  float64 cumulative sum of the blocks' D^2 sums, then a row by the cumulative sum
  within that block, instead of a float64 cumulative sum over all n rows per step. The
  block sums are float32 sums of INIT_BLOCK non-negative terms, relatively off by at
  most INIT_BLOCK * 2^-24 = 6e-5 (Higham eq. 3.5), so the draw probabilities and the
  candidates' potentials are that close to exact: candidates whose potentials differ by
  less are equally good for the greedy rule.
  """
  n = tf.shape(x)[0]
  blocks = (n + INIT_BLOCK - 1) // INIT_BLOCK
  padded = blocks * INIT_BLOCK
  sq = tf.reduce_sum(tf.square(x), axis=1)
  columns = tf.concat([x, sq[:, None], tf.ones_like(sq)[:, None]], axis=1)
  columns = tf.pad(tf.transpose(columns), [[0, 0], [0, padded - n]])

  def distances(index):
    centres = tf.gather(x, index)
    rows = tf.concat([-2.0 * centres, tf.ones_like(centres[:, :1]), tf.gather(sq, index)[:, None]], axis=1)
    return tf.linalg.matmul(rows, columns)  # [len(index), padded]

  def chosen_at_zero(d2, index):
    # Exactly 0 at the chosen row (the expansion leaves rounding noise there), and its block's sum with it.
    sums = tf.reduce_sum(tf.reshape(d2, [blocks, INIT_BLOCK]), axis=1)
    noise = tf.gather(d2, index)
    d2 = tf.tensor_scatter_nd_update(d2, index[None, None], [0.0])
    return d2, tf.tensor_scatter_nd_sub(sums, (index // INIT_BLOCK)[None, None], noise[None])

  d2, block_sums = chosen_at_zero(tf.maximum(distances(first[None])[0], 0.0), first)
  chosen = tf.TensorArray(tf.int32, size=tf.shape(draws)[0] + 1).write(0, first)
  for step in tf.range(tf.shape(draws)[0]):
    cumulative = tf.cumsum(tf.cast(block_sums, tf.float64))
    total = cumulative[-1]
    target = draws[step] * total
    block = tf.minimum(tf.searchsorted(cumulative, target, side='right'), blocks - 1)
    mass = tf.cast(tf.gather(block_sums, block), tf.float64)
    # The draw's position within its block as a fraction of the block's mass (< 1), so it falls on a row of
    # positive D^2 even where the float64 sum within the block rounds differently from the float32 block sum.
    fraction = tf.clip_by_value((target - (tf.gather(cumulative, block) - mass)) / mass, 0.0, 1.0 - 2.0**-52)
    within = tf.cumsum(tf.cast(tf.gather(tf.reshape(d2, [blocks, INIT_BLOCK]), block), tf.float64), axis=1)
    row = tf.searchsorted(within, (fraction * within[:, -1])[:, None], side='right')[:, 0]
    by_d2 = block * INIT_BLOCK + tf.minimum(row, INIT_BLOCK - 1)
    # Every point on a chosen row (fewer distinct points than k): uniform among all instead.
    uniform = tf.cast(draws[step] * tf.cast(n, tf.float64), tf.int32)
    candidates = tf.minimum(tf.where(total > 0, by_d2, uniform), n - 1)
    trial = tf.maximum(tf.minimum(distances(candidates), d2[None]), 0.0)
    trial_sums = tf.reduce_sum(tf.reshape(trial, [-1, blocks, INIT_BLOCK]), axis=2)
    best = tf.argmin(tf.reduce_sum(tf.cast(trial_sums, tf.float64), axis=1), output_type=tf.int32)
    d2, block_sums = chosen_at_zero(trial[best], candidates[best])
    chosen = chosen.write(step + 1, candidates[best])
  return chosen.stack()
