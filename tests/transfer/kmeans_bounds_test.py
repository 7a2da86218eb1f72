"""K-means with distance bounds (`cluster.bounds`): the plain Lloyd result with fewer points scored."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import adjusted_rand_score

from mtssl_tf.configs.base import ConfigError, load_config
from mtssl_tf.transfer import kmeans_bounds
from mtssl_tf.transfer.kmeans import KMeans, KMeansConfig

BOUNDED = ('hamerly', 'yinyang')


def _blobs(n=3000, k=30, dims=16, seed=0, spread=10.0):
  """Well-separated Gaussian blobs: centres ~N(0, spread^2) per dim, unit noise."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, dims)) * spread
  truth = rng.integers(k, size=n)
  return (centres[truth] + rng.normal(size=(n, dims))).astype(np.float32), truth


def _fit(x, init, bounds, **values):
  cfg = KMeansConfig(num_clusters=len(init), batch_size=700, bounds=bounds, **({'iterations': 15} | values))
  return KMeans(cfg).fit(x, progress=False, init_centroids=init)


@pytest.mark.numerics
@pytest.mark.parametrize('bounds', BOUNDED)
def test_same_labels_as_plain_lloyd_on_separated_blobs(bounds):
  # A random start (k distinct points, several in some blobs): labels keep changing for several passes, so
  # the bounds are exercised. At the end every point is ~4 (sqrt of 16 dims) from its blob's centre and
  # ~spread * sqrt(2 * 16) = 57 from any other: no point is near a tie, so the labels compare as integers.
  x, truth = _blobs()
  init = x[np.random.default_rng(1).choice(len(x), 30, replace=False)]
  plain, bounded = _fit(x, init, 'none'), _fit(x, init, bounds)
  assert len(bounded.objective_history) == len(plain.objective_history) > 3
  # Labels may differ at a float32 near-tie on the way (the two paths score with different GEMM shapes); a
  # different trajectory would move whole blobs, 1/30 of the points each. So: all but under 1% agree.
  assert np.mean(bounded.assign(x)[0] == plain.assign(x)[0]) > 0.99
  assert bounded.reseeded_history == plain.reseeded_history


@pytest.mark.numerics
@pytest.mark.parametrize('bounds', BOUNDED)
def test_same_objective_as_plain_lloyd_on_random_data(bounds):
  # Uniform random data: no cluster structure, labels change in every pass. With the same labels the two
  # objectives differ only by rounding: each point's squared distance by at most rounding(D) * (|x|^2 +
  # max |c|^2) (kmeans_bounds' module docstring), against the exact value, in both runs.
  rng = np.random.default_rng(2)
  x = rng.random((2000, 8), dtype=np.float32)
  init = x[:20].copy()
  plain, bounded = _fit(x, init, 'none', iterations=10), _fit(x, init, bounds, iterations=10)
  assert len(bounded.objective_history) == len(plain.objective_history)
  max_c_sq = float(np.max(np.sum(np.square(plain.centroids), axis=1)))
  tolerance = 2 * kmeans_bounds.rounding(x.shape[1]) * (np.mean(np.sum(np.square(x), axis=1)) + max_c_sq)
  np.testing.assert_allclose(bounded.objective_history, plain.objective_history, rtol=0, atol=tolerance)
  np.testing.assert_allclose(bounded.centroids, plain.centroids, rtol=1e-5, atol=1e-6)


@pytest.mark.numerics
@pytest.mark.parametrize('bounds', BOUNDED)
def test_bounds_skip_points_after_the_first_pass(bounds):
  x, truth = _blobs()
  # One start point per blob (k-means++ would do, this is deterministic): a few points change in pass 1.
  init = np.stack([x[np.flatnonzero(truth == c)[0]] for c in range(30)])
  km = _fit(x, init, bounds)
  # The first pass scores every point but those Hamerly's test already places at their start label (0).
  assert km.active_history[0] > 0.9
  assert len(km.active_history) == len(km.objective_history) >= 2
  assert max(km.active_history[1:]) < 0.5, km.active_history
  assert adjusted_rand_score(truth, km.assign(x)[0]) == 1.0
  # Without bounds every pass searches every point: the history holds the constant 1.0, not a measured float.
  assert _fit(x, init, 'none').active_history == [1.0] * len(km.active_history)


