"""K-means (`mtssl_tf.transfer.kmeans`, TF) against faiss-cpu (and scikit-learn), start and Lloyd apart.

One Gaussian mixture is generated in-process; every method clusters all of it (no
subsampling anywhere). Reported:

* Start: our greedy k-means++ (TF, batched candidates) and our random start, against
  the previous numpy k-means++ (one matrix-vector product per centre, the "before"
  figure, `--numpy_baseline`) and faiss's own random start.
* Lloyd: every method from the same initial centroids (our k-means++), the same number
  of iterations; time ratio ours/faiss and each method's final objective.
* Whole fit: ours (start by `--init`, then Lloyd) against faiss's `train` with its own
  random start, ratio ours/faiss; and both starts' final objectives.
* Start quality on a miniature-like case (2000 ReLU features, k=20, as configs/transfer/tiny.yaml):
  final objective after 20 iterations from k-means++ and from random, over seeds.

Objectives are one shared evaluation (mean squared distance of every point to its
nearest final centroid, our assignment), so they compare like for like. Ours makes
iterations + 1 assignment passes (it scores its final centroids), faiss `iterations`.
Run on demand (the issue's size is the default):

    .venv/bin/python benchmarks/kmeans.py
    .venv/bin/python benchmarks/kmeans.py --num_points=20000 --dims=256 --k=500 --iterations=10

Ends with the paper-scale estimate (Noroozi et al. 2018: 1.3M ImageNet images, 4x4x512 or
5x5x384 features, k=2000) from the measured rates.
"""

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.transfer import kmeans  # noqa: E402
from mtssl_tf.transfer.kmeans import INIT_POINTS_PER_CENTROID, KMeans, KMeansConfig, default_trials  # noqa: E402

flags.DEFINE_integer('num_points', 100_000, 'Points of the generated mixture.')
flags.DEFINE_integer('dims', 1024, 'Feature dimensions.')
flags.DEFINE_integer('k', 2000, 'Clusters.')
flags.DEFINE_integer('iterations', 10, 'Lloyd iterations of every method.')
flags.DEFINE_integer('batch_size', 65536, 'Our assignment batch.')
flags.DEFINE_integer('seed', 0, 'Data and init seed.')
flags.DEFINE_float(
  'noise',
  1.0,
  'Noise sigma per dim (centres ~N(0, 1)); at 1.0 the blobs overlap, so '
  'Lloyd does not converge within a few iterations and every method runs them all.',
)
flags.DEFINE_enum(
  'init', KMeansConfig.init, ['kmeans++', 'random'], "Our start in the whole-fit ratio (default: the library's)."
)
flags.DEFINE_integer(
  'init_dims', 0, 'Our k-means++ start on a random projection to this many dims (cluster.init_dims).'
)
flags.DEFINE_list('methods', ['ours', 'faiss'], 'Lloyd methods to run (ours, faiss, sklearn).')
flags.DEFINE_bool('numpy_baseline', True, 'Also time the previous numpy k-means++ start (before).')
flags.DEFINE_bool('whole_fit', True, 'Also run the whole fits (both our starts, faiss with its own).')
flags.DEFINE_bool('breakdown', True, 'Time the parts of one Lloyd pass over one batch.')
flags.DEFINE_integer('quality_seeds', 10, 'Seeds of the miniature-like start-quality comparison (0: skip).')
FLAGS = flags.FLAGS

# Paper scale: ImageNet train images, the two feature layouts of the paper, k=2000, 20 iterations
# on faiss's 256-per-centroid sample, then one assignment pass over every image.
PAPER_IMAGES = 1_281_167
PAPER_DIMS = {'4x4x512 (VGG conv)': 8192, '5x5x384 (AlexNet conv5)': 9600}
PAPER_K = 2000
PAPER_ITERATIONS = 20
PCIE_BYTES = 12e9  # PCIe 3 x16, achieved.
GPU_FLOPS = {'V100 (15.7 TFLOP/s fp32, 60% of peak)': 0.6 * 15.7e12, 'A100 (19.5 fp32, 60%)': 0.6 * 19.5e12}


