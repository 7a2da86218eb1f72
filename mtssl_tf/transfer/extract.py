"""Step 1 of knowledge transfer: features of every image, streamed to restartable shards.

Images are read in one deterministic order (files in sorted order, no shuffling), each
resized to shorter side `image_size` and centre-cropped, then mapped to a feature
vector by a network (`NetworkFeatures`: a trunk from random init or a checkpoint, or
any SavedModel signature, pooled by `pool_features`) or by HOG (`hog.HogBagOfWords`, or
`HogFeatures`: the HOG block grid pooled as a network's map).

The teacher's kind is the run's `trunk.kind` (read from its config.yaml by
`load_transfer_config`). An AlexNet or VGG16 teacher gives Noroozi et al. 2018 §5's
features by default (`extract.teacher_features: section5`): conv4 / conv4_3 max-pooled
to 5x5x384 / 4x4x512 (`trunk.teacher_features`; fewer channels at a narrower width). A
ResNet-v2 teacher, and any teacher with `teacher_features: endpoint`, gives `endpoint`
pooled by `pooling` / `grid`.

Every image has an id: its position in the source's record stream (before decoding),
so an image that fails to decode leaves a gap instead of shifting later ids, and a
reader can find an image's bytes again (`assign` does, to write pseudo-labels).

On disk, `<out_dir>/` holds `manifest.json` (what was extracted, dims, completion) and
per shard `shard-NNNNN.{features,ids,labels}.npy` then `shard-NNNNN.json`, written last
as the shard's commit mark. A shard holds exactly `shard_size` rows (the last one
fewer); its rows are buffered in memory until then (shard_size x dims x dtype bytes).
A restarted extraction keeps the committed shards, rewrites the first uncommitted one
from its first image id, and produces the same files as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import ConfigError, to_plain
from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.classification import centre_crop, resize_shorter_side
from mtssl_tf.evaluation.linear import adaptive_max_pool
from mtssl_tf.transfer.config import OUTPUTS, ExtractConfig, TransferConfig, world_sources
from mtssl_tf.transfer.hog import HogBagOfWords, HogMap
from mtssl_tf.trunk.inputs import preprocess
from mtssl_tf.trunk.teacher_features import TEACHER_LAYERS, teacher_features

MANIFEST = 'manifest.json'
LOG_EVERY_SECONDS = 30.0


# ----------------------------------------------------------------------------- images


def image_records(spec: str, data_dir: str = '', label_offset: int = 0) -> tf.data.Dataset:
  """(id, {'encoded', 'label'}) of a source in its deterministic order; nothing is decoded.

  Ids count records; a record our readers cannot even parse is dropped before
  counting, the same way on every read.
  """
  options = ReadOptions(label_offset=label_offset, data_dir=data_dir or None)
  ds = image_dataset(spec, options, lambda r: {'encoded': r['encoded'], 'label': r['label']})
  return ds.map(lambda x: {'encoded': x['encoded'], 'label': x['label']}).enumerate()


def image_stream(
  spec: str,
  *,
  image_size: int,
  crop_size: int,
  batch_size: int,
  start: int = 0,
  data_dir: str = '',
  label_offset: int = 0,
  every: int = 1,
) -> tf.data.Dataset:
  """Batches {'id', 'image' uint8 centre crop, 'label'} from image id `start` on, in order.

  Undecodable images are dropped (their ids are missing), counted and named in
  `pipeline.SKIPPED_KEY` / `SKIPPED_SOURCES_KEY` ('<spec> image <id>: <reason>'). Records before `start` are
  read but not decoded, so a restart costs I/O only; so are all but every `every`-th
  record after it (a sample spread over the source).
  """

  def load(item):
    index, record = item
    image = centre_crop(resize_shorter_side(decode.decode_rgb(record['encoded']), image_size), crop_size)
    return {'id': index, 'image': image, 'label': record['label']}

  def describe(item):
    index, record = item
    return tf.strings.join([spec, ' image ', tf.strings.as_string(index), ': ', decode.diagnose(record['encoded'])])

  ds = image_records(spec, data_dir, label_offset).skip(start)
  if every > 1:
    ds = ds.shard(every, 0)
  ds = pipeline.robust_map(ds, load, describe=describe)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- featurizers


def pool_features(maps: tf.Tensor, pooling: str = 'max', grid: int = 4) -> tf.Tensor:
  """[B, H, W, C] -> float32 [B, D]: adaptive max pooling to grid x grid (flattened), or global average."""
  maps = tf.cast(maps, tf.float32)
  if pooling == 'avg':
    return tf.reduce_mean(maps, axis=[1, 2])
  pooled = adaptive_max_pool(maps, (grid, grid))
  return tf.reshape(pooled, [-1, grid * grid * int(maps.shape[-1])])


def resolve_preprocessing(cfg: ExtractConfig) -> str:
  """'rgb' or 'harmonized': the config's, or for 'as_trained' the pre-training run's input."""
  return backbone.run_input_convention(cfg.preprocessing, cfg.init)


class NetworkFeatures:
  """A network's pooled activations: a trunk endpoint (random/checkpoint) or a SavedModel output.

  Attributes:
    dims: feature dimension.
    fingerprint: what determines the features (recorded in the manifest).
  """

  def __init__(self, cfg: ExtractConfig):
    """Loads the model named by `cfg.init`.

    Raises:
      ConfigError: an endpoint, signature or output the model lacks (named, with what it has).
      FileNotFoundError: nothing at `cfg.init`.
      ValueError: a checkpoint that does not hold a trunk of `cfg.trunk`'s shape.
    """
    kind, path = backbone.resolve_source(cfg.init)
    mode = resolve_preprocessing(cfg)
    if path and '://' not in path:
      path = os.path.abspath(path)  # The same model reached by another relative path is the same.
    self.fingerprint: Dict[str, Any] = {'features': 'network', 'kind': kind, 'model': path}
    # Noroozi §5 features of an AlexNet / VGG16 teacher (the module docstring); None: `endpoint` pooled.
    section5 = cfg.trunk.kind if cfg.trunk.kind in TEACHER_LAYERS and cfg.teacher_features == 'section5' else None
    if kind == 'saved_model':
      self._loaded = tf.saved_model.load(path)  # Kept: the signature functions need it alive.
      if hasattr(self._loaded, 'trunk_kind'):  # Ours record their trunk's kind (export/saved_model.py).
        exported = self._loaded.trunk_kind.numpy().decode()
        section5 = exported if exported in TEACHER_LAYERS and cfg.teacher_features == 'section5' else None
      endpoint = TEACHER_LAYERS[section5][0] if section5 else cfg.endpoint
      maps = self._saved_model(cfg, path, mode, endpoint if section5 else '')
      if section5:
        shapes = {endpoint: maps(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8)).shape}
    else:
      if kind == backbone.RANDOM:
        tf.keras.utils.set_random_seed(cfg.seed)
        self.fingerprint['seed'] = cfg.seed
      trunk = backbone.load_trunk(cfg.init, cfg.trunk, cfg.precision)
      shapes = {k: v.shape for k, v in trunk(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False).items()}
      endpoint = TEACHER_LAYERS[section5][0] if section5 else cfg.endpoint
      if endpoint not in shapes:
        key = 'teacher_features' if section5 else 'endpoint'
        raise ConfigError(f'extract.{key}: the trunk has no endpoint {endpoint!r} (it has {sorted(shapes)})')
      self._trunk = trunk
      self.fingerprint.update(endpoint=endpoint, trunk=to_plain(cfg.trunk), preprocessing=mode)

      def maps(images):
        return trunk(preprocess(images, mode), training=False)[endpoint]

    if section5:
      grid = TEACHER_LAYERS[section5][1]
      if min(shapes[endpoint][1:3]) < grid:
        raise ConfigError(
          f'extract.crop_size: {cfg.crop_size} px gives the {section5} teacher a {shapes[endpoint][1]}x'
          f'{shapes[endpoint][2]} {endpoint}, smaller than the {grid}x{grid} grid of Noroozi §5; use larger crops'
        )
      self.fingerprint.update(teacher_features='section5', pooling='adaptive_max', grid=grid)

      def features(images):
        return tf.cast(teacher_features({endpoint: maps(images)}, section5), tf.float32)
    else:
      self.fingerprint.update(pooling=cfg.pooling, grid=cfg.grid if cfg.pooling == 'max' else 0)

      def features(images):
        return pool_features(maps(images), cfg.pooling, cfg.grid)

    spec = tf.TensorSpec([None, cfg.crop_size, cfg.crop_size, 3], tf.uint8)
    self._fn = tf.function(features, input_signature=[spec])
    self.dims = int(self._fn(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8)).shape[-1])

  def _saved_model(self, cfg: ExtractConfig, path: str, mode: str, section5_layer: str = ''):
    """uint8 images -> the map of the SavedModel's signature; `section5_layer`: that output of 'endpoints'."""
    unit = cfg.endpoint.startswith('block3/unit_')
    signature = cfg.signature or {'final': 'final'}.get(cfg.endpoint, 'block3_units' if unit else '')
    if section5_layer:
      # An AlexNet / VGG16 export serves every named layer in its 'endpoints' signature.
      if 'endpoints' not in self._loaded.signatures:
        raise ConfigError(
          f"extract.teacher_features: section5 reads {section5_layer!r} from an 'endpoints' signature, which {path} "
          f"lacks ({sorted(self._loaded.signatures)}); extract from the run's checkpoint or set "
          'extract.teacher_features=endpoint'
        )
      signature = 'endpoints'
    if not signature:
      raise ConfigError(
        f"extract.endpoint: an exported SavedModel serves 'final' and 'block3/unit_NN', not {cfg.endpoint!r}; "
        'use the checkpoint, or name extract.signature and extract.output_key'
      )
    if signature not in self._loaded.signatures:
      raise ConfigError(f'extract.signature: {path} has no signature {signature!r} ({sorted(self._loaded.signatures)})')
    fn = self._loaded.signatures[signature]
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
      raise ConfigError(f'extract.signature: {signature!r} takes {sorted(inputs)}; one image input is needed')
    ((name, spec),) = inputs.items()
    size = spec.shape[1:3].as_list() if spec.shape.rank == 4 else [None, None]
    if any(side not in (None, cfg.crop_size) for side in size):
      raise ConfigError(
        f'extract.crop_size: signature {signature!r} of {path} takes {size[0]}x{size[1]} images (fixed at export), '
        f'not {cfg.crop_size}; set extract.crop_size={size[0]} or export with that image size'
      )
    key = section5_layer or cfg.output_key or ('final' if cfg.endpoint == 'final' else cfg.endpoint.split('/')[-1])
    if key not in fn.structured_outputs:
      raise ConfigError(
        f'extract.output_key: signature {signature!r} has no output {key!r} ({sorted(fn.structured_outputs)})'
      )
    self.fingerprint.update(signature=signature, output_key=key)
    if spec.dtype != tf.uint8:
      # A foreign model taking floats gets our preprocessing; ours preprocess uint8 themselves.
      self.fingerprint['preprocessing'] = mode
    elif hasattr(self._loaded, 'input_convention'):
      # Ours record the input they feed their trunk (export/saved_model.py): it must be the one asked for.
      exported = self._loaded.input_convention.numpy().decode()
      if exported != mode:
        raise ConfigError(
          f'extract.preprocessing: {path} feeds its trunk {exported!r} input (chosen at export), not {mode!r}; '
          f"set extract.preprocessing={exported}, extract from the run's checkpoint, or export with {mode!r}"
        )

    def maps(images):
      x = images if spec.dtype == tf.uint8 else tf.cast(preprocess(images, mode), spec.dtype)
      return fn(**{name: x})[key]

    return maps

  def __call__(self, images) -> np.ndarray:
    """uint8 [B, crop, crop, 3] -> float32 [B, dims]."""
    return self._fn(images).numpy()


