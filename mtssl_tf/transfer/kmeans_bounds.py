"""Lloyd passes that compute distances only for the points whose nearest centroid can change.

Exact distance bounds (Hamerly 2010; Yinyang k-means, Ding et al. 2015) carried from one
pass to the next: per point an upper bound `u` on the distance to its centroid and, per
group of centroids, a lower bound on the distance to every centroid of the group other
than its own. When the centroids move, `u` is replaced by the point's true distance to
its moved centroid (computed directly, |x - c|, for every point: it is also the point's
term of the objective) and each group's lower bound falls by the largest move in the
group (triangle inequality). A point whose `u` is at most every group's lower bound (or
at most half the distance from its centroid to the nearest other centroid, Hamerly's
test, used with a single group) keeps its centroid; only the others ("active") are gathered and scored against all
centroids with the same blocked TF GEMM as the plain pass, which also gives their new
bounds. 'hamerly' is the single-group case (the lower bound is the second-nearest
distance); 'yinyang' groups the initial centroids by a small k-means into k/10 groups.

Float32 rounding: the bounds are rigorous for exact distances. A GEMM-form squared
distance |x|^2 - 2x.c + |c|^2 is within e = `rounding(D)` * (|x|^2 + max |c|^2) of the
exact one (float32 dot products of length D err by at most ~D * 2^-24 of |x||c|, Higham's
gamma_D; the doubling covers the norms and the additions), so a lower bound is taken from
max(score - e, 0); a direct-form |x - c|^2 errs by at most that relative factor of
itself, so the upper bound is taken from it times (1 + rounding). A point is skipped only
when its centroid is nearest in exact arithmetic; the plain pass could pick another only
where two float32 distances are within rounding of each other (a near-tie).

The objective of a pass is the sum over points of the direct-form squared distance
|x - c|^2 to the centroid they get (for the searched points too: one gather of their
centroids), within rounding(D) of itself, where the plain pass sums the GEMM form, within
rounding(D) of |x|^2 + |c|^2: the two agree up to that rounding.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import tensorflow as tf

BOUNDS = ('yinyang', 'hamerly', 'none')
# Yinyang k-means groups the k centroids into t = k/10 groups (Ding et al. 2015, §3.2 and §5), by 5 Lloyd
# iterations of k-means of the initial centroids (§3.1).
CENTROIDS_PER_GROUP = 10
GROUPING_ITERATIONS = 5

_MATRIX = tf.TensorSpec([None, None], tf.float32)
_VECTOR = tf.TensorSpec([None], tf.float32)
_LABELS = tf.TensorSpec([None], tf.int32)
_INT = tf.TensorSpec([], tf.int32)
_FLOAT = tf.TensorSpec([], tf.float32)


def rounding(dims: int) -> float:
  """Relative float32 error bound of a length-`dims` squared distance: 2 gamma_{D+4} (gamma_n = n u / (1 - n u))."""
  n = (dims + 4) * 2.0**-24
  return 2.0 * n / (1.0 - n)


def group_centroids(centroids: np.ndarray, method: str, seed: int) -> np.ndarray:
  """Group index [k] int32 of each centroid: all 0 for 'hamerly', a small k-means into k/10 groups for 'yinyang'."""
  k = len(centroids)
  groups = max(1, k // CENTROIDS_PER_GROUP) if method == 'yinyang' else 1
  if groups == 1:
    return np.zeros(k, np.int32)
  c = centroids.astype(np.float64)
  rng = np.random.default_rng([seed, 2])
  centres = c[rng.choice(k, groups, replace=False)]
  sq = np.einsum('ij,ij->i', c, c)
  for _ in range(GROUPING_ITERATIONS):
    group = np.argmin(sq[:, None] - 2 * c @ centres.T + np.einsum('ij,ij->i', centres, centres), axis=1)
    counts = np.bincount(group, minlength=groups)
    sums = np.zeros_like(centres)
    np.add.at(sums, group, c)
    centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
  return np.unique(group, return_inverse=True)[1].astype(np.int32)  # Numbered 0.. without empty groups.


def _filtered_blocks(
  x, x_sq, own, own_sq, lower, fail, neg2_centroids, centroid_sq, group_of, num_groups, rows, rel, max_c_sq
):
  """New labels and group lower bounds of the active rows, one block of rows at a time.

  A block is scored (the GEMM form of the plain pass) only against the centroids of the
  groups that fail the bound test for some row of the block: in every other group no
  centroid can be nearer than the row's own (its lower bound is at least the row's upper
  bound), so their bounds stay. The row's own centroid is scored by its direct distance
  `own_sq`. A group's new bound is the minimum over its scored centroids other than the
  new label; when a row leaves its centroid, that centroid now bounds its group from below.

  Returns:
    labels [m], group lower bounds [m, G], and the number of distances computed (float64).
  """  # noqa: D417 (the arguments are those of _bounded_step, for the active rows)
  # At least one (maybe empty) block: a TensorArray of no elements cannot concat a [0, groups] result.
  blocks = tf.maximum((tf.shape(x)[0] + rows - 1) // rows, 1)
  infinity = tf.constant(np.inf, tf.float32)
  labels = tf.TensorArray(tf.int32, size=blocks, infer_shape=False)
  bounds = tf.TensorArray(tf.float32, size=blocks, infer_shape=False)
  scored_pairs = tf.constant(0.0, tf.float64)
  for i in tf.range(blocks):
    rows_i = tf.range(i * rows, tf.minimum((i + 1) * rows, tf.shape(x)[0]))
    block, block_sq = tf.gather(x, rows_i), tf.gather(x_sq, rows_i)
    block_own, block_own_sq = tf.gather(own, rows_i), tf.gather(own_sq, rows_i)
    # [G]: groups to score for this block (all for the empty block of no active rows: argmin needs columns).
    need = tf.logical_or(tf.reduce_any(tf.gather(fail, rows_i), axis=0), tf.size(rows_i) == 0)
    subset = tf.cast(tf.where(tf.gather(need, group_of))[:, 0], tf.int32)  # Their centroids.
    scores = tf.linalg.matmul(block, tf.gather(neg2_centroids, subset), transpose_b=True)
    scores += tf.gather(centroid_sq, subset)
    scored_pairs += tf.cast(tf.size(scores), tf.float64)
    best_sq = tf.maximum(block_sq + tf.reduce_min(scores, axis=1), 0.0)  # Float32 cancellation can dip below 0.
    moved = best_sq < block_own_sq
    best = tf.gather(subset, tf.math.argmin(scores, axis=1, output_type=tf.int32))
    label = tf.where(moved, best, block_own)
    labels = labels.write(i, label)
    others = tf.where(subset[None, :] == label[:, None], infinity, scores)
    minima = tf.transpose(tf.math.unsorted_segment_min(tf.transpose(others), tf.gather(group_of, subset), num_groups))
    # An exact squared distance is at least the float32 one minus its rounding bound (module docstring).
    slack = rel * (block_sq + max_c_sq)
    # A group with no other centroid has no bound: kept finite (TF's CPU segment min gives the float32 maximum
    # there, +inf elsewhere would make the next drift update inf - inf = NaN, which fails no test).
    scored = tf.minimum(tf.sqrt(tf.maximum(block_sq[:, None] + minima - slack[:, None], 0.0)), tf.float32.max)
    bound = tf.where(need[None, :], scored, tf.gather(lower, rows_i))
    left = tf.logical_and(
      tf.one_hot(tf.gather(group_of, block_own), num_groups, on_value=True, off_value=False),
      (label != block_own)[:, None],
    )
    own_lower = tf.sqrt(block_own_sq * (1.0 - rel))  # The direct form errs by at most rel of itself.
    bounds = bounds.write(i, tf.where(left, tf.minimum(bound, own_lower[:, None]), bound))
  return labels.concat(), bounds.concat(), scored_pairs


@tf.function(
  input_signature=[_MATRIX, _VECTOR, _LABELS, _MATRIX, _MATRIX, _MATRIX, _VECTOR, _VECTOR, _LABELS, _VECTOR, _INT]
  + [_INT, _FLOAT, _FLOAT]
)
def _bounded_step(
  x, x_sq, labels, lower, centroids, neg2, centroid_sq, half_gap, group_of, group_drift, num_groups, rows, rel, max_c_sq
):
  """One bounded pass over a batch: new labels and group lower bounds, summed squared distance, active rows."""
  own_sq = tf.reduce_sum(tf.square(x - tf.gather(centroids, labels)), axis=1)
  upper = tf.sqrt(own_sq * (1.0 + rel))
  # Triangle inequality: no centroid of group g came closer than its largest move. The extra 2^-23 of the
  # operands covers the float32 rounding of this subtraction, so the bound stays a bound over many passes.
  lower = lower - group_drift - 2.0**-23 * (tf.abs(lower) + group_drift)
  fail = lower < upper[:, None]
  active = tf.where(tf.logical_and(tf.reduce_any(fail, axis=1), upper > tf.gather(half_gap, labels)))[:, 0]
  # Rows ordered by their centroid's group: rows of nearby centroids fail the test in similar groups, so a
  # block's union of failing groups (what it is scored against) stays small.
  active = tf.gather(active, tf.argsort(tf.gather(tf.gather(group_of, labels), active), stable=True))
  xa = tf.gather(x, active)
  new_labels, new_lower, scored_pairs = _filtered_blocks(
    xa, tf.gather(x_sq, active), tf.gather(labels, active), tf.gather(own_sq, active),
    tf.gather(lower, active), tf.gather(fail, active), neg2, centroid_sq, group_of, num_groups, rows, rel, max_c_sq,
  )  # fmt: skip
  at = active[:, None]
  labels = tf.tensor_scatter_nd_update(labels, at, new_labels)
  lower = tf.tensor_scatter_nd_update(lower, at, new_lower)
  # The objective in the direct form for every point (module docstring), also for those that were searched.
  own_sq = tf.tensor_scatter_nd_update(own_sq, at, tf.reduce_sum(tf.square(xa - tf.gather(centroids, new_labels)), 1))
  return labels, lower, tf.reduce_sum(tf.cast(own_sq, tf.float64)), tf.size(active), scored_pairs


@tf.function(input_signature=[_MATRIX, _LABELS, _INT])
def _segment_sums(x, labels, k):
  return tf.math.unsorted_segment_sum(x, labels, k)


@tf.function(input_signature=[_MATRIX, _VECTOR, _FLOAT])
def _half_gaps(centroids, centroid_sq, pad):
  """Lower bound on half the distance from each centroid to its nearest other centroid (Hamerly's s/2)."""
  sq = centroid_sq[:, None] - 2.0 * tf.linalg.matmul(centroids, centroids, transpose_b=True) + centroid_sq[None, :]
  sq = tf.linalg.set_diag(sq, tf.fill(tf.shape(centroid_sq), tf.constant(np.inf, tf.float32)))
  return 0.5 * tf.sqrt(tf.maximum(tf.reduce_min(sq, axis=1) - pad, 0.0))


class BoundedLloyd:
  """Per-batch bounds (labels, group lower bounds) of the sample, carried across the Lloyd passes.

  Attributes:
    active_history: fraction of the points whose nearest centroid was searched in each
      pass (those the bounds did not settle; nearly all in the first).
    scored_history: fraction of the n x k distances computed in each pass.
  """

  def __init__(self, batches: List[Tuple[int, tf.Tensor]], groups: np.ndarray, rows: int):
    """Starts with no bounds: the first pass scores every point (Hamerly's: but those at label 0 by its test).

    Args:
      batches: the sample as (first row, float32 [b, D] tensor) batches.
      groups: group index [k] of each centroid (`group_centroids`).
      rows: rows per distance block of the GEMM.
    """
    self.batches = batches
    self.k, self.num_groups = len(groups), int(groups.max()) + 1
    self.groups = groups
    self.group_of = tf.constant(groups, tf.int32)
    self.rows = tf.constant(rows, tf.int32)
    self.rel = tf.constant(rounding(int(batches[0][1].shape[1])), tf.float32)
    self.x_sq = [tf.reduce_sum(tf.square(batch), axis=1) for _, batch in batches]
    self.labels = [tf.zeros([batch.shape[0]], tf.int32) for _, batch in batches]
    # -inf: no bound yet, every point is active.
    self.lower = [tf.fill([batch.shape[0], self.num_groups], -np.inf) for _, batch in batches]
    self.previous = None
    self.active_history: List[float] = []
    self.scored_history: List[float] = []

  def run(self, centroids: np.ndarray, labels: np.ndarray, update: bool) -> Tuple[float, np.ndarray]:
    """One assignment pass: fills `labels` [n]; returns the summed squared distance and the cluster sums (or None).

    The sums are recomputed from all points each pass (a segment sum is memory-bound, one
    read of the sample, against k times that in the GEMM), in float32 per batch and
    float64 across batches, as the plain pass.
    """
    c64 = centroids.astype(np.float64)
    if self.previous is None:
      drift = np.zeros(self.k)
    else:
      drift = np.sqrt(np.sum(np.square(c64 - self.previous), axis=1))  # Float32 differences are exact in float64.
    self.previous = c64
    group_drift = np.zeros(self.num_groups)
    np.maximum.at(group_drift, self.groups, drift)
    group_drift *= 1 + 2.0**-22  # Rounded up, not to nearest, in float32.
    centroid_sq = np.einsum('ij,ij->i', c64, c64)
    max_c_sq = float(centroid_sq.max())
    tensor = tf.constant(centroids, tf.float32)
    sq = tf.constant(centroid_sq, tf.float32)
    rel = float(self.rel)
    if self.num_groups == 1:
      half_gap = _half_gaps(tensor, sq, tf.constant(rel * 2 * max_c_sq, tf.float32))
    else:
      # Yinyang (as Ding et al.) without Hamerly's test: its k x k GEMM (k/n of a full pass, 0.08 s at k=2000,
      # D=1024) settled no point at 100k x 1024 that the group bounds did not.
      half_gap = tf.zeros([self.k], tf.float32)
    neg2 = tf.constant(-2.0 * centroids, tf.float32)
    total, active, pairs = 0.0, 0, 0.0
    sums = np.zeros(centroids.shape, np.float64) if update else None
    k = tf.constant(self.k, tf.int32)
    for b, (start, batch) in enumerate(self.batches):
      self.labels[b], self.lower[b], batch_total, batch_active, batch_pairs = _bounded_step(
        batch, self.x_sq[b], self.labels[b], self.lower[b], tensor, neg2, sq, half_gap, self.group_of,
        tf.constant(group_drift, tf.float32), tf.constant(self.num_groups, tf.int32), self.rows, self.rel,
        tf.constant(max_c_sq, tf.float32),
      )  # fmt: skip
      total += float(batch_total)
      active += int(batch_active)
      pairs += float(batch_pairs)
      labels[start : start + batch.shape[0]] = self.labels[b].numpy()
      if update:
        sums += _segment_sums(batch, self.labels[b], k).numpy()
    self.active_history.append(active / len(labels))
    self.scored_history.append(pairs / (len(labels) * self.k))
    return total, sums
