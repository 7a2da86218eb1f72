"""K-means (`mtssl_tf.transfer.kmeans`, TF) against faiss-cpu: start, Lloyd and the whole fit, with quality.

One Gaussian mixture is generated in-process and every method clusters all of it (no
sampling for Lloyd; our start runs on at most `INIT_POINTS_PER_CENTROID` points per
centroid, as in `fit`). Reported, after the CPU, its flags and the ISA each library uses:

* Start: ours by the library's default (greedy k-means++ on a PCA projection), the exact
  greedy k-means++ on the features (`--exact_reference`) and the random start, in seconds
  and in assignment passes.
* Lloyd from the same start (our default), the same iterations: ours with distance bounds
  (`--bounds`, the library's default) and without (`cluster.bounds=none`, every pass
  scores all n x k distances) against faiss, time ratios and the final objectives (one
  shared evaluation: mean squared distance of every point to its nearest final centroid),
  which must agree within 0.1%; per iteration, the fraction of points the bounds left to
  search and of the n x k distances computed. Ours makes up to iterations + 1 assignment
  passes (it scores its final centroids), faiss `iterations`.
* Whole fit: our `fit` with the library's defaults (start included; with and without
  bounds) against faiss's `train` with its own random start, `--repeats` times
  alternately; the ratios ours/faiss.
* Start quality: final objective after Lloyd from our default start and from a random one,
  relative to the exact greedy start (the previous default: on the features, at most 64
  points per centroid), at this size and on two smaller cases (400
  overlapping blobs, 20000 x 1024, k=400; a miniature-like 2000 x 256 ReLU mixture, k=20).

AVX2-only emulation on an AVX-512 CPU (`--emulate_avx2`, re-executes itself with these set):
`ONEDNN_MAX_CPU_ISA=AVX2` caps TF's oneDNN (its GEMMs), `FAISS_SIMD_LEVEL=AVX2` faiss's
dynamic dispatch (faiss-cpu >= 1.12; the older `FAISS_OPT_LEVEL` picks a module that
these wheels no longer ship, so it changes nothing), `OPENBLAS_CORETYPE=Haswell` the OpenBLAS
that faiss bundles (its sgemm). The header prints what each library reports it uses. This
is an emulation: the caches, memory and clock stay those of the AVX-512 CPU.

    .venv/bin/python benchmarks/kmeans.py                  # the issue's size
    .venv/bin/python benchmarks/kmeans.py --emulate_avx2
    .venv/bin/python benchmarks/kmeans.py --num_points=20000 --k=400
"""

import ctypes
import glob
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.transfer import kmeans, kmeans_bounds, kmeans_init, kmeans_steps  # noqa: E402
from mtssl_tf.transfer.kmeans import INIT_POINTS_PER_CENTROID, KMeans, KMeansConfig, default_trials  # noqa: E402

flags.DEFINE_integer('num_points', 100_000, 'Points of the generated mixture.')
flags.DEFINE_integer('dims', 1024, 'Feature dimensions.')
flags.DEFINE_integer('k', 2000, 'Clusters.')
flags.DEFINE_integer('iterations', 10, 'Lloyd iterations of every method.')
flags.DEFINE_integer('batch_size', 65536, 'Our assignment batch.')
flags.DEFINE_integer('seed', 0, 'Data and init seed.')
flags.DEFINE_float('noise', 1.0, 'Noise sigma per dim (centres ~N(0, 1)); at 1.0 the blobs overlap.')
flags.DEFINE_integer('init_dims', KMeansConfig.init_dims, "Our start's projection dims (cluster.init_dims).")
flags.DEFINE_enum('init_projection', KMeansConfig.init_projection, kmeans_init.PROJECTIONS, 'cluster.init_projection.')
flags.DEFINE_enum('bounds', KMeansConfig.bounds, kmeans_bounds.BOUNDS, 'cluster.bounds of ours.')
flags.DEFINE_bool('unbounded', True, 'Also run ours with cluster.bounds=none (the previous Lloyd).')
flags.DEFINE_integer('repeats', 2, 'Whole fits of ours and faiss, alternately.')
flags.DEFINE_bool('exact_reference', True, 'Also run the exact greedy k-means++ start (slow) and Lloyd from it.')
flags.DEFINE_bool('breakdown', True, 'Time the parts of one Lloyd pass over one batch.')
flags.DEFINE_integer('quality_seeds', 10, 'Seeds of the miniature-like start-quality comparison (0: skip).')
flags.DEFINE_integer('blob_seeds', 2, 'Seeds of the 400-blob start-quality comparison (0: skip).')
flags.DEFINE_bool('emulate_avx2', False, 'Re-run with TF oneDNN, faiss and OpenBLAS capped at AVX2.')
FLAGS = flags.FLAGS