def _mixture(n, dims, k, seed, noise):
  """k Gaussian blobs, centres ~N(0, 1) per dim, noise sigma `noise` per dim."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((k, dims), dtype=np.float32)
  x = rng.standard_normal((n, dims), dtype=np.float32)
  x *= noise
  x += centres[rng.integers(k, size=n)]
  return x


def _numpy_kmeans_plus_plus(x, k, rng):
  """The previous start (before): plain D^2 sampling in numpy, one matrix-vector product per centre."""
  n = len(x)
  sq = np.einsum('ij,ij->i', x, x)
  chosen = [int(rng.integers(n))]
  d2 = np.full(n, np.inf, np.float32)
  for _ in range(1, k):
    c = chosen[-1]
    d2 = np.minimum(d2, np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0))
    d2[c] = 0.0
    cumulative = np.cumsum(d2, dtype=np.float64)
    chosen.append(min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side='right')), n - 1))
  return x[chosen]


def _config(init='kmeans++', **values):
  values = dict(num_clusters=FLAGS.k, iterations=FLAGS.iterations, max_points_per_centroid=0, init=init,
                batch_size=FLAGS.batch_size, seed=FLAGS.seed, init_dims=FLAGS.init_dims) | values  # fmt: skip
  return KMeans(KMeansConfig(**values))


def _timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def _ours(x, init):
  km = _config().fit(x, progress=False, init_centroids=init)
  return km.centroids, len(km.objective_history) - 1


def _sklearn(x, init):
  from sklearn.cluster import KMeans as SkKMeans

  km = SkKMeans(FLAGS.k, init=init, n_init=1, max_iter=FLAGS.iterations, tol=0.0, algorithm='lloyd',
                random_state=FLAGS.seed).fit(x)  # fmt: skip
  return km.cluster_centers_.astype(np.float32), km.n_iter_


def _faiss(x, init):
  import faiss  # Optional (pip install -e .[faiss]); imported only when run.

  # No subsampling: faiss samples only above k * max_points_per_centroid points.
  km = faiss.Kmeans(x.shape[1], FLAGS.k, niter=FLAGS.iterations, seed=FLAGS.seed, verbose=False,
                    max_points_per_centroid=len(x) // FLAGS.k + 1)  # fmt: skip
  km.train(x, init_centroids=init)  # init None: faiss's own start (k random points).
  return km.centroids, FLAGS.iterations


def _objective(centroids, x):
  evaluator = _config()
  evaluator.centroids, evaluator.input_dims = np.asarray(centroids, np.float32), x.shape[1]
  return float(np.mean(evaluator.assign(x)[1], dtype=np.float64))


def _host_update(sums, counts):
  total = np.zeros(sums.shape, np.float64)
  total += sums
  return (total / counts[:, None]).astype(np.float32)


def _breakdown(x, init):
  """Where one Lloyd pass over one batch spends its time: copies, GEMM, argmin/min, segment sums, host update."""
  batch = np.ascontiguousarray(x[: FLAGS.batch_size])
  centroids = kmeans._Centroids(init)
  rows = centroids.rows

  @tf.function
  def gemm_only(x):  # The blocked GEMM with a trivial reduction, to time the GEMM alone.
    total = tf.constant(0.0)
    for i in tf.range((tf.shape(x)[0] + rows - 1) // rows):
      total += tf.reduce_sum(tf.linalg.matmul(x[i * rows : (i + 1) * rows], centroids.neg2, transpose_b=True)[:, 0])
    return total

  tensor = tf.convert_to_tensor(batch)
  labels, _ = centroids.nearest(tensor)
  sums = tf.math.unsorted_segment_sum(tensor, labels, len(init)).numpy()
  counts = np.maximum(np.bincount(labels.numpy(), minlength=len(init)), 1)
  parts = {
    'host -> TF (convert_to_tensor)': lambda: tf.convert_to_tensor(batch),
    'blocked GEMM alone': lambda: gemm_only(tensor).numpy(),
    'GEMM + argmin + min (assignment)': lambda: centroids.nearest(tensor)[0].numpy(),
    'segment sums (unsorted_segment_sum)': lambda: tf.math.unsorted_segment_sum(tensor, labels, len(init)).numpy(),
    'whole batch step (one call, to host)': lambda: [t.numpy() for t in centroids.assign_and_sum(tensor)],
    'host update (float64 sums, means)': lambda: _host_update(sums, counts),
  }
  print(f'\nbreakdown of one Lloyd pass over one batch ({len(batch)} rows, score blocks of {int(rows)} rows), '
        'best of 3 after one untimed call')  # fmt: skip
  for name, fn in parts.items():
    fn()
    best = min(_timed(fn)[1] for _ in range(3))
    print(f'  {name:<40}{best:>8.3f} s')


def _start_quality(seeds):
  """Final objective from k-means++ and from random starts on a miniature-like case, per seed."""
  ratios = []
  for seed in range(seeds):
    # Like the miniature's features: 2000 non-negative (ReLU) vectors of a 40-class mixture
    # with unequal class sizes, clustered into 20 (configs/transfer/tiny.yaml).
    rng = np.random.default_rng(100 + seed)
    weights = 1.0 / np.arange(1, 41)
    centres = rng.normal(size=(40, 256)) * 1.5
    x = np.maximum(centres[rng.choice(40, 2000, p=weights / weights.sum())] + rng.normal(size=(2000, 256)), 0)
    x = x.astype(np.float32)
    final = {}
    for init in ('kmeans++', 'random'):
      cfg = dict(num_clusters=20, iterations=20, max_points_per_centroid=256, seed=seed, init=init)
      final[init] = KMeans(KMeansConfig(**cfg)).fit(x, progress=False).objective_history[-1]
    ratios.append(final['random'] / final['kmeans++'])
  ratios = np.array(ratios)
  print(f'\nstart quality, miniature-like (2000 x 256 ReLU mixture, k=20, 20 iterations, {seeds} seeds): '
        f'final objective random / k-means++ = mean {ratios.mean():.4f}, min {ratios.min():.4f}, '
        f'max {ratios.max():.4f}; random worse in {int(np.sum(ratios > 1.001))} of {seeds} by > 0.1%')  # fmt: skip


def _estimate(rate, init_rate):
  n_fit = min(PAPER_IMAGES, PAPER_K * 256)
  init_n = min(n_fit, PAPER_K * INIT_POINTS_PER_CENTROID)
  trials = default_trials(PAPER_K)
  print(f'\npaper-scale estimate: {PAPER_IMAGES} images, k={PAPER_K}, {PAPER_ITERATIONS} iterations on a {n_fit}-point '
        f'sample, then one assignment pass over all images; distance FLOPs = 2 N k D per pass; k-means++ on '
        f'{init_n} points with {trials} candidates per step')  # fmt: skip
  for name, dims in PAPER_DIMS.items():
    lloyd = (PAPER_ITERATIONS + 1) * 2.0 * n_fit * PAPER_K * dims
    assign = 2.0 * PAPER_IMAGES * PAPER_K * dims
    init_flops = trials * 2.0 * init_n * PAPER_K * dims
    print(f'  {name}: {dims} dims, {n_fit * dims * 4 / 1e9:.1f} GB float32 sample, '
          f'{(lloyd + assign) / 1e12:.0f} TFLOP of distances')  # fmt: skip
    print(f'    this CPU at {rate / 1e9:.0f} GFLOP/s: Lloyd {lloyd / rate / 3600:.1f} h + assignment '
          f'{assign / rate / 3600:.1f} h + k-means++ start {init_flops / init_rate / 3600:.1f} h '
          f'(at its measured {init_rate / 1e9:.0f} GFLOP/s)')  # fmt: skip
    # The sample is streamed host -> device every pass (it does not fit a 16 GB GPU); the
    # k-means++ subsample (init_n x dims) is copied once and stays on the device.
    copies = ((PAPER_ITERATIONS + 1) * n_fit + PAPER_IMAGES + init_n) * dims * 4 / PCIE_BYTES
    for gpu, flops in GPU_FLOPS.items():
      print(f'    {gpu}, on paper: Lloyd {lloyd / flops / 60:.1f} min + assignment {assign / flops / 60:.1f} min '
            f'+ k-means++ {init_flops / flops / 60:.1f} min + PCIe copies {copies / 60:.1f} min')  # fmt: skip


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  n, dims, k, iters = FLAGS.num_points, FLAGS.dims, FLAGS.k, FLAGS.iterations
  print(f'CPU: {hardware.describe_cpu()}; load average at start {os.getloadavg()[0]:.2f}')
  x = _mixture(n, dims, k, FLAGS.seed, FLAGS.noise)
  print(f'{n} points x {dims} dims, k={k}, {iters} Lloyd iterations; every method clusters all points, one run each')
  pass_flops = 2.0 * n * k * dims

  print('\nstart')
  trials = default_trials(k)
  _config().initialize(x[: 4 * k])  # Traces the TF loop, so the timing below is the start alone.
  init, init_s = _timed(_config().initialize, x)
  init_rate = trials * pass_flops / init_s
  on = f'a {FLAGS.init_dims}-dim projection' if 0 < FLAGS.init_dims < dims else 'the features'
  print(f'  ours k-means++ (TF, greedy, {trials} candidates per step, on {on}): {init_s:.1f} s '
        f'({init_rate / 1e9:.1f} GFLOP/s of {dims}-dim distances)')  # fmt: skip
  random_init, random_s = _timed(_config('random').initialize, x)
  print(f'  ours random: {random_s:.3f} s')
  if FLAGS.numpy_baseline:
    _, numpy_s = _timed(_numpy_kmeans_plus_plus, x, k, np.random.default_rng(FLAGS.seed))
    print(f'  before: numpy k-means++ (plain, 1 candidate): {numpy_s:.1f} s '
          f'({pass_flops / numpy_s / 1e9:.1f} GFLOP/s); ours/before {init_s / numpy_s:.2f}')  # fmt: skip

  _objective(init, x[: FLAGS.batch_size])  # Traces the assignment.
  init_objective, pass_s = _timed(_objective, init, x)
  print(f'  one assignment pass (ours): {pass_s:.2f} s = {pass_flops / pass_s / 1e9:.1f} GFLOP/s; '
        f'k-means++ start objective {init_objective:.6g}, random start {_objective(random_init, x):.6g}')  # fmt: skip

  if FLAGS.breakdown:
    _breakdown(x, init)
  runners = {'ours': _ours, 'sklearn': _sklearn, 'faiss': _faiss}
  seconds, results = {}, {}
  for method in FLAGS.methods:
    if method == 'faiss':
      try:
        import faiss  # noqa: F401
      except ImportError:
        print('faiss not installed (pip install -e .[faiss])')
        continue
    results[method], seconds[method] = _timed(runners[method], x, init)
  print(f'\nLloyd from the same start (our k-means++), {iters} iterations')
  print(f'{"method":<10}{"seconds":>10}{"iterations":>12}{"s/iter":>9}{"GFLOP/s":>9}{"objective":>13}'
        f'{"ours/method":>13}{"obj vs ours":>13}')  # fmt: skip
  objectives = {method: _objective(centroids, x) for method, (centroids, _) in results.items()}
  for method, (_, done) in results.items():
    passes = done + 1 if method == 'ours' else done
    time_ratio = f'{seconds["ours"] / seconds[method]:.2f}' if 'ours' in seconds else '-'
    obj_ratio = f'{objectives[method] / objectives["ours"]:.5f}' if 'ours' in objectives else '-'
    print(f'{method:<10}{seconds[method]:>10.1f}{done:>12}{seconds[method] / max(done, 1):>9.2f}'
          f'{passes * pass_flops / seconds[method] / 1e9:>9.1f}{objectives[method]:>13.6g}{time_ratio:>13}'
          f'{obj_ratio:>13}')  # fmt: skip

  if FLAGS.whole_fit and 'ours' in seconds:
    print('\nwhole fit (start + Lloyd)')
    (random_centroids, _), random_lloyd_s = _timed(_ours, x, random_init)
    whole = {'kmeans++': init_s + seconds['ours'], 'random': random_s + random_lloyd_s}
    finals = {'kmeans++': objectives['ours'], 'random': _objective(random_centroids, x)}
    for start in ('kmeans++', 'random'):
      print(f'  ours, {start} start: {whole[start]:.1f} s, final objective {finals[start]:.6g}')
    print(f'  final objective random / k-means++ = {finals["random"] / finals["kmeans++"]:.5f}')
    print(f'  ours/faiss per Lloyd pass (ours scores its final centroids too): '
          f'{seconds["ours"] / (results["ours"][1] + 1) / (seconds["faiss"] / results["faiss"][1]):.2f}'
          if 'faiss' in seconds else '')  # fmt: skip
    if 'faiss' in seconds:
      (faiss_centroids, _), faiss_s = _timed(_faiss, x, None)
      # Its start is a random sample (no distance work): any gap to its Lloyd above is load noise.
      print(f'  faiss, own random start: {faiss_s:.1f} s (its Lloyd from our start: {seconds["faiss"]:.1f} s), '
            f'final objective {_objective(faiss_centroids, x):.6g}')  # fmt: skip
      print(f'  ours/faiss time: Lloyd {seconds["ours"] / seconds["faiss"]:.2f}; whole fit with our '
            f'{FLAGS.init} start {whole[FLAGS.init] / faiss_s:.2f}')  # fmt: skip
  if FLAGS.quality_seeds:
    _start_quality(FLAGS.quality_seeds)
  if 'ours' in seconds:
    rate = (results['ours'][1] + 1) * pass_flops / seconds['ours']
    _estimate(rate, init_rate)
  print(f'load average at end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
