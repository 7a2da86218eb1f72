"""Weighted kNN classification of frozen features, and the kNN monitor of pre-training.

The classifier is the one DINO (`eval_knn.py`, Caron et al. 2021, after Wu et al.
2018) and solo-learn (`solo/utils/knn.py`) run on a labelled split: features are
L2-normalised, a query's similarity to a bank image is their cosine, its k most
similar bank images vote for their labels with weight exp(similarity / T), T = 0.07
(both projects' default), and classes are ranked by summed votes. Top-1 / top-5 ask
whether the label is the first / among the first min(5, classes) of that ranking.
Deterministic ties: among neighbours of equal similarity the lower bank index comes
first, among classes of equal votes the lower class index (both what
`tf.math.top_k` does). Queries are processed in chunks of `chunk_size`, so memory is
O(chunk_size x bank) whatever the number of queries; k is capped at the bank size.

The monitor (`KnnMonitor`, on by default) gives pre-training a signal of representation
quality at every `every_ticks`-th compute tick. It embeds a fixed, bounded subsample of a
labelled source (`bank_size` training and `query_size` validation images, decoded once
and kept in memory) with one compiled function of one batch shape (`FeatureExtractor`,
traced once per trunk), and writes `knn/top1_k<k>` and `knn/top5_k<k>` (TensorBoard, at
the trainer's step) and one JSON line per evaluation to `ticks.jsonl`. The distributed
trainer hands it each tick checkpoint (`on_tick`); a thread of the coordinator reads the
checkpoint's trunk into a float32 trunk of its own (created by restoring, so no
initializer draws a random number) and evaluates it while the coordinator keeps
scheduling closures. The local trainer calls `after_step`, which reads its live trunk in
inference mode. It never writes the training model, its optimizer or any random state
(its data order uses fixed op seeds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.data import decode
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.trunk.inputs import PREPROCESSING, preprocess

# DINO eval_knn.py (--temperature 0.07) and solo-learn's WeightedKNNClassifier (T = 0.07).
TEMPERATURE = 0.07
# solo-learn's default k is 20; DINO reports k = 20 and 200 (--nb_knn 10 20 100 200).
K_VALUES = (20, 200)
TOP_K = 5
INPUT_MODES = PREPROCESSING


# ----------------------------------------------------------------------------- the classifier


def l2_normalize(features) -> tf.Tensor:
  """Rows scaled to unit length (a zero row stays zero), float32."""
  return tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)


def knn_votes(
  bank: tf.Tensor,
  bank_labels: tf.Tensor,
  queries: tf.Tensor,
  num_classes: int,
  k_values: Sequence[int] = K_VALUES,
  temperature: float = TEMPERATURE,
  chunk_size: int = 256,
) -> Dict[int, tf.Tensor]:
  """Summed neighbour weights per class for every query and k (see the module docstring).

  Args:
    bank: [N, D] bank features (normalised here).
    bank_labels: [N] int labels in [0, num_classes).
    queries: [Q, D] query features (normalised here).
    num_classes: classes.
    k_values: neighbour counts; each is capped at N.
    temperature: T in exp(similarity / T).
    chunk_size: queries per similarity block.

  Returns:
    {k: float32 [Q, num_classes] votes}, keyed by the requested (uncapped) k.

  Raises:
    ValueError: an empty bank, no k, a non-positive k or temperature.
  """
  bank = l2_normalize(bank)
  queries = l2_normalize(queries)
  bank_labels = tf.cast(bank_labels, tf.int32)
  size = int(bank.shape[0])
  if size == 0:
    raise ValueError('kNN: the feature bank is empty')
  if not k_values or min(k_values) < 1 or temperature <= 0 or chunk_size < 1:
    raise ValueError(f'kNN: need k >= 1, temperature > 0 and chunk_size >= 1, got {list(k_values)}, {temperature}')
  k_max = min(max(k_values), size)
  votes = {k: [] for k in k_values}
  for start in range(0, int(queries.shape[0]), chunk_size):
    similarity = tf.matmul(queries[start : start + chunk_size], bank, transpose_b=True)
    # top_k is stable: equal similarities keep the lower bank index first.
    nearest = tf.math.top_k(similarity, k=k_max)
    weights = tf.exp(nearest.values / temperature)
    labels = tf.one_hot(tf.gather(bank_labels, nearest.indices), num_classes, dtype=tf.float32)
    for k in k_values:
      n = min(k, size)
      votes[k].append(tf.einsum('qk,qkc->qc', weights[:, :n], labels[:, :n]))
  return {k: tf.concat(v, 0) if v else tf.zeros([0, num_classes]) for k, v in votes.items()}


def ranked_classes(votes: tf.Tensor, n: int) -> tf.Tensor:
  """int32 [Q, min(n, classes)]: the classes with most votes first (ties: lower class first)."""
  return tf.math.top_k(votes, k=min(n, int(votes.shape[-1]))).indices


def knn_accuracy(
  bank: tf.Tensor,
  bank_labels: tf.Tensor,
  queries: tf.Tensor,
  query_labels: tf.Tensor,
  num_classes: int,
  k_values: Sequence[int] = K_VALUES,
  temperature: float = TEMPERATURE,
  chunk_size: int = 256,
) -> Dict[str, float]:
  """{'top1_k<k>', 'top5_k<k>'}: fractions of queries whose label is ranked first / in the top 5."""
  labels = tf.cast(query_labels, tf.int32)[:, None]
  scores = {}
  for k, votes in knn_votes(bank, bank_labels, queries, num_classes, k_values, temperature, chunk_size).items():
    ranking = ranked_classes(votes, TOP_K)
    hits = tf.cast(tf.equal(ranking, labels), tf.float32)
    scores[f'top1_k{k}'] = float(tf.reduce_mean(hits[:, 0]))
    scores[f'top5_k{k}'] = float(tf.reduce_mean(tf.reduce_max(hits, axis=1)))
  return scores


# ----------------------------------------------------------------------------- features


def trunk_input(images: tf.Tensor, mode: str = 'rgb') -> tf.Tensor:
  """uint8 images -> the trunk's input (`trunk.inputs.preprocess`), checking the mode.

  Raises:
    ValueError: an unknown mode.
  """
  if mode not in INPUT_MODES:
    raise ValueError(f'trunk input mode must be one of {INPUT_MODES}, got {mode!r}')
  return preprocess(images, mode)


def adaptive_avg_pool(x: tf.Tensor, grid: int) -> tf.Tensor:
  """[B, H, W, C] -> [B, grid * grid * C]: the mean over each cell of a grid x grid tiling.

  Cell i spans rows floor(i H / grid) .. ceil((i + 1) H / grid) - 1 (PyTorch's
  AdaptiveAvgPool2d); grid 1 is global average pooling.
  """
  x = tf.cast(x, tf.float32)
  height, width = int(x.shape[1]), int(x.shape[2])
  cells = []
  for i in range(grid):
    rows = slice((i * height) // grid, -((-(i + 1) * height) // grid))
    for j in range(grid):
      cols = slice((j * width) // grid, -((-(j + 1) * width) // grid))
      cells.append(tf.reduce_mean(x[:, rows, cols, :], axis=[1, 2]))
  return tf.concat(cells, axis=-1)


class FeatureExtractor:
  """Pooled endpoint features of uint8 images through one compiled function of one batch shape.

  The function is traced once for its trunk: every call feeds it `[batch_size, size, size, 3]`
  uint8 batches (the last one zero-padded; inference-mode batch norm treats rows apart, so
  padding changes no other row), and a restored checkpoint overwrites the same variables.
  `traces` counts its traces (a Python side effect runs only while tracing).
  """

  def __init__(self, trunk: tf.keras.Model, cfg: KnnMonitorConfig):
    """`trunk`'s features as `cfg` sets them (endpoint, pool_grid, batch_size, image_size, preprocessing)."""
    self.trunk = trunk
    self.batch_size = cfg.batch_size
    self.traces = 0
    endpoint, grid, mode = cfg.endpoint, cfg.pool_grid, cfg.preprocessing

    @tf.function(input_signature=[tf.TensorSpec([cfg.batch_size, cfg.image_size, cfg.image_size, 3], tf.uint8)])
    def forward(batch):
      self.traces += 1
      endpoints = trunk(trunk_input(batch, mode), training=False)
      if endpoint not in endpoints:
        raise ValueError(f'knn.endpoint {endpoint!r}: the trunk has {sorted(endpoints)}')
      return adaptive_avg_pool(endpoints[endpoint], grid)

    self.forward = forward

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, grid * grid * C] features of uint8 [N, size, size, 3] images."""
    count, size = len(images), self.batch_size
    if count % size:
      images = np.concatenate([images, np.zeros((size - count % size, *images.shape[1:]), images.dtype)])
    out = [self.forward(images[i : i + size]).numpy() for i in range(0, len(images), size)]
    return np.concatenate(out)[:count]


def square_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, 3] -> its central square, resized to size x size (antialiased bilinear), uint8."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  crop = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
  resized = tf.image.resize(crop, [size, size], method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def labelled_images(
  spec: str, count: int, image_size: int, seed: int = 0, data_dir: str = '', label_offset: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
  """A seeded subsample of at most `count` labelled images of a source, squared to `image_size`.

  Files are read in a seeded order and images pass a seeded shuffle buffer of `count`,
  so at most about 2 x `count` records are read (a bounded cost on ImageNet).

  Returns:
    (uint8 [n, image_size, image_size, 3], int64 [n]) with n <= count.

  Raises:
    ValueError: the source holds no labelled image.
  """
  options = ReadOptions(shuffle_files=True, seed=seed, data_dir=data_dir or None, label_offset=label_offset)

  def process(record):
    return {'image': square_image(decode.decode_rgb(record['encoded']), image_size), 'label': record['label']}

  # Only the images kept are decoded (the shuffle buffer holds encoded records).
  ds = image_dataset(spec, options, lambda r: {'encoded': r['encoded'], 'label': r['label']})
  ds = ds.filter(lambda x: x['label'] >= 0).shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=False)
  ds = ds.take(count).map(process)
  images, labels = [], []
  for batch in ds.batch(256):
    images.append(batch['image'].numpy())
    labels.append(batch['label'].numpy())
  if not images:
    raise ValueError(f'kNN: {spec!r} holds no labelled images')
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def restore_trunk(trunk_config, checkpoint: str, trunk: Optional[tf.keras.Model] = None) -> tf.keras.Model:
  """A float32 trunk holding the `model/trunk` weights of a pre-training checkpoint.

  A new trunk is created after the checkpoint is read, so its variables take their
  values from the file (deferred restoration) and no initializer runs: building it
  consumes no random numbers. An existing `trunk` is overwritten in place.

  Raises:
    ValueError: the checkpoint holds no trunk of this shape.
  """
  from mtssl_tf.trunk import registry

  fresh = trunk is None
  if fresh:
    trunk = registry.build_trunk(trunk_config, 'float32')
  status = tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).read(checkpoint)
  status.expect_partial()
  if fresh:
    size = registry.min_input_size(trunk_config)  # 32 for ResNet-v2; AlexNet / VGG16 need their layers' minimum.
    trunk(tf.zeros([1, size, size, 3]), training=False)
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f'{checkpoint}: no trunk of this shape ({str(e).splitlines()[0][:200]})') from None
  return trunk


# ----------------------------------------------------------------------------- the monitor


@dataclasses.dataclass
class KnnMonitorConfig(Config):
  """The kNN monitor of pre-training (module docstring). On by default (issue 17).

  The defaults' cost is measured by benchmarks/knn_overhead.py (BUILD.md's kNN section).

  Attributes:
    enabled: run it at compute ticks.
    every_ticks: run at every n-th tick (1: every tick).
    bank_source: labelled training images (image source spec); '' = the synthetic
      world's 'images_train'.
    query_source: labelled held-out images; '' = the world's 'images_validation'.
    data_dir: tensorflow-datasets data directory for `tfds:` sources.
    label_offset: subtracted from labels (1 for Model Garden ImageNet).
    bank_size: bank images (a seeded subsample; bounds the cost).
    query_size: query images (likewise).
    image_size: images are centre-squared and resized to this side.
    batch_size: images per forward pass (the compiled function's one batch shape; 125
      divides the default 500 + 250 images, so no batch is padded).
    endpoint: trunk endpoint ('final': block 3 after its closing BN-ReLU).
    pool_grid: the endpoint is average-pooled to pool_grid x pool_grid (1: global,
      DINO / solo-learn's pooled backbone output).
    k: neighbour counts (issue 17: 20 and 200, DINO's).
    temperature: T of the vote weights (DINO / solo-learn: 0.07).
    preprocessing: the trunk's input, 'rgb' (evaluation's default, Doersch §3.3) or 'harmonized'.
    seed: subsample seed.
    background: the distributed trainer's coordinator evaluates in a thread of its own
      while it keeps scheduling closures (false: the coordinator waits for each evaluation).
  """

  enabled: bool = True
  every_ticks: int = 1
  bank_source: str = ''
  query_source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  bank_size: int = 500
  query_size: int = 250
  image_size: int = 64
  batch_size: int = 125
  endpoint: str = 'final'
  pool_grid: int = 1
  k: Tuple[int, ...] = K_VALUES
  temperature: float = TEMPERATURE
  preprocessing: str = 'rgb'
  seed: int = 0
  background: bool = True

  def validate(self) -> None:
    for key in ('every_ticks', 'bank_size', 'query_size', 'batch_size', 'pool_grid'):
      if getattr(self, key) < 1:
        raise ConfigError(f'knn.{key}: must be positive, got {getattr(self, key)}')
    if self.image_size < 32:
      raise ConfigError(f'knn.image_size: must be at least 32 pixels, got {self.image_size}')
    if not self.k or min(self.k) < 1 or len(set(self.k)) != len(self.k):
      raise ConfigError(f'knn.k: need distinct positive neighbour counts, got {list(self.k)}')
    if self.temperature <= 0:
      raise ConfigError(f'knn.temperature: must be positive, got {self.temperature}')
    if self.preprocessing not in INPUT_MODES:
      raise ConfigError(f'knn.preprocessing: must be one of {INPUT_MODES}, got {self.preprocessing!r}')
    if self.label_offset < 0:
      raise ConfigError(f'knn.label_offset: must be >= 0, got {self.label_offset}')


class KnnMonitor:
  """Runs the weighted kNN on tick checkpoints or a live trunk and writes `knn/*` summaries (module docstring)."""

  def __init__(
    self, cfg: KnnMonitorConfig, trunk_config, out_dir: str, bank_source: str, query_source: str,
    background: bool = False, cost_tick: float = 0.0,
  ):  # fmt: skip
    """Creates the monitor; data, trunk and (in the background) its thread start at the first due tick or `start()`.

    Args:
      cfg: the monitor config.
      trunk_config: the run's `TrunkConfig`.
      out_dir: summaries and ticks.jsonl go here (`<model_dir>/knn`).
      bank_source: resolved bank source spec.
      query_source: resolved query source spec.
      background: `on_tick` hands the checkpoint to the monitor's thread and returns at once.
      cost_tick: the compute tick of `after_step` (the local trainer's; `train.cost_tick`).
    """
    self.cfg = cfg
    self.trunk_config = trunk_config
    self.out_dir = out_dir
    self.sources = (bank_source, query_source)
    self.cost_tick = cost_tick
    self.trunk = None  # The checkpoints' trunk, created at the first `evaluate`.
    self.extractors: Dict[int, FeatureExtractor] = {}  # id(trunk) -> its compiled features.
    self.data = None
    self.writer = tf.summary.create_file_writer(out_dir)
    self.superseded = 0  # Due ticks not evaluated: a later one arrived while an evaluation ran.
    self._cost, self._pending, self._error, self._closed = 0.0, None, None, False
    self._wake = threading.Condition()
    self.background, self._thread = background, None

  @property
  def traces(self) -> int:
    """Traces of the feature functions so far (one per trunk when nothing retraces)."""
    return sum(e.traces for e in self.extractors.values())

  def due(self, tick: int) -> bool:
    """Whether tick number `tick` (1-based) is one the monitor runs at."""
    return self.cfg.enabled and tick % self.cfg.every_ticks == 0

  def on_tick(self, checkpoint: str, step: int, tick: int, cost: float) -> Optional[Dict[str, float]]:
    """The distributed trainer's hook after a tick checkpoint: evaluates it if `tick` is due.

    In the background the checkpoint is queued (replacing a queued one that has not
    started: at most one evaluation runs and one waits, so the cost stays bounded and
    the newest tick is always evaluated) and None is returned; else the scores.

    Raises:
      Exception: the background thread's error, if an earlier evaluation failed.
    """
    self._raise_error()
    if not self.due(tick):
      return None
    job = (checkpoint, step, {'tick': tick, 'cost': cost})
    if not self.background:
      return self.evaluate(*job)
    self.start()
    with self._wake:
      if self._pending is not None:
        self.superseded += 1
        logging.info('knn: tick %d superseded by tick %d (an evaluation is running)', self._pending[2]['tick'], tick)
      self._pending = job
      self._wake.notify_all()
    return None

  def after_step(self, model, task: str, step: int) -> Optional[Dict[str, float]]:
    """The local trainer's hook after a step of `task`: counts its cost, evaluates the live trunk at due ticks.

    Args:
      model: the `MultiTaskModel` (its trunk is read in inference mode, never written).
      task: the task whose step just ran (its `cost_per_step` is counted).
      step: the trainer's total steps (the summaries' step).
    """
    before = self._cost
    self._cost += model.tasks[task].config.cost_per_step
    every = self.cfg.every_ticks * self.cost_tick
    if not self.cfg.enabled or self.cost_tick <= 0 or self._cost // every == before // every:
      return None
    return self._score(model.trunk, step, {'tick': int(self._cost // self.cost_tick), 'cost': self._cost})

  def close(self) -> None:
    """Waits for the queued and running evaluations (the run's last tick included); re-raises their error."""
    if self._thread is not None:
      with self._wake:
        self._closed = True
        self._wake.notify_all()
      self._thread.join()
    self._raise_error()

  def _raise_error(self) -> None:
    error, self._error = self._error, None
    if error is not None:
      raise error

  def start(self) -> None:
    """Starts the background thread (once), which decodes the images before it waits for a tick."""
    if self.background and self._thread is None:
      self._thread = threading.Thread(target=self._serve, name='knn-monitor', daemon=True)
      self._thread.start()

  def _serve(self) -> None:
    try:
      self._load()
      while True:
        with self._wake:
          self._wake.wait_for(lambda: self._pending is not None or self._closed)
          job, self._pending = self._pending, None
        if job is None:
          return
        self.evaluate(*job)
    except Exception as e:  # noqa: BLE001 -- handed to the trainer's thread at its next hook.
      self._error = e

  def _load(self):
    if self.data is None:
      c = self.cfg
      bank = labelled_images(self.sources[0], c.bank_size, c.image_size, c.seed, c.data_dir, c.label_offset)
      queries = labelled_images(self.sources[1], c.query_size, c.image_size, c.seed + 1, c.data_dir, c.label_offset)
      num_classes = int(max(bank[1].max(), queries[1].max())) + 1
      # Bank and queries in one array: one pass of fixed-shape batches embeds both.
      self.data = np.concatenate([bank[0], queries[0]]), bank[1], queries[1], num_classes
    return self.data

  def evaluate(self, checkpoint: str, step: int, extra: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Scores the trunk of `checkpoint`, writes the summaries at `step`, returns the scores.

    Args:
      checkpoint: a pre-training checkpoint prefix (its `model/trunk` is read).
      step: the summaries' step (the trainer's total worker steps).
      extra: further values recorded in ticks.jsonl (e.g. tick, cost).
    """
    start = time.perf_counter(), time.process_time()
    self.trunk = restore_trunk(self.trunk_config, checkpoint, self.trunk)
    return self._score(self.trunk, step, dict(extra or {}, checkpoint=checkpoint), start)

  def _score(self, trunk, step: int, extra: Dict, start: Optional[Tuple[float, float]] = None) -> Dict[str, float]:
    start = (time.perf_counter(), time.process_time()) if start is None else start
    images, bank_labels, query_labels, num_classes = self._load()
    if id(trunk) not in self.extractors:
      self.extractors[id(trunk)] = FeatureExtractor(trunk, self.cfg)
    features = self.extractors[id(trunk)](images)
    bank, queries = features[: len(bank_labels)], features[len(bank_labels) :]
    c = self.cfg
    scores = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, c.k, c.temperature)
    seconds, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    with self.writer.as_default(step=step):
      for key, value in scores.items():
        tf.summary.scalar(f'knn/{key}', value)
      tf.summary.scalar('knn/seconds', seconds)
    self.writer.flush()
    # cpu_seconds: this process's CPU time meanwhile (in the background, the coordinator's own work
    # too: an upper bound of the monitor's).
    record = dict(extra, step=step, seconds=round(seconds, 3), cpu_seconds=round(cpu, 3), **scores)
    with tf.io.gfile.GFile(os.path.join(self.out_dir, 'ticks.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    logging.info('knn at step %d (%.1f s): %s', step, seconds, ', '.join(f'{k} {v:.4f}' for k, v in scores.items()))
    return scores


def resolve_sources(cfg: KnnMonitorConfig, world_sources: Optional[Dict[str, str]] = None) -> Tuple[str, str]:
  """(bank, query) specs: the config's, else the synthetic world's 'images_train' / 'images_validation'.

  Raises:
    ConfigError: a source is empty and no world is given.
  """
  world_sources = world_sources or {}
  out = []
  for key, world_key in (('bank_source', 'images_train'), ('query_source', 'images_validation')):
    spec = getattr(cfg, key) or world_sources.get(world_key, '')
    if not spec:
      raise ConfigError(f'knn.{key}: empty and no synthetic world source {world_key!r} to default to')
    out.append(spec)
  return out[0], out[1]


def monitor_for_run(cfg, model_dir: str) -> Optional[KnnMonitor]:
  """The monitor of a distributed pre-training run (None when off), evaluating in the background by default.

  Empty `knn.*_source`s read the run's synthetic world. A run whose every task has its
  own data has no world: with empty sources its monitor is off, and a warning names the keys.

  Args:
    cfg: the run's `ExperimentConfig`.
    model_dir: the run; the monitor writes to `<model_dir>/knn`.
  """
  k = cfg.knn
  if not k.enabled:
    return None
  tasks = [t for t in (getattr(cfg.tasks, f.name) for f in dataclasses.fields(cfg.tasks)) if t.enabled]
  world = {}
  if not (k.bank_source and k.query_source):
    if all(t.data.source for t in tasks):
      logging.warning('knn: off: every task has its own data; set knn.bank_source and knn.query_source to monitor')
      return None
    from mtssl_tf.data.synthetic.world import default_world_dir, make_world

    world = make_world(cfg.train.world_dir or default_world_dir(cfg.train.world_preset), cfg.train.world_preset)
  bank, query = resolve_sources(k, world.get('sources'))
  monitor = KnnMonitor(k, cfg.trunk, os.path.join(model_dir, 'knn'), bank, query, background=k.background)
  # A run whose steps can reach a due tick decodes the images now, while the cluster starts and the
  # workers wait for their first closures, rather than beside training steps.
  most = cfg.train.total_steps * max((t.cost_per_step for t in tasks), default=0.0)
  if most >= cfg.train.cost_tick * k.every_ticks:
    monitor.start()
  return monitor


def local_monitor(cfg, out_dir: str, world_sources: Optional[Dict[str, str]] = None) -> Optional[KnnMonitor]:
  """The monitor of a `LocalTrainer` run (None when off): ticks every `train.cost_tick` of compute.

  Args:
    cfg: the run's `ExperimentConfig`.
    out_dir: its summaries go here (the trainer's `summary_dir`: the trainer's event files).
    world_sources: a synthetic world's `sources`, for empty `knn.*_source`s.
  """
  if not cfg.knn.enabled:
    return None
  bank, query = resolve_sources(cfg.knn, world_sources)
  return KnnMonitor(cfg.knn, cfg.trunk, out_dir, bank, query, cost_tick=cfg.train.cost_tick)


def read_ticks(model_dir: str) -> Iterable[Dict]:
  """The monitor's records of a run (`<model_dir>/knn/ticks.jsonl`), in order; none if absent."""
  path = os.path.join(model_dir, 'knn', 'ticks.jsonl')
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]