# The exact reference start: the previous default, greedy k-means++ on the features of at most this many
# points per centroid.
EXACT_POINTS_PER_CENTROID = 64
AVX2_ENV = {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'FAISS_SIMD_LEVEL': 'AVX2', 'OPENBLAS_CORETYPE': 'Haswell'}
# Paper scale: ImageNet train images, the two feature layouts of the paper, k=2000, 20 iterations
# on faiss's 256-per-centroid sample, then one assignment pass over every image.
PAPER_IMAGES = 1_281_167
PAPER_DIMS = {'4x4x512 (VGG conv)': 8192, '5x5x384 (AlexNet conv5)': 9600}
PAPER_K = 2000
PAPER_ITERATIONS = 20
PCIE_BYTES = 12e9  # PCIe 3 x16, achieved.
GPU_FLOPS = {'V100 (15.7 TFLOP/s fp32, 60% of peak)': 0.6 * 15.7e12, 'A100 (19.5 fp32, 60%)': 0.6 * 19.5e12}


def _onednn_isa():
  """The ISA oneDNN reports in a fresh process with this environment (its verbose mode, at the first GEMM)."""
  code = 'import tensorflow as tf; a = tf.ones([64, 64]); tf.function(lambda a: tf.linalg.matmul(a, a))(a)'
  env = dict(os.environ, ONEDNN_VERBOSE='1', TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300).stdout
  return next((line.split('isa:', 1)[1] for line in out.splitlines() if 'isa:' in line), 'oneDNN not used')


def _faiss_isa():
  """faiss's dispatched SIMD level and the core its bundled OpenBLAS chose, or why not."""
  try:
    import faiss
  except ImportError:
    return 'faiss not installed (pip install -e .[faiss])'
  level = faiss.SIMDConfig.get_level_name() if hasattr(faiss, 'SIMDConfig') else 'unknown'
  libs = glob.glob(os.path.join(os.path.dirname(faiss.__file__), '..', 'faiss_cpu.libs', 'libopenblas*.so*'))
  core = 'no bundled OpenBLAS found'
  if libs:
    blas = ctypes.CDLL(libs[0])
    blas.openblas_get_config.restype = ctypes.c_char_p
    core = blas.openblas_get_config().decode()
  return f'faiss {faiss.__version__} SIMD level {level}; its BLAS: {core}'


def _mixture(n, dims, k, seed, noise):
  """k Gaussian blobs, centres ~N(0, 1) per dim, noise sigma `noise` per dim."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((k, dims), dtype=np.float32)
  x = rng.standard_normal((n, dims), dtype=np.float32)
  x *= noise
  x += centres[rng.integers(k, size=n)]
  return x


def _miniature(seed):
  """Like the miniature's features: 2000 ReLU vectors of a 40-class mixture with unequal class sizes."""
  rng = np.random.default_rng(100 + seed)
  weights = 1.0 / np.arange(1, 41)
  centres = rng.normal(size=(40, 256)) * 1.5
  x = np.maximum(centres[rng.choice(40, 2000, p=weights / weights.sum())] + rng.normal(size=(2000, 256)), 0)
  return x.astype(np.float32)


def _config(k=None, iterations=None, seed=None, **values):
  values = dict(num_clusters=k or FLAGS.k, iterations=FLAGS.iterations if iterations is None else iterations,
                max_points_per_centroid=0, batch_size=FLAGS.batch_size, seed=FLAGS.seed if seed is None else seed,
                init_dims=FLAGS.init_dims, init_projection=FLAGS.init_projection,
                bounds=FLAGS.bounds) | values  # fmt: skip
  return KMeans(KMeansConfig(**values))


