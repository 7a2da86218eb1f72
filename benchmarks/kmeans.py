"""K-means (`mtssl_tf.transfer.kmeans`, TF) against scikit-learn and faiss on the same data.

One Gaussian mixture is generated in-process; every method clusters all of it (no
subsampling anywhere), starting from the same initial centroids (our k-means++, timed
apart), for the same number of Lloyd iterations. Each method's final centroids are then
scored by one shared evaluation (mean squared distance of every point to its nearest
centroid), so objectives compare like for like. Ours scores its own final centroids
(iterations + 1 assignment passes, as scikit-learn's final E-step; faiss makes
`iterations` passes); a method that converges stops early (iterations column).
Run on demand:

    .venv/bin/python benchmarks/kmeans.py
    .venv/bin/python benchmarks/kmeans.py --num_points=20000 --dims=256 --k=500 --iterations=10

Ends with the paper-scale estimate (Noroozi et al. 2018: 1.3M ImageNet images, 4x4x512 or
5x5x384 features, k=2000) from our measured assignment throughput.
"""

import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.transfer.kmeans import INIT_POINTS_PER_CENTROID, KMeans, KMeansConfig, kmeans_plus_plus  # noqa: E402

flags.DEFINE_integer('num_points', 100_000, 'Points of the generated mixture.')
flags.DEFINE_integer('dims', 1024, 'Feature dimensions.')
flags.DEFINE_integer('k', 2000, 'Clusters.')
flags.DEFINE_integer('iterations', 10, 'Lloyd iterations of every method.')
flags.DEFINE_integer('rounds', 1, 'Runs of each method; the median time is reported.')
flags.DEFINE_integer('batch_size', 65536, 'Our assignment batch.')
flags.DEFINE_integer('seed', 0, 'Data and init seed.')
flags.DEFINE_float(
  'noise',
  1.0,
  'Noise sigma per dim (centres ~N(0, 1)); at 1.0 the blobs overlap, so '
  'Lloyd does not converge within a few iterations and every method runs them all.',
)
flags.DEFINE_list('methods', ['ours', 'sklearn', 'faiss'], 'Methods to run.')
FLAGS = flags.FLAGS

# Paper scale: ImageNet train images, the two feature layouts of the paper, k=2000, 20 iterations
# on faiss's 256-per-centroid sample, then one assignment pass over every image.
PAPER_IMAGES = 1_281_167
PAPER_DIMS = {'4x4x512 (VGG conv)': 8192, '5x5x384 (AlexNet conv5)': 9600}
PAPER_K = 2000
PAPER_ITERATIONS = 20
PCIE_BYTES = 12e9  # PCIe 3 x16, achieved.
GPU_FLOPS = {'V100 (15.7 TFLOP/s fp32, 60% of peak)': 0.6 * 15.7e12, 'A100 (19.5 fp32, 60%)': 0.6 * 19.5e12}