@pytest.mark.numerics
@pytest.mark.parametrize('bounds', BOUNDED)
def test_empty_cluster_is_reseeded_with_bounds(bounds):
  x, truth = _blobs(k=10)
  # Nine blob members and one centroid far from every point, which stays empty: re-seeding moves it by
  # ~1e4, which the drift-based lower bounds must absorb.
  init = np.concatenate([x[[np.flatnonzero(truth == c)[0] for c in range(9)]], np.full((1, 16), 1e4, np.float32)])
  km = _fit(x, init, bounds)
  assert km.reseeded_history[0] == 1
  assert adjusted_rand_score(truth, km.assign(x)[0]) == 1.0
  # As in the first test: a near-tie on the way may move a point, a different trajectory whole blobs (1/10 each).
  assert np.mean(km.assign(x)[0] == _fit(x, init, 'none').assign(x)[0]) > 0.99


def test_groups():
  centroids = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
  assert np.all(kmeans_bounds.group_centroids(centroids, 'hamerly', 0) == 0)
  groups = kmeans_bounds.group_centroids(centroids, 'yinyang', 0)
  assert groups.shape == (200,) and groups.dtype == np.int32
  # k/10 groups (Ding et al.), numbered without gaps; a group emptied by the grouping's k-means is dropped.
  assert 10 <= groups.max() + 1 <= 20 and np.all(np.bincount(groups) > 0)


def test_bad_bounds_name_the_key():
  with pytest.raises(ConfigError, match=r"cluster.bounds: must be one of \('yinyang', 'hamerly', 'none'\)"):
    load_config(KMeansConfig, overrides=['bounds=elkan'])


@pytest.mark.numerics
def test_groups_of_one_centroid(monkeypatch):
  # One centroid per group (Elkan's per-centroid bounds): a row's own group has no other centroid, an
  # infinite bound, which must stay usable (not NaN) when the row later leaves that centroid. Random data:
  # rows move back and forth. Same tolerance as test_same_objective_as_plain_lloyd_on_random_data.
  monkeypatch.setattr(kmeans_bounds, 'CENTROIDS_PER_GROUP', 1)
  x = np.random.default_rng(3).random((2000, 8), dtype=np.float32)
  init = x[:20].copy()
  plain, bounded = _fit(x, init, 'none'), _fit(x, init, 'yinyang')
  assert len(bounded.objective_history) == len(plain.objective_history)
  max_c_sq = float(np.max(np.sum(np.square(plain.centroids), axis=1)))
  tolerance = 2 * kmeans_bounds.rounding(x.shape[1]) * (np.mean(np.sum(np.square(x), axis=1)) + max_c_sq)
  np.testing.assert_allclose(bounded.objective_history, plain.objective_history, rtol=0, atol=tolerance)
  np.testing.assert_allclose(bounded.centroids, plain.centroids, rtol=1e-5, atol=1e-6)
  assert min(bounded.scored_history[1:]) < 1


@pytest.mark.numerics
def test_every_pass_finds_the_exact_nearest_centroid():
  # BoundedLloyd driven directly, one centroid per group (the case with infinite bounds): after every pass the
  # labels are the float64 nearest centroids wherever the two nearest are apart by more than float32
  # rounding (the slack of kmeans_bounds' docstring, doubled for both distances), and no bound is NaN.
  rng = np.random.default_rng(4)
  x = rng.random((600, 4), dtype=np.float32)
  batches = [(0, tf.constant(x[:250])), (250, tf.constant(x[250:]))]
  bounded = kmeans_bounds.BoundedLloyd(batches, np.arange(12, dtype=np.int32), rows=64)
  labels = np.empty(len(x), np.int32)
  centroids = x[:12].copy()
  rounding = kmeans_bounds.rounding(x.shape[1])
  for _ in range(8):
    _, sums = bounded.run(centroids, labels, update=True)
    exact = np.sum((x[:, None].astype(np.float64) - centroids[None]) ** 2, axis=-1)
    best, second = np.sort(exact, axis=1)[:, :2].T
    scale = np.sum(np.square(x), axis=1) + np.max(np.sum(np.square(centroids), axis=1))
    clear = second - best > 4 * rounding * scale
    assert clear.mean() > 0.95
    # Integers compared only where the float64 gap exceeds the float32 rounding bound (`clear`).
    np.testing.assert_array_equal(labels[clear], np.argmin(exact, axis=1)[clear])
    assert not np.isnan(np.concatenate([lower.numpy() for lower in bounded.lower])).any()
    counts = np.bincount(labels, minlength=12)
    moved = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    centroids = np.where(counts[:, None] > 0, moved, centroids)
  assert min(bounded.scored_history[1:]) < 1