def _exact_start(model, x):
  """The exact reference start of a model configured with init_dims=0."""
  default, kmeans.INIT_POINTS_PER_CENTROID = kmeans.INIT_POINTS_PER_CENTROID, EXACT_POINTS_PER_CENTROID
  try:
    return model.initialize(x)
  finally:
    kmeans.INIT_POINTS_PER_CENTROID = default


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def _faiss(x, init):
  import faiss  # Optional (pip install -e .[faiss]); imported only when run.

  # No subsampling: faiss samples only above k * max_points_per_centroid points.
  km = faiss.Kmeans(x.shape[1], FLAGS.k, niter=FLAGS.iterations, seed=FLAGS.seed, verbose=False,
                    max_points_per_centroid=len(x) // FLAGS.k + 1)  # fmt: skip
  km.train(x, init_centroids=init)  # init None: faiss's own start (k random points).
  return km.centroids


def _objective(centroids, x):
  evaluator = _config()
  evaluator.centroids, evaluator.input_dims = np.asarray(centroids, np.float32), x.shape[1]
  return float(np.mean(evaluator.assign(x)[1], dtype=np.float64))


def _breakdown(x, init):
  """Where one Lloyd pass over one batch spends its time: copies, GEMM, argmin/min, segment sums."""
  batch = np.ascontiguousarray(x[: FLAGS.batch_size])
  centroids = kmeans_steps.Centroids(init)
  rows = centroids.rows

  @tf.function
  def gemm_only(x):  # The blocked GEMM with a trivial reduction, to time the GEMM alone.
    total = tf.constant(0.0)
    for i in tf.range((tf.shape(x)[0] + rows - 1) // rows):
      total += tf.reduce_sum(tf.linalg.matmul(x[i * rows : (i + 1) * rows], centroids.neg2, transpose_b=True)[:, 0])
    return total

  tensor = tf.convert_to_tensor(batch)
  labels, _ = centroids.nearest(tensor)
  parts = {
    'host -> TF (convert_to_tensor)': lambda: tf.convert_to_tensor(batch),
    'blocked GEMM alone': lambda: gemm_only(tensor).numpy(),
    'GEMM + argmin + min (assignment)': lambda: centroids.nearest(tensor)[0].numpy(),
    'segment sums (unsorted_segment_sum)': lambda: tf.math.unsorted_segment_sum(tensor, labels, len(init)).numpy(),
    'whole batch step (one call, to host)': lambda: [t.numpy() for t in centroids.assign_and_sum(tensor)],
  }
  flops = 2.0 * len(batch) * len(init) * batch.shape[1]
  print(f'\nbreakdown of one Lloyd pass over one batch ({len(batch)} rows, score blocks of {int(rows)} rows), '
        'best of 2 after one untimed call')  # fmt: skip
  for name, fn in parts.items():
    fn()
    best = min(_timed(fn)[1] for _ in range(2))
    rate = f'  ({flops / best / 1e9:.0f} GFLOP/s of distances)' if 'GEMM' in name else ''
    print(f'  {name:<40}{best:>8.3f} s{rate}')


def _quality(name, datasets):
  """Final objective from our default start and from a random one, over that from the exact greedy start."""
  ratios = {'default': [], 'random': []}
  for x, k, iterations, seed in datasets:
    mpc = 256 if len(x) < 10_000 else 0  # The miniature fits as the library does; the blobs on all points.
    exact = _config(k, iterations, seed, max_points_per_centroid=mpc, init_dims=0)
    final = {'exact': exact.fit(x, progress=False, init_centroids=_exact_start(exact, x)).objective_history[-1]}
    for start, values in (('default', {}), ('random', {'init': 'random'})):
      cfg = _config(k, iterations, seed, max_points_per_centroid=mpc, **values)
      final[start] = cfg.fit(x, progress=False).objective_history[-1]
    for start in ratios:
      ratios[start].append(final[start] / final['exact'])
  print(f'\nstart quality, {name}, {len(datasets)} seeds: final objective over the exact greedy start')
  for start, values in ratios.items():
    values = np.array(values)
    print(f'  {start:<8} mean {values.mean():.4f}, min {values.min():.4f}, max {values.max():.4f}')


def _estimate(rate, start_s, n_start):
  n_fit = min(PAPER_IMAGES, PAPER_K * 256)
  init_n = min(n_fit, PAPER_K * INIT_POINTS_PER_CENTROID)
  # The projected start's steps do not grow with D (only its one projection GEMM does): scale by points only.
  start = start_s * init_n / n_start * PAPER_K / FLAGS.k
  print(f'\npaper-scale estimate: {PAPER_IMAGES} images, k={PAPER_K}, {PAPER_ITERATIONS} iterations on a {n_fit}-point '
        f'sample, then one assignment pass over all images; distance FLOPs = 2 N k D per pass; the start on '
        f'{init_n} points, ~{start:.0f} s on this CPU (scaled from the measured start)')  # fmt: skip
  for name, dims in PAPER_DIMS.items():
    lloyd = (PAPER_ITERATIONS + 1) * 2.0 * n_fit * PAPER_K * dims
    assign = 2.0 * PAPER_IMAGES * PAPER_K * dims
    print(f'  {name}: {dims} dims, {n_fit * dims * 4 / 1e9:.1f} GB float32 sample, '
          f'{(lloyd + assign) / 1e12:.0f} TFLOP of distances; this CPU at {rate / 1e9:.0f} GFLOP/s: '
          f'Lloyd {lloyd / rate / 3600:.1f} h + assignment {assign / rate / 3600:.1f} h')  # fmt: skip
    # The sample is streamed host -> device every pass (it does not fit a 16 GB GPU).
    copies = ((PAPER_ITERATIONS + 1) * n_fit + PAPER_IMAGES + init_n) * dims * 4 / PCIE_BYTES
    for gpu, flops in GPU_FLOPS.items():
      print(f'    {gpu}, on paper: Lloyd {lloyd / flops / 60:.1f} min + assignment {assign / flops / 60:.1f} min '
            f'+ PCIe copies {copies / 60:.1f} min')  # fmt: skip


def main(argv):
  if FLAGS.emulate_avx2 and any(os.environ.get(key) != value for key, value in AVX2_ENV.items()):
    # The libraries read these when loaded: set them, then start again.
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **AVX2_ENV))  # With the flags.
  logging.set_verbosity(logging.WARNING)
  n, dims, k, iters = FLAGS.num_points, FLAGS.dims, FLAGS.k, FLAGS.iterations
  print(f'CPU: {hardware.describe_cpu()}; load average at start {os.getloadavg()[0]:.2f}')
  capped = {key: os.environ[key] for key in AVX2_ENV if key in os.environ}
  print(f'ISA caps set: {capped or "none (native)"}' + ('; an AVX2-only EMULATION on this CPU (same caches, memory '
        'and clock), not an AVX2-only machine' if capped else ''))  # fmt: skip
  print(f'TF oneDNN ISA: {_onednn_isa()}\n{_faiss_isa()}')
  x = _mixture(n, dims, k, FLAGS.seed, FLAGS.noise)
  pass_flops = 2.0 * n * k * dims
  projection = (
    f'{FLAGS.init_projection} projection to {FLAGS.init_dims} dims' if 0 < FLAGS.init_dims < dims else 'the features'
  )
  print(f'{n} points x {dims} dims, k={k}, {iters} Lloyd iterations; our start: greedy k-means++ '
        f'({default_trials(k)} candidates per step) on {projection}, '
        f'on at most {INIT_POINTS_PER_CENTROID * k} points')  # fmt: skip

  _config().initialize(x[: 4 * k])  # Traces the TF loop, so the timings below are the starts alone.
  init, init_s = _timed(_config().initialize, x)
  _objective(init, x[: FLAGS.batch_size])  # Traces the assignment.
  logging.set_verbosity(logging.ERROR)  # Its few points per centroid would warn.
  _config(iterations=2).fit(x[: 4 * k], progress=False, init_centroids=init)  # Traces the bounded passes.
  logging.set_verbosity(logging.WARNING)
  init_objective, pass_s = _timed(_objective, init, x)
  print(f'\none assignment pass (ours): {pass_s:.2f} s = {pass_flops / pass_s / 1e9:.1f} GFLOP/s')
  print('start')
  print(f'  ours, default: {init_s:.2f} s = {init_s / pass_s:.2f} passes, start objective {init_objective:.6g}')
  random_init, random_s = _timed(_config(init='random').initialize, x)
  print(f'  ours, random: {random_s:.3f} s, start objective {_objective(random_init, x):.6g}')
  if FLAGS.exact_reference:
    exact_init, exact_s = _timed(_exact_start, _config(init_dims=0), x)
    print(f'  ours, exact greedy k-means++ on the features (<= {EXACT_POINTS_PER_CENTROID} points per centroid, '
          f'the previous default): {exact_s:.1f} s = {exact_s / pass_s:.1f} passes, '
          f'start objective {_objective(exact_init, x):.6g}')  # fmt: skip

  if FLAGS.breakdown:
    _breakdown(x, init)
  try:
    import faiss  # noqa: F401
  except ImportError:
    faiss = None
    print('faiss not installed (pip install -e .[faiss]): ours only')
  runs = {'ours': FLAGS.bounds} | ({'ours, bounds=none': 'none'} if FLAGS.unbounded and FLAGS.bounds != 'none' else {})
  print(f'\nLloyd from the same start (our default), {iters} iterations, ours with bounds={FLAGS.bounds}'
        f'{" and none" if len(runs) > 1 else ""}')  # fmt: skip
  models, seconds, finals = {}, {}, {}
  for name, bounds in runs.items():
    models[name], seconds[name] = _timed(_config(bounds=bounds).fit, x, progress=False, init_centroids=init)
    finals[name] = _objective(models[name].centroids, x)
    passes = len(models[name].objective_history)  # Fewer than iterations + 1 where no label changed.
    print(f'  {name}: {seconds[name]:.1f} s, {passes} passes ({seconds[name] / passes:.2f} s per pass), '
          f'final objective {finals[name]:.6g}')  # fmt: skip
    print(f'    per pass, points searched: {" ".join(f"{v:.3f}" for v in models[name].active_history)}; '
          f'distances computed: {" ".join(f"{v:.3f}" for v in models[name].scored_history)}; '
          f'in all {sum(models[name].scored_history):.2f} passes of distances')  # fmt: skip
  if faiss is not None:
    faiss_centroids, faiss_s = _timed(_faiss, x, init)
    finals['faiss'] = _objective(faiss_centroids, x)
    print(f'  faiss: {faiss_s:.1f} s, {iters} passes ({faiss_s / iters:.2f} s per pass), '
          f'final objective {finals["faiss"]:.6g}')  # fmt: skip
    for name in runs:
      print(f'  {name}/faiss: time {seconds[name] / faiss_s:.2f}, objective {finals[name] / finals["faiss"]:.6f} '
            f'({"within" if abs(finals[name] / finals["faiss"] - 1) <= 1e-3 else "NOT within"} 0.1%)')  # fmt: skip

  print(f'\nwhole fit: our fit with the defaults (start included) and faiss train (own random start), '
        f'{FLAGS.repeats} times alternately')  # fmt: skip
  whole, fitted = {name: [] for name in runs} | {'faiss': []}, {}
  for _ in range(FLAGS.repeats):
    for name, bounds in runs.items():
      fitted[name], seconds = _timed(_config(bounds=bounds).fit, x, progress=False)
      whole[name].append(seconds)
    if faiss is not None:
      fitted['faiss'], seconds = _timed(_faiss, x, None)
      whole['faiss'].append(seconds)
  for name, values in whole.items():
    if values:
      centroids = fitted[name] if name == 'faiss' else fitted[name].centroids
      print(f'  {name}: {", ".join(f"{s:.1f}" for s in values)} s, final objective {_objective(centroids, x):.6g}')
  for name in runs if faiss is not None else ():
    pairs = [f'{a / b:.2f}' for a, b in zip(whole[name], whole['faiss'])]
    print(f'  {name}/faiss per pair: {", ".join(pairs)}; of the sums {sum(whole[name]) / sum(whole["faiss"]):.2f}; '
          f'of the fastest of each {min(whole[name]) / min(whole["faiss"]):.2f}')  # fmt: skip
  random_model = _config(init='random').fit(x, progress=False, init_centroids=random_init)
  print(f'  ours from the random start: final objective {_objective(random_model.centroids, x):.6g}')
  if FLAGS.exact_reference:
    exact_model = _config().fit(x, progress=False, init_centroids=exact_init)
    exact_final = _objective(exact_model.centroids, x)
    random_final = _objective(random_model.centroids, x)
    print(f'  ours from the exact greedy start: final objective {exact_final:.6g}; default start over exact '
          f'{finals["ours"] / exact_final:.4f}, random over exact {random_final / exact_final:.4f}')  # fmt: skip

  if FLAGS.blob_seeds:
    _quality('400 overlapping blobs (20000 x 1024, k=400, 10 iterations)',
             [(_mixture(20000, 1024, 400, seed, 1.0), 400, 10, seed) for seed in range(FLAGS.blob_seeds)])  # fmt: skip
  if FLAGS.quality_seeds:
    _quality('miniature-like (2000 x 256 ReLU mixture, k=20, 20 iterations, fit as the library does)',
             [(_miniature(seed), 20, 20, seed) for seed in range(FLAGS.quality_seeds)])  # fmt: skip
  # The GEMM rate of a plain pass (the bounds' savings depend on the data; the estimate assumes none).
  _estimate(pass_flops / pass_s, init_s, min(n, INIT_POINTS_PER_CENTROID * k))
  print(f'load average at end {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
