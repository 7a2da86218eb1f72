"""K-means: exact recovery, monotone objective, empty clusters, determinism, streaming, PCA/L2, files, config,
the starts (D^2 sampling, seeding) and the Lloyd step against a float64 reference."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from mtssl_tf.configs.base import ConfigError, load_config
from mtssl_tf.transfer import kmeans, kmeans_init, kmeans_steps
from mtssl_tf.transfer.kmeans import KMeans, KMeansConfig

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _blobs(n=2000, k=10, dims=32, seed=0, spread=20.0):
  """Well-separated Gaussian blobs: centres ~N(0, spread^2), unit noise."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, dims)) * spread
  truth = rng.integers(k, size=n)
  return (centres[truth] + rng.normal(size=(n, dims))).astype(np.float32), truth


def _mixture(n=3000, dims=16, seed=1):
  """Overlapping mixture of 40 Gaussians: labels keep changing for many iterations."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(40, dims)) * 1.5
  return (centres[rng.integers(40, size=n)] + rng.normal(size=(n, dims))).astype(np.float32)


def _config(**values):
  cfg = KMeansConfig(num_clusters=10, iterations=20, batch_size=512)
  for key, value in values.items():
    setattr(cfg, key, value)
  return cfg


def _chunked(x, sizes):
  out, start = [], 0
  while start < len(x):
    size = sizes[len(out) % len(sizes)]
    out.append(x[start : start + size])
    start += size
  return out


def _non_increasing(history):
  return all(b <= a for a, b in zip(history, history[1:]))


@pytest.mark.parametrize('seed', [0, 1])
def test_blobs_are_recovered_exactly(seed):
  # k-means++ (the default): random init puts two centroids in one blob almost surely (all 10 blobs
  # drawn with probability 10!/10^10), a local minimum Lloyd cannot leave.
  x, truth = _blobs()
  km = KMeans(_config(seed=seed)).fit(x)
  labels, sq_dist = km.assign(x)
  assert labels.dtype == np.int32 and sq_dist.dtype == np.float32 and labels.shape == (len(x),)
  assert adjusted_rand_score(truth, labels) == 1.0
  assert km.centroids.shape == (10, 32) and km.centroids.dtype == np.float32
  # Unit noise in 32 dims: the mean squared distance to the blob centre is ~32.
  assert 28 < km.objective_history[-1] < 36
  assert np.isclose(sq_dist.mean(), km.objective_history[-1], rtol=1e-4)
  assert _non_increasing(km.objective_history)


def test_objective_never_increases_on_overlapping_data():
  x = _mixture()
  km = KMeans(_config(num_clusters=20, iterations=30)).fit(x, progress=False)
  history = km.objective_history
  assert len(history) > 8  # Many updates actually happened.
  assert _non_increasing(history), history
  assert history[-1] < 0.9 * history[0]


def test_tolerance_stops_early():
  x = _mixture()
  full = KMeans(_config(num_clusters=20, iterations=30)).fit(x, progress=False)
  early = KMeans(_config(num_clusters=20, iterations=30, tolerance=0.01)).fit(x, progress=False)
  assert len(early.objective_history) < len(full.objective_history)
  last, before = early.objective_history[-1], early.objective_history[-2]
  assert (before - last) / before < 0.01


def test_empty_cluster_is_reseeded_and_logged(monkeypatch):
  x, truth = _blobs()
  # A bad init: nine blob members and one centroid far from every point, which stays empty.
  init = np.concatenate([x[[np.flatnonzero(truth == c)[0] for c in range(9)]], np.full((1, 32), 1e4, np.float32)])
  # Record absl's log calls directly: caplog misses them once absl has its own handler
  # (as under pytest-xdist workers that imported absl.app).
  lines = []
  monkeypatch.setattr(kmeans.logging, 'info', lambda msg, *args: lines.append(msg % args))
  km = KMeans(_config()).fit(x, init_centroids=init)
  text = '\n'.join(lines)
  assert km.reseeded_history[0] == 1
  assert 're-seeded 1 empty clusters (9)' in text
  assert 'iteration 0/20: objective' in text and '1 empty clusters re-seeded' in text
  assert adjusted_rand_score(truth, km.assign(x)[0]) == 1.0
  assert _non_increasing(km.objective_history)


def test_duplicated_points_with_more_clusters_than_distinct_points():
  points = np.eye(3, 8, dtype=np.float32) * 5
  x = np.repeat(points, 50, axis=0)
  km = KMeans(_config(num_clusters=5, iterations=5, init='random')).fit(x)
  labels, sq_dist = km.assign(x)
  assert km.objective_history[-1] == 0.0 and np.all(sq_dist == 0)
  assert sum(km.reseeded_history) > 0  # Two clusters can never hold a point of their own.
  assert len(np.unique(labels)) == 3 and labels.min() >= 0 and labels.max() < 5
  assert _non_increasing(km.objective_history)


def test_same_seed_same_result_other_seed_other_init():
  x = _mixture()
  runs = [KMeans(_config(num_clusters=20, iterations=5, seed=seed)).fit(x, progress=False) for seed in (7, 7)]
  np.testing.assert_array_equal(runs[0].centroids, runs[1].centroids)
  assert runs[0].objective_history == runs[1].objective_history
  for init in ('kmeans++', 'random'):
    a, b = (KMeans(_config(num_clusters=20, iterations=0, init=init, seed=s)).fit(x) for s in (0, 1))
    assert not np.array_equal(a.centroids, b.centroids)
    assert len(a.objective_history) == 1  # iterations=0: the initial centroids, scored.


def test_streamed_assignment_equals_in_memory():
  x, _ = _blobs()
  km = KMeans(_config(batch_size=256)).fit(x)
  labels, sq_dist = km.assign(x)
  for source in (_chunked(x, [1, 700, 33, 999]), lambda: iter(_chunked(x, [128])), (c for c in _chunked(x, [50]))):
    streamed_labels, streamed_dist = km.assign(source)
    np.testing.assert_array_equal(streamed_labels, labels)
    # Other batch shapes round the matmul differently: ||x||^2 - 2 x.c + ||c||^2 is exact to ~1e-7 ||x||^2.
    np.testing.assert_allclose(streamed_dist, sq_dist, atol=1e-6 * np.max(np.sum(x**2, axis=1)))
  # float16 features (extract.dtype) are computed in float32.
  np.testing.assert_array_equal(km.assign(_chunked(x.astype(np.float16), [500]))[0], labels)


@pytest.mark.parametrize('per_centroid', [0, 50])
def test_fit_from_chunks_equals_fit_from_array(per_centroid):
  # 50 per centroid: a 500-point sample of 2000, so the chunked reservoir replaces rows.
  x = _mixture(n=2000)
  cfg = _config(num_clusters=10, iterations=5, max_points_per_centroid=per_centroid)
  from_array = KMeans(cfg).fit(x, progress=False)
  assert from_array.num_points_fit == (500 if per_centroid else 2000)
  for sizes in ([333], [1, 7, 512], [2000]):
    from_chunks = KMeans(cfg).fit(_chunked(x, sizes), progress=False)
    np.testing.assert_array_equal(from_chunks.centroids, from_array.centroids)
    assert from_chunks.objective_history == from_array.objective_history
    assert from_chunks.num_points_seen == 2000


def test_pca_whitening_and_l2():
  # 10 blobs span 9 directions; whitening more would blow unit noise up to the blobs' spread.
  x, truth = _blobs()
  whitened = KMeans(_config(pca_dims=9, max_points_per_centroid=0)).fit(x)
  y = whitened.transform(x)
  assert y.shape == (2000, 9) and whitened.centroids.shape == (10, 9)
  # Fitted on all points, the whitening gives them zero mean and identity covariance (up to the epsilon).
  np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-3)
  np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(9), atol=1e-2)
  assert adjusted_rand_score(truth, whitened.assign(x)[0]) == 1.0

  km = KMeans(_config(pca_dims=9, l2_normalize=True)).fit(x)
  y = km.transform(x)
  np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
  # assign = nearest centroid in the transformed space.
  labels, sq_dist = km.assign(x)
  brute = ((y[:, None, :] - km.centroids[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(labels, brute.argmin(1))
  np.testing.assert_allclose(sq_dist, brute.min(1), atol=1e-5)
  assert adjusted_rand_score(truth, labels) == 1.0
  # Chunked and whole-array transforms take other BLAS blockings for other batch shapes, so
  # they agree to rounding, not bit for bit: each output is a 32-term float32 dot product of
  # values ~|20| (error <~ 32 * 20 * 6e-8 ~ 4e-5 before normalisation by a norm >= ~20),
  # so 1e-5 on unit-norm rows holds with a wide margin and still catches a wrong chunk.
  np.testing.assert_allclose(km.transform(_chunked(x, [300])), y, rtol=0, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
  x, _ = _blobs(n=500)
  km = KMeans(_config(pca_dims=8, l2_normalize=True, seed=4)).fit(x)
  path = str(tmp_path / 'clusters' / 'kmeans.npz')
  km.save(path)
  loaded = KMeans.load(path)
  assert loaded.config == km.config
  for name in ('centroids', 'pca_mean', 'pca_matrix'):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(km, name))
  assert loaded.objective_history == km.objective_history and loaded.reseeded_history == km.reseeded_history
  # The bounds' work per pass round-trips: one fraction per assignment pass.
  assert loaded.active_history == km.active_history and loaded.scored_history == km.scored_history
  assert len(km.active_history) == len(km.objective_history) and all(0 <= f <= 1 for f in km.scored_history)
  assert (loaded.input_dims, loaded.num_points_seen, loaded.num_points_fit) == (32, 500, 500)
  np.testing.assert_array_equal(loaded.assign(x)[0], km.assign(x)[0])

  plain = KMeans(_config()).fit(x)
  plain.save(str(tmp_path / 'plain.npz'))
  assert KMeans.load(str(tmp_path / 'plain.npz')).pca_matrix is None

  # A file from before the work histories existed still loads, with them empty.
  with np.load(path) as data:
    old = {k: data[k] for k in data.files if k not in ('active_history', 'scored_history')}
  np.savez(str(tmp_path / 'old.npz'), **old)
  before = KMeans.load(str(tmp_path / 'old.npz'))
  assert before.active_history == [] and before.scored_history == []
  np.testing.assert_array_equal(before.centroids, km.centroids)  # Saved and read back: the same bytes, no arithmetic.


@pytest.mark.parametrize(
  'text, fragment',
  [
    ('num_clusters=1', 'cluster.num_clusters: need at least 2'),
    ('init=kmeans', 'cluster.init: must be one of'),
    ('iterations=-1', 'cluster.iterations: must be >= 0'),
    ('max_points_per_centroid=-5', 'cluster.max_points_per_centroid: must be >= 0'),
    ('pca_dims=-1', 'cluster.pca_dims: must be >= 0'),
    ('batch_size=0', 'cluster.batch_size: must be positive'),
    ('tolerance=1.5', 'cluster.tolerance: must be in [0, 1)'),
    ('seed=-1', 'cluster.seed: must be >= 0'),
    ('init_trials=-1', 'cluster.init_trials: must be >= 0'),
    ('init_dims=-2', 'cluster.init_dims: must be >= 0'),
    ('init_projection=sketch', 'cluster.init_projection: must be one of'),
  ],
)
def test_config_errors_name_the_key(text, fragment):
  with pytest.raises(ConfigError, match=fragment.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')):
    load_config(KMeansConfig, overrides=[text])


def test_data_errors_name_the_key():
  x, _ = _blobs(n=50)
  with pytest.raises(ValueError, match='cluster.num_clusters: 100 clusters need at least 100 points'):
    KMeans(_config(num_clusters=100)).fit(x)
  with pytest.raises(ValueError, match='cluster.pca_dims: 64 exceeds the 32 feature dims'):
    KMeans(_config(pca_dims=64)).fit(x)
  km = KMeans(_config()).fit(x)
  with pytest.raises(ValueError, match='16 dims, the clustering was fitted on 32'):
    km.assign(x[:, :16])


# ----------------------------------------------------------------------------- starts and the Lloyd step


def _start_indices(x, k, seed, **options):
  return kmeans_init.kmeans_plus_plus(x, k, np.random.default_rng(seed), **options)


def test_kmeans_plus_plus_samples_by_squared_distance():
  # Plain k-means++ (1 candidate): the first row is uniform, the second drawn with probability
  # D^2 / sum D^2. Small integers make every distance exact in float32, so the expected
  # frequencies are exact; 1000 seeds give a binomial sigma <= 0.016 per row.
  x = np.array([[0, 0], [1, 0], [3, 0], [6, 0], [10, 0]], np.float32)
  d2 = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
  expected = np.mean(d2 / d2.sum(axis=1, keepdims=True), axis=0)
  counts = np.zeros(len(x))
  for seed in range(1000):
    first, second = _start_indices(x, 2, seed, trials=1)
    assert first != second  # A chosen row has D^2 = 0: never drawn again.
    counts[second] += 1
  frequencies = counts / 1000
  np.testing.assert_allclose(frequencies, expected, atol=5 * np.sqrt(0.25 / 1000))
  assert frequencies[-1] - 0.2 > 0.15  # Expected 0.458, far from uniform (0.2): D^2, not chance.


@pytest.mark.parametrize('options', [{}, {'trials': 1}, {'dims': 8}, {'dims': 8, 'projection': 'random'}])
def test_kmeans_plus_plus_puts_one_centre_in_each_blob(options):
  # Blob centres >= 330 apart (spread 60 in 32 dims), unit noise: a point of a blob that holds a
  # centre has D^2 ~ 64, one of an uncovered blob >= 1e5, so a step misses an uncovered blob with
  # probability < 9 * 64 / 1e5 even with one candidate: every blob covered in nearly every seed
  # (also on an 8-dim PCA or random projection, which keep the blobs apart).
  x, truth = _blobs(n=1000, spread=60.0)
  covered = 0
  for seed in range(20):
    index = _start_indices(x, 10, seed, **options)
    assert len(set(index.tolist())) == 10
    covered += len(np.unique(truth[index])) == 10
  assert covered >= 19, covered


def test_kmeans_plus_plus_samples_by_squared_distance_across_blocks():
  # The two-level draw (a block of INIT_BLOCK rows by its D^2 sum, then a row within it) on rows in three
  # blocks and a padded tail: all rows at the origin except three at D^2 = 1, 9, 36 from it, in blocks 0, 1
  # and the last. When the first (uniform) row is at the origin, the second is one of the three with
  # probability 1/46, 9/46, 36/46; distances of small integers are exact in float32.
  n, block = 2 * kmeans_init.INIT_BLOCK + 52, kmeans_init.INIT_BLOCK
  far = {5: 1.0, block + 476: 3.0, n - 1: 6.0}
  x = np.zeros((n, 2), np.float32)
  for row, value in far.items():
    x[row, 0] = value
  counts, draws = dict.fromkeys(far, 0), 0
  for seed in range(600):
    first, second = _start_indices(x, 2, seed, trials=1)
    if first in far:
      continue
    assert second in far  # D^2 = 0 at every other row: never drawn.
    counts[int(second)] += 1
    draws += 1
  expected = np.array([1.0, 9.0, 36.0]) / 46
  # Binomial sigma <= sqrt(0.25 / draws) ~ 0.02 for ~600 draws; 5 sigma.
  np.testing.assert_allclose(np.array(list(counts.values())) / draws, expected, atol=5 * np.sqrt(0.25 / draws))


def test_principal_directions_span_the_dominant_subspace():
  # Variance 100 along 3 random orthonormal directions, 1 along the other 61: the top 3 principal
  # directions must lie in that subspace. The sample covariance's error is O(1/sqrt(rows)) = O(0.02)
  # relative, far below the 100:1 eigengap, so the captured fraction is ~0.999; 0.99 leaves margin.
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.normal(size=(64, 3)))[0]
  x = rng.normal(size=(4000, 64)) + 10 * rng.normal(size=(4000, 3)) @ basis.T
  directions = kmeans_init._principal_directions(x.astype(np.float32), 3, np.random.default_rng(1)).numpy()
  assert directions.shape == (64, 3)
  np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-4)  # Orthonormal up to float32.
  captured = np.linalg.norm(basis.T @ directions, axis=0)
  assert captured.min() > 0.99, captured


@pytest.mark.parametrize('projection', kmeans_init.PROJECTIONS)
def test_projected_start_is_seeded_distinct_rows(projection):
  # The default start projects features wider than init_dims: still distinct rows of the data, the same
  # for the same seed, others for another.
  x = _mixture(n=2000, dims=96)
  cfg = dict(num_clusters=30, init_dims=8, init_projection=projection)
  starts = {seed: KMeans(_config(seed=seed, **cfg)).initialize(x) for seed in (3, 4)}
  np.testing.assert_array_equal(KMeans(_config(seed=3, **cfg)).initialize(x), starts[3])
  assert not np.array_equal(starts[3], starts[4])
  rows = {row.tobytes() for row in x}
  assert all(c.tobytes() in rows for c in starts[3]) and len({c.tobytes() for c in starts[3]}) == 30


def test_default_projected_start_recovers_blobs():
  # 256-dim blobs: the default start runs on a PCA projection (KMeansConfig.init_dims dims) of at most
  # INIT_POINTS_PER_CENTROID points per centroid, which keeps blobs 20 sigma apart far apart, so every blob
  # gets a centre and Lloyd recovers them exactly.
  assert 0 < KMeansConfig.init_dims < 256
  x, truth = _blobs(dims=256)
  for seed in range(3):
    labels, _ = KMeans(_config(seed=seed)).fit(x, progress=False).assign(x)
    assert adjusted_rand_score(truth, labels) == 1.0


@pytest.mark.parametrize('init', ['kmeans++', 'random'])
def test_starts_are_seeded(init):
  x = _mixture()
  start = {seed: KMeans(_config(num_clusters=20, init=init, seed=seed)).initialize(x) for seed in (3, 4)}
  np.testing.assert_array_equal(KMeans(_config(num_clusters=20, init=init, seed=3)).initialize(x), start[3])
  assert not np.array_equal(start[3], start[4])
  # Every centre is a distinct row of the data.
  rows = {row.tobytes() for row in x}
  assert all(c.tobytes() in rows for c in start[3]) and len({c.tobytes() for c in start[3]}) == 20


def _float32_error_bound(x, centroids):
  """Worst-case error of our float32 ||x||^2 - 2 x.c + ||c||^2 against exact arithmetic, per point and centroid.

  Each term is a D-term float32 dot product, off by at most gamma_D = D u / (1 - D u) times
  the sum of the absolute products (Higham, Accuracy and Stability, eq. 3.5), which
  Cauchy-Schwarz bounds by the norms; the two additions add u per term.
  """
  u = np.finfo(np.float32).eps / 2
  gamma = x.shape[1] * u / (1 - x.shape[1] * u) + 2 * u
  x_norm = np.linalg.norm(x.astype(np.float64), axis=1)[:, None]
  c_norm = np.linalg.norm(centroids.astype(np.float64), axis=1)[None]
  return gamma * (x_norm + c_norm) ** 2


def test_lloyd_steps_equal_a_float64_reference():
  x = _mixture(n=3000, dims=16)
  centroids = KMeans(_config(num_clusters=20)).initialize(x)
  x64 = x.astype(np.float64)
  for _ in range(3):
    model = KMeans(_config(num_clusters=20, iterations=1)).fit(x, progress=False, init_centroids=centroids)
    probe = KMeans(_config(num_clusters=20))
    probe.centroids, probe.input_dims = centroids, x.shape[1]
    labels, sq_dist = probe.assign(x)

    exact = np.sum((x64[:, None] - centroids.astype(np.float64)[None]) ** 2, axis=-1)
    bound = _float32_error_bound(x, centroids)
    best, second = np.sort(exact, axis=1)[:, :2].T
    # A label may differ only where the best and second-best distances are within both errors.
    clear = second - best > 2 * bound.max(axis=1)
    assert clear.mean() > 0.95  # The comparison covers nearly every point.
    np.testing.assert_array_equal(labels[clear], np.argmin(exact, axis=1)[clear])
    # Distances and objective: each within its own point's bound.
    chosen = exact[np.arange(len(x)), labels]
    assert np.all(np.abs(sq_dist - chosen) <= bound[np.arange(len(x)), labels] + 1e-30)
    assert abs(model.objective_history[0] - chosen.mean()) <= bound.max(axis=1).mean()

    # The update: means of the points by our labels (no cluster empties on this data). Float32
    # segment sums of m points are off by at most m u sum|x|, so the mean by m u max|x|, plus the
    # final rounding to float32 (u |mean|).
    counts = np.bincount(labels, minlength=20)
    assert counts.min() > 0 and model.reseeded_history == [0, 0]
    means = np.stack([x64[labels == j].mean(axis=0) for j in range(20)])
    u = np.finfo(np.float32).eps / 2
    tolerance = counts[:, None] * u * np.abs(x).max() + u * np.abs(means)
    assert np.all(np.abs(model.centroids - means) <= tolerance)
    centroids = model.centroids


def test_assignment_blocks_do_not_change_the_result(monkeypatch):
  # Score blocks of 7 rows (a partial last block) against one block for all rows.
  x = _mixture(n=1000)
  km = KMeans(_config(num_clusters=20, iterations=3)).fit(x, progress=False)
  labels, sq_dist = km.assign(x)
  monkeypatch.setattr(kmeans_steps, 'block_rows', lambda k: 7)
  blocked_labels, blocked_dist = km.assign(x)
  # Other GEMM shapes may round differently: distances within the float32 bound, labels where clear.
  bound = _float32_error_bound(x, km.centroids).max(axis=1)
  np.testing.assert_array_less(np.abs(blocked_dist - sq_dist), bound + 1e-30)
  exact = np.sort(np.sum((x[:, None].astype(np.float64) - km.centroids[None]) ** 2, axis=-1), axis=1)
  clear = exact[:, 1] - exact[:, 0] > 2 * bound
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(blocked_labels[clear], labels[clear])