class HogFeatures:
  """HOG block grids (`hog.HogMap`) of the crops, pooled as a network's maps."""

  def __init__(self, cfg: ExtractConfig):
    """Creates the descriptor for `cfg.crop_size` crops."""
    self.hog = HogMap(cfg.crop_size, cfg.hog_cell_size, cfg.hog_block_cells, cfg.hog_bins)
    self.pooling, self.grid = cfg.pooling, cfg.grid
    self.dims = int(pool_features(tf.zeros([1, *self.hog.shape]), self.pooling, self.grid).shape[-1])
    self.fingerprint = {
      'features': 'hog', 'cell': cfg.hog_cell_size, 'block_cells': cfg.hog_block_cells, 'bins': cfg.hog_bins,
      'pooling': cfg.pooling, 'grid': cfg.grid if cfg.pooling == 'max' else 0,
    }  # fmt: skip

  def __call__(self, images) -> np.ndarray:
    """uint8 [B, crop, crop, 3] -> float32 [B, dims]."""
    images = images.numpy() if hasattr(images, 'numpy') else np.asarray(images)
    return pool_features(tf.constant(self.hog(images)), self.pooling, self.grid).numpy()


def hog_bag_of_words(cfg: ExtractConfig, vocabulary_dir: str, progress: bool = True) -> HogBagOfWords:
  """The bag of HOG words of `cfg`, its vocabulary read from or fitted and saved to `vocabulary_dir`.

  A new vocabulary is fitted on `cfg.hog_vocabulary_images` images of `cfg.source`,
  every num_images / hog_vocabulary_images-th when `num_images` is known (a sample over
  the whole source, whatever order its files are in), else the first ones.
  """
  hog = HogMap(cfg.crop_size, cfg.hog_cell_size, cfg.hog_block_cells, cfg.hog_bins)
  every = max(1, cfg.num_images // cfg.hog_vocabulary_images) if cfg.num_images else 1
  batches = -(-cfg.hog_vocabulary_images // cfg.batch_size)

  def images():
    stream = image_stream(cfg.source, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size,
                          data_dir=cfg.data_dir, label_offset=cfg.label_offset, every=every)  # fmt: skip
    for batch in stream.unbatch().take(cfg.hog_vocabulary_images).batch(cfg.batch_size).take(batches):
      yield batch['image'].numpy()

  bag = HogBagOfWords.load_or_fit(vocabulary_dir, hog, images, cfg.hog_words, cfg.seed, progress)
  bag.fingerprint = {
    'features': 'hog', 'encoding': 'bag_of_words', 'cell': cfg.hog_cell_size, 'block_cells': cfg.hog_block_cells,
    'bins': cfg.hog_bins, 'words': cfg.hog_words, 'vocabulary': bag.digest,
  }  # fmt: skip
  return bag


def build_featurizer(cfg: ExtractConfig, vocabulary_dir: str = '', progress: bool = True):
  """`NetworkFeatures`, or for HOG a bag of words (`hog_bag_of_words`) or `HogFeatures` (the pooled grid).

  Args:
    cfg: the extraction.
    vocabulary_dir: where the HOG vocabulary lives (the clustered images' feature folder).
    progress: log the fitting of a HOG vocabulary.
  """
  if cfg.features != 'hog':
    return NetworkFeatures(cfg)
  if cfg.hog_encoding == 'grid':
    return HogFeatures(cfg)
  if not vocabulary_dir:
    raise ValueError('extract: a bag of HOG words needs a folder for its vocabulary')
  return hog_bag_of_words(cfg, vocabulary_dir, progress)


# ----------------------------------------------------------------------------- shard files


def _path(directory: str, index: int, part: str) -> str:
  return os.path.join(directory, f'shard-{index:05d}.{part}')


def _write_json(path: str, data: Dict[str, Any]) -> None:
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True, default=float)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def save_array(path: str, array: np.ndarray) -> None:
  """np.save through tf.io.gfile (any filesystem), atomically."""
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    np.save(f, array)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def load_array(path: str) -> np.ndarray:
  """np.load through tf.io.gfile."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    return np.load(f)


def committed_shards(directory: str) -> List[Dict[str, Any]]:
  """The commit marks of shards 0, 1, ... up to the first uncommitted one."""
  marks = []
  while True:
    mark = _read_json(_path(directory, len(marks), 'json'))
    if mark is None:
      return marks
    marks.append(mark)


def _drop_shards_from(directory: str, first: int) -> None:
  # Files of an interrupted shard (and, defensively, anything after it) are redone.
  for path in tf.io.gfile.glob(os.path.join(directory, 'shard-*')):
    name = os.path.basename(path)
    if int(name[len('shard-') : len('shard-') + 5]) >= first:
      tf.io.gfile.remove(path)


class FeatureShards:
  """Reads an extraction's shards; iterating yields each shard's features as float32 (k-means chunks).

  Re-iterable (every iteration re-reads the files), so k-means can make one pass per
  Lloyd iteration without the features in memory.
  """

  def __init__(self, directory: str, require_complete: bool = True):
    """Opens `directory`.

    Raises:
      FileNotFoundError: no manifest, or (with `require_complete`) an unfinished extraction.
    """
    self.directory = directory
    self.manifest = _read_json(os.path.join(directory, MANIFEST))
    if self.manifest is None:
      raise FileNotFoundError(f'no feature extraction in {directory} (run the extract step first)')
    if require_complete and not self.manifest.get('complete'):
      raise FileNotFoundError(f'the feature extraction in {directory} is unfinished (rerun extract to resume it)')
    self.shards = committed_shards(directory)

  @property
  def dims(self) -> int:
    """Feature dimension."""
    return int(self.manifest['dims'])

  @property
  def num_rows(self) -> int:
    """Images over all shards."""
    return sum(s['rows'] for s in self.shards)

  def __len__(self) -> int:
    return len(self.shards)

  def features(self, index: int) -> np.ndarray:
    """float32 [rows, dims] of shard `index`."""
    return load_array(_path(self.directory, index, 'features.npy')).astype(np.float32, copy=False)

  def ids(self, index: int) -> np.ndarray:
    """int64 image ids of shard `index`."""
    return load_array(_path(self.directory, index, 'ids.npy'))

  def labels(self, index: int) -> np.ndarray:
    """int64 original labels of shard `index` (-1: none), for diagnostics only."""
    return load_array(_path(self.directory, index, 'labels.npy'))

  def __iter__(self) -> Iterator[np.ndarray]:
    for index in range(len(self.shards)):
      yield self.features(index)

  def all_ids(self) -> np.ndarray:
    """Every image id, in order."""
    return np.concatenate([self.ids(i) for i in range(len(self))]) if self.shards else np.zeros([0], np.int64)

  def all_labels(self) -> np.ndarray:
    """Every original label, in order."""
    return np.concatenate([self.labels(i) for i in range(len(self))]) if self.shards else np.zeros([0], np.int64)


class Progress:
  """Logs images done, images/s and (with a known total) an ETA, every `LOG_EVERY_SECONDS`."""

  def __init__(self, name: str, done: int, total: int = 0, enabled: bool = True):
    """Starts the clock with `done` images already processed by an earlier run."""
    self.name, self.total, self.enabled = name, total, enabled
    self.start_done, self.done = done, done
    self.start = self.last = time.perf_counter()

  def update(self, count: int, force: bool = False) -> None:
    """Adds `count` images; logs when due (or `force`)."""
    self.done += count
    now = time.perf_counter()
    if not self.enabled or (not force and now - self.last < LOG_EVERY_SECONDS):
      return
    self.last = now
    rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
    eta = ''
    if self.total and rate > 0:
      left = max(self.total - self.done, 0) / rate
      eta = f', ETA {int(left // 3600)}h{int(left % 3600 // 60):02d}m{int(left % 60):02d}s'
    of = f'/{self.total}' if self.total else ''
    logging.info('%s: %d%s images, %.1f images/s%s', self.name, self.done, of, rate, eta)


# ----------------------------------------------------------------------------- extraction


def extract_features(
  cfg: ExtractConfig,
  out_dir: str,
  spec: str = '',
  featurizer=None,
  max_shards: Optional[int] = None,
  progress: bool = True,
) -> Dict[str, Any]:
  """Extracts (or resumes extracting) the features of `spec` into `out_dir` (module docstring).

  Args:
    cfg: what to extract and how.
    out_dir: the shard folder.
    spec: image source; '' = `cfg.source`.
    featurizer: a built featurizer (e.g. shared between two sources); None builds one from `cfg`.
    max_shards: stop after committing this many new shards (tests, time-boxed jobs).
    progress: log progress lines.

  Returns:
    The manifest: fingerprint, dims, complete, rows, shards, seconds, skipped_examples
    and skipped_sources (undecodable images, '<spec> image <id>: <reason>').

  Raises:
    ValueError: `out_dir` holds features extracted differently (the differing keys named).
  """
  spec = spec or cfg.source
  if not spec:
    raise ConfigError('extract.source: no image source given')
  featurizer = featurizer or build_featurizer(cfg, out_dir, progress)
  fingerprint = dict(featurizer.fingerprint, source=spec, image_size=cfg.image_size, crop_size=cfg.crop_size,
                     shard_size=cfg.shard_size, dtype=cfg.dtype, label_offset=cfg.label_offset)  # fmt: skip
  fingerprint = json.loads(json.dumps(fingerprint))  # Tuples -> lists, as read back.
  tf.io.gfile.makedirs(out_dir)
  manifest_path = os.path.join(out_dir, MANIFEST)
  manifest = _read_json(manifest_path)
  if manifest is not None:
    old = manifest['fingerprint']
    differ = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if differ:
      raise ValueError(
        f'{out_dir} holds features extracted with other settings ({", ".join(differ)}: '
        f'{[old.get(k) for k in differ]} vs {[fingerprint.get(k) for k in differ]}); use a fresh folder or delete it'
      )
    if manifest.get('complete'):
      return manifest
  else:
    manifest = {'fingerprint': fingerprint, 'dims': featurizer.dims, 'complete': False, 'seconds': 0.0}
    _write_json(manifest_path, manifest)

  skipped_before = manifest.get('skipped_examples', 0)
  sources_before = list(manifest.get('skipped_sources', []))
  marks = committed_shards(out_dir)
  _drop_shards_from(out_dir, len(marks))
  start_id = marks[-1]['next_id'] if marks else 0
  rows = sum(m['rows'] for m in marks)
  if marks and progress:
    logging.info('extract: resuming %s after %d shards (%d images, next id %d)', out_dir, len(marks), rows, start_id)
  tick = time.perf_counter()
  meter = Progress(f'extract {os.path.basename(out_dir.rstrip("/"))}', rows, cfg.num_images, progress)
  dtype = np.dtype(cfg.dtype)
  buffers: Dict[str, List[np.ndarray]] = {'features': [], 'ids': [], 'labels': []}
  buffered, written = 0, 0
  skips = pipeline.SkipCounter(f'extract {spec}')

  def record_skips() -> None:
    # Totals over every run that extracted into out_dir (a resume reads only new records).
    manifest['skipped_examples'] = skipped_before + skips.count
    manifest['skipped_sources'] = sources_before + [s for s in skips.sources if s not in sources_before]

  def commit(count: int) -> None:
    nonlocal buffered, rows
    index = len(marks)
    parts = {k: np.concatenate(v) for k, v in buffers.items()}
    for part, array in parts.items():
      save_array(_path(out_dir, index, f'{part}.npy'), array[:count])
      buffers[part] = [array[count:]]
    ids = parts['ids'][:count]
    mark = {'rows': count, 'first_id': int(ids[0]), 'next_id': int(ids[-1]) + 1}
    _write_json(_path(out_dir, index, 'json'), mark)
    marks.append(mark)
    buffered -= count
    rows += count

  data = image_stream(spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size,
                      start=start_id, data_dir=cfg.data_dir, label_offset=cfg.label_offset)  # fmt: skip
  for batch in data:
    buffers['features'].append(featurizer(batch['image']).astype(dtype))
    buffers['ids'].append(batch['id'].numpy().astype(np.int64))
    buffers['labels'].append(batch['label'].numpy().astype(np.int64))
    buffered += len(buffers['ids'][-1])
    skips.update(batch[pipeline.SKIPPED_KEY], batch[pipeline.SKIPPED_SOURCES_KEY])
    meter.update(len(buffers['ids'][-1]))
    while buffered >= cfg.shard_size:
      commit(cfg.shard_size)
      written += 1
      if max_shards is not None and written >= max_shards:
        manifest.update(rows=rows, shards=len(marks), seconds=manifest['seconds'] + time.perf_counter() - tick)
        record_skips()
        _write_json(manifest_path, manifest)
        return manifest
  if buffered:
    commit(buffered)
  if not rows:
    raise ValueError(f'{spec!r}: no decodable image to extract features from')
  manifest.update(complete=True, rows=rows, shards=len(marks), seconds=manifest['seconds'] + time.perf_counter() - tick)
  record_skips()
  _write_json(manifest_path, manifest)
  meter.update(0, force=True)
  if progress:
    logging.info('extract: %d images x %d dims in %d shards -> %s', rows, manifest['dims'], len(marks), out_dir)
    if manifest['skipped_examples']:
      logging.warning(
        'extract: %d undecodable images skipped (named in %s)', manifest['skipped_examples'], manifest_path
      )
  return manifest


def run_extract(cfg: TransferConfig, model_dir: str, max_shards: Optional[int] = None, progress: bool = True):
  """The `extract` step: features of `cfg.extract.source` into `<model_dir>/features`."""
  world_sources(cfg)
  return extract_features(cfg.extract, os.path.join(model_dir, OUTPUTS['extract']), max_shards=max_shards,
                          progress=progress)  # fmt: skip