def _mixture(n, dims, k, seed):
  """k Gaussian blobs, centres ~N(0, 1) per dim, noise sigma `--noise` per dim."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((k, dims), dtype=np.float32)
  x = rng.standard_normal((n, dims), dtype=np.float32)
  x *= FLAGS.noise
  x += centres[rng.integers(k, size=n)]
  return x


def _ours(x, init):
  cfg = KMeansConfig(num_clusters=FLAGS.k, iterations=FLAGS.iterations, max_points_per_centroid=0,
                     batch_size=FLAGS.batch_size, seed=FLAGS.seed)  # fmt: skip
  km = KMeans(cfg).fit(x, progress=False, init_centroids=init)
  return km.centroids, len(km.objective_history) - 1, km.objective_history[-1]


def _sklearn(x, init):
  from sklearn.cluster import KMeans as SkKMeans

  km = SkKMeans(FLAGS.k, init=init, n_init=1, max_iter=FLAGS.iterations, tol=0.0, algorithm='lloyd',
                random_state=FLAGS.seed).fit(x)  # fmt: skip
  return km.cluster_centers_.astype(np.float32), km.n_iter_, km.inertia_ / len(x)


def _faiss(x, init):
  import faiss

  # No subsampling: faiss samples only above k * max_points_per_centroid points.
  km = faiss.Kmeans(x.shape[1], FLAGS.k, niter=FLAGS.iterations, seed=FLAGS.seed, verbose=False,
                    max_points_per_centroid=len(x) // FLAGS.k + 1)  # fmt: skip
  km.train(x, init_centroids=init)
  # obj[-1] is the last assignment's, before the last update.
  return km.centroids, FLAGS.iterations, km.obj[-1] / len(x)


def _objective(evaluator, centroids, x):
  evaluator.centroids = np.asarray(centroids, np.float32)
  return float(np.mean(evaluator.assign(x)[1], dtype=np.float64))


def _estimate(rate, init_rate):
  n_fit = min(PAPER_IMAGES, PAPER_K * 256)
  print(f'\npaper-scale estimate: {PAPER_IMAGES} images, k={PAPER_K}, {PAPER_ITERATIONS} iterations on a {n_fit}-point '
        f'sample, then one assignment pass over all images; distance FLOPs = 2 N k D per pass')  # fmt: skip
  for name, dims in PAPER_DIMS.items():
    lloyd = (PAPER_ITERATIONS + 1) * 2.0 * n_fit * PAPER_K * dims
    assign = 2.0 * PAPER_IMAGES * PAPER_K * dims
    init_n = min(n_fit, PAPER_K * INIT_POINTS_PER_CENTROID)
    init_flops = 2.0 * init_n * PAPER_K * dims  # Memory-bound matrix-vector products, at the measured rate.
    print(f'  {name}: {dims} dims, {n_fit * dims * 4 / 1e9:.1f} GB float32 sample, '
          f'{(lloyd + assign) / 1e12:.0f} TFLOP of distances')  # fmt: skip
    print(f'    this CPU at {rate / 1e9:.0f} GFLOP/s: Lloyd {lloyd / rate / 3600:.1f} h + assignment '
          f'{assign / rate / 3600:.1f} h + k-means++ init {init_flops / init_rate / 3600:.1f} h')  # fmt: skip
    # The sample is streamed host -> device every pass (it does not fit a 16 GB GPU).
    copies = ((PAPER_ITERATIONS + 1) * n_fit + PAPER_IMAGES) * dims * 4 / PCIE_BYTES
    for gpu, flops in GPU_FLOPS.items():
      print(f'    {gpu}, on paper: Lloyd {lloyd / flops / 60:.1f} min + assignment {assign / flops / 60:.1f} min '
            f'+ PCIe copies {copies / 60:.1f} min; k-means++ stays on the CPU (numpy)')  # fmt: skip


def main(argv):
  del argv
  print(f'CPU: {hardware.describe_cpu()}')
  logging.set_verbosity(logging.WARNING)
  n, dims, k = FLAGS.num_points, FLAGS.dims, FLAGS.k
  x = _mixture(n, dims, k, FLAGS.seed)
  print(f'{n} points x {dims} dims, k={k}, {FLAGS.iterations} Lloyd iterations, {os.cpu_count()} CPUs, '
        f'{FLAGS.rounds} round(s); all methods cluster all points (no subsampling) from the same init')  # fmt: skip

  start = time.perf_counter()
  init = kmeans_plus_plus(x, k, np.random.default_rng(FLAGS.seed))
  init_seconds = time.perf_counter() - start
  init_rate = 2.0 * n * k * dims / init_seconds
  print(f'k-means++ init (ours, numpy): {init_seconds:.1f} s ({init_rate / 1e9:.1f} GFLOP/s, memory-bound)')

  evaluator = KMeans(KMeansConfig(num_clusters=k, batch_size=FLAGS.batch_size))
  evaluator.input_dims = dims
  _objective(evaluator, init, x[: FLAGS.batch_size])  # Traces the tf.function.
  start = time.perf_counter()
  init_objective = _objective(evaluator, init, x)
  pass_seconds = time.perf_counter() - start
  pass_rate = 2.0 * n * k * dims / pass_seconds
  print(f'one assignment pass (ours, TF): {pass_seconds:.2f} s = {pass_rate / 1e9:.1f} GFLOP/s; '
        f'init objective {init_objective:.6g}')  # fmt: skip

  runners = {'ours': _ours, 'sklearn': _sklearn, 'faiss': _faiss}
  seconds, results = {}, {}
  for method in FLAGS.methods:
    if method == 'faiss':
      try:
        import faiss  # noqa: F401
      except ImportError:
        print('faiss not installed')
        continue
    times = []
    for _ in range(FLAGS.rounds):
      start = time.perf_counter()
      results[method] = runners[method](x, init)
      times.append(time.perf_counter() - start)
    seconds[method] = statistics.median(times)

  print(f'\n{"method":<10}{"seconds":>10}{"iterations":>12}{"s/iter":>9}{"objective":>13}{"own report":>13}'
        f'{"time vs ours":>14}{"obj vs ours":>13}')  # fmt: skip
  base = results.get('ours')
  base_objective = _objective(evaluator, base[0], x) if base else None
  for method, (centroids, iterations, own) in results.items():
    objective = _objective(evaluator, centroids, x)
    time_ratio = f'{seconds[method] / seconds["ours"]:.2f}' if base else '-'
    obj_ratio = f'{objective / base_objective:.5f}' if base else '-'
    print(f'{method:<10}{seconds[method]:>10.1f}{iterations:>12}{seconds[method] / max(iterations, 1):>9.2f}'
          f'{objective:>13.6g}{own:>13.6g}{time_ratio:>14}{obj_ratio:>13}')  # fmt: skip
  print('objective: mean squared distance of all points to the final centroids, one shared evaluation; '
        'own report: what the method itself reports (faiss: before its last update)')  # fmt: skip
  if base:
    # Whole fit (iterations + 1 passes, with the centroid updates): the rate the estimate uses.
    rate = (base[1] + 1) * 2.0 * n * k * dims / seconds['ours']
    print(f'ours, whole fit: {rate / 1e9:.1f} GFLOP/s of distances (assignment pass alone: {pass_rate / 1e9:.1f})')
  _estimate(rate if base else pass_rate, init_rate)


if __name__ == '__main__':
  app.run(main)
