"""Image readers: Model Garden TFRecords, tensorflow-datasets by name, plain folders, image lists.

Every reader yields dicts {'image': uint8 [H, W, 3], 'label': int64 (-1 if none),
'num_skipped': int64} unless a `process` function says otherwise. Records are read
and decoded in parallel with pure TF ops; undecodable records are skipped and counted
(`num_skipped`, see `pipeline.robust_map`); a missing path or empty glob raises a
`DataError` when the dataset is built.

A task that crops passes `process`, which receives {'encoded': string, 'label': int64}
and may call `decode.decode_and_crop_rgb` so only the crop of a JPEG is decoded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.sources import DataError, list_files, parse_source, require_dir

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
ENCODED_KEY = 'image/encoded'
LABEL_KEY = 'image/class/label'

Process = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


@dataclasses.dataclass
class ReadOptions:
  """How a reader shards, orders and post-processes a source.

  Attributes:
    shard_index: this input pipeline's index among `num_shards` (a PSS worker's index
      within its task's pool).
    num_shards: pipelines reading the same source.
    shuffle_files: shuffle file order each epoch.
    seed: seed for file shuffling; with `deterministic` the order is reproducible.
    deterministic: keep a reproducible element order.
    data_dir: tensorflow-datasets data directory (nothing is ever downloaded).
    label_offset: subtracted from labels (1 for Model Garden ImageNet, whose label 0
      is background).
    min_side: decoded images whose shorter side is below this are upscaled to it, so
      tasks that crop never see an image smaller than they need. 0 disables.
  """

  shard_index: int = 0
  num_shards: int = 1
  shuffle_files: bool = False
  seed: Optional[int] = None
  deterministic: bool = True
  data_dir: Optional[str] = None
  label_offset: int = 0
  min_side: int = 0


def ensure_min_side(image: tf.Tensor, min_side: int) -> tf.Tensor:
  """Upscales (bilinear) an image whose shorter side is below `min_side`, keeping aspect."""
  if min_side <= 0:
    return image
  shape = tf.shape(image)[:2]
  short = tf.reduce_min(shape)

  def grow():
    scale = tf.cast(min_side, tf.float32) / tf.cast(short, tf.float32)
    size = tf.cast(tf.math.ceil(tf.cast(shape, tf.float32) * scale), tf.int32)
    resized = tf.image.resize(image, size, method='bilinear')
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  return tf.cond(short < min_side, grow, lambda: image)


def default_process(options: ReadOptions) -> Process:
  """The standard `process`: full decode to RGB, then `ensure_min_side`."""

  def process(record):
    image = ensure_min_side(decode.decode_rgb(record['encoded']), options.min_side)
    return {'image': image, 'label': record['label']}

  return process


def named(reason: str) -> Callable[[Tuple[tf.Tensor, ...]], tf.Tensor]:
  """A `robust_map` describer for (source, ...) elements: '<source><reason>'."""
  return lambda item: tf.strings.join([item[0], reason])


def tfrecord_records(files: List[str], options: ReadOptions, with_source: bool = False) -> tf.data.Dataset:
  """Serialized records of TFRecord `files`, sharded, shuffled and ordered as `options` say.

  With `with_source`, elements are (source, serialized) where source is
  '<file>#record <n>', so a record that fails later can be named.
  """

  def read(path):
    records = tf.data.TFRecordDataset(path)
    if not with_source:
      return records
    return records.enumerate().map(lambda i, r: (tf.strings.join([path, '#record ', tf.strings.as_string(i)]), r))

  return pipeline.file_dataset(
    files,
    read,
    shard_index=options.shard_index,
    num_shards=options.num_shards,
    shuffle_files=options.shuffle_files,
    seed=options.seed,
    deterministic=options.deterministic,
  )


def tfrecord_images(pattern: str, options: Optional[ReadOptions] = None, process: Optional[Process] = None):
  """Reads Model Garden-style image TFRecords (`image/encoded`, `image/class/label`).

  A record without `image/encoded` decodes as empty bytes and is skipped and counted;
  a missing label reads as -1 (minus `label_offset` is not applied to it).
  """
  options = options or ReadOptions()
  files = list_files(pattern, 'image TFRecord files')
  records = tfrecord_records(files, options, with_source=True)
  features = {
    ENCODED_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }
  process = process or default_process(options)

  def parse_and_process(item):
    # Parsing inside the robust map: a record that is not an Example is skipped too.
    parsed = tf.io.parse_single_example(item[1], features)
    label = parsed[LABEL_KEY]
    label = tf.where(label >= 0, label - options.label_offset, label)
    return process({'encoded': parsed[ENCODED_KEY], 'label': label})

  def describe(item):
    encoded = tf.io.parse_single_example(item[1], features)[ENCODED_KEY]
    return tf.strings.join([item[0], ': ', decode.diagnose(encoded)])

  return pipeline.robust_map(records, parse_and_process, describe=[describe, named(': not an image Example')])


def list_image_folder(root: str) -> Tuple[List[str], List[int], List[str]]:
  """Image files under `root` (recursive, sorted) and labels from sub-folder names.

  Labels are the index of the first-level sub-folder in sorted order when every
  image sits in one; if any image is directly in `root`, all labels are -1.

  Returns:
    (paths, labels, class_names).

  Raises:
    DataError: the folder is missing or holds no images.
  """
  require_dir(root, 'image folder')
  paths = []
  for dirpath, dirnames, filenames in tf.io.gfile.walk(root):
    dirnames.sort()
    paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
  if not paths:
    raise DataError(f'image folder {root!r} holds no {"/".join(IMAGE_EXTENSIONS)} files')
  tops = [os.path.relpath(p, root).split(os.sep) for p in paths]
  if any(len(t) == 1 for t in tops):
    return paths, [-1] * len(paths), []
  class_names = sorted({t[0] for t in tops})
  index = {name: i for i, name in enumerate(class_names)}
  return paths, [index[t[0]] for t in tops], class_names


def folder_images(root: str, options: Optional[ReadOptions] = None, process: Optional[Process] = None):
  """Reads a folder of JPEG/PNG/BMP/GIF files; labels from sub-folder names if present."""
  options = options or ReadOptions()
  paths, labels, _ = list_image_folder(root)
  ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
  return path_images(ds, len(paths), options, process)


def path_images(
  ds: tf.data.Dataset, size: int, options: ReadOptions, process: Optional[Process] = None, prefix: str = ''
) -> tf.data.Dataset:
  """Reads the image files of a (path, label) dataset of `size` elements.

  Sharded, then shuffled, as `options` say (before anything is read), then each file
  `<prefix><path>` is read and processed inside `robust_map`: an unreadable or corrupt file
  is skipped, counted and named '<prefix><path>: <reason>'.
  """
  # Shard first: shards are disjoint with or without a seed (shuffling first, unseeded workers would each
  # draw their own order and read overlapping shards), and each worker's buffer holds only its shard.
  if options.num_shards > 1:
    ds = ds.shard(options.num_shards, options.shard_index)
    size = -(-size // options.num_shards)
  if options.shuffle_files:
    ds = ds.shuffle(size, seed=options.seed, reshuffle_each_iteration=True)
  if prefix:
    # Joined after shuffle and shard: the shuffle buffer holds the short relative paths.
    ds = ds.map(lambda path, label: (tf.strings.join([prefix, path]), label))
  process = process or default_process(options)

  def read_and_process(item):
    # Reading inside the robust map: a file deleted since listing is skipped, not fatal.
    path, label = item
    return process({'encoded': tf.io.read_file(path), 'label': label})

  def describe(item):
    return tf.strings.join([item[0], ': ', decode.diagnose(tf.io.read_file(item[0]))])

  return pipeline.robust_map(ds, read_and_process, describe=[describe, named(': unreadable file')])


def read_image_list(list_file: str) -> Tuple[List[str], np.ndarray]:
  """Parses an image list: one `<relative path> [<label>]` per line (see `sources`, kind `list`).

  The file is read once and split in Python (Places365-Standard's 1.8M-line list parses in
  about a second; no per-line TF ops). A leading '/' on a path is dropped, so paths are
  relative to the image root; blank lines are skipped. Either every line has a label or none
  has (labels -1 then, e.g. `places365_test.txt`).

  Returns:
    (relative paths, int64 labels), in file order.

  Raises:
    DataError: the file is missing or holds no entries, or a line is malformed (naming the
      file and its 1-based line number).
  """
  if not tf.io.gfile.exists(list_file) or tf.io.gfile.isdir(list_file):
    raise DataError(f'image list file {list_file!r} does not exist or is not a file')
  stat = tf.io.gfile.stat(list_file)
  paths, labels = _parse_image_list(list_file, stat.length, stat.mtime_nsec)
  return list(paths), labels.copy()


@functools.lru_cache(maxsize=4)
def _parse_image_list(list_file: str, length: int, mtime_nsec: int) -> Tuple[Tuple[str, ...], np.ndarray]:
  """`read_image_list`'s parse, cached per file version (size and mtime are in the key).

  A parameter-server run builds one input pipeline per worker and task in the
  coordinator's process, each of which would otherwise parse the list again.
  """
  del length, mtime_nsec  # Cache key only.
  with tf.io.gfile.GFile(list_file, 'rb') as f:
    text = f.read().decode('utf-8', errors='replace')
  paths, labels, width = [], [], 0
  for number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    width = width or len(fields)  # The first entry decides whether the list is labelled.
    try:
      label = int(fields[1]) if width == 2 else -1
      if len(fields) != width or width > 2 or (width == 2 and label < 0):
        raise ValueError
      labels.append(label)
    except (ValueError, IndexError):
      expected = '<path> <label >= 0>' if width != 1 else '<path> (no label, like the first entry)'
      raise DataError(f'image list {list_file!r} line {number}: expected {expected}, got {line.strip()!r}') from None
    paths.append(fields[0].lstrip('/'))
  if not paths:
    raise DataError(f'image list {list_file!r} holds no entries')
  return tuple(paths), np.asarray(labels, np.int64)


def list_images(
  list_file: str, root: str, options: Optional[ReadOptions] = None, process: Optional[Process] = None
) -> tf.data.Dataset:
  """Reads the images an image list names under `root`, labels from the list (minus `label_offset`).

  A listed file that is missing, unreadable or corrupt is skipped, counted and named by its
  full path, as the folder reader does (`path_images`).

  Raises:
    DataError: the list file or image root is missing, or the list is malformed.
  """
  options = options or ReadOptions()
  require_dir(root, f'image root of list {list_file!r}')
  paths, labels = read_image_list(list_file)
  labels = np.where(labels >= 0, labels - options.label_offset, labels)
  # Relative paths in the dataset constant, the root joined per element: about half the
  # memory of full paths (1.8M of them for Places365-Standard).
  ds = tf.data.Dataset.from_tensor_slices((paths, labels))
  return path_images(ds, len(paths), options, process, prefix=os.path.join(root, ''))


def tfds_images(
  name: str, split: str, options: Optional[ReadOptions] = None, process: Optional[Process] = None
) -> tf.data.Dataset:
  """Reads an image dataset prepared with tensorflow-datasets (never downloads).

  The image feature is read undecoded so that decoding (and cropping) goes through
  the same robust path as the other readers.
  """
  options = options or ReadOptions()
  import tensorflow_datasets as tfds  # Imported here: it is slow to import and optional per run.

  read_config = tfds.ReadConfig(
    shuffle_seed=options.seed,
    input_context=tf.distribute.InputContext(
      num_input_pipelines=options.num_shards, input_pipeline_id=options.shard_index
    ),
  )
  try:
    ds = tfds.load(
      name,
      split=split,
      data_dir=options.data_dir,
      download=False,
      shuffle_files=options.shuffle_files,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config,
    )
  except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError...).
    raise DataError(
      f'tensorflow-datasets {name!r} split {split!r} is not available in data_dir {options.data_dir!r}: '
      f'{type(e).__name__}: {e}. Prepare it offline with `tfds build` (see BUILD.md).'
    ) from None
  spec = ds.element_spec
  if 'image' not in spec:
    raise DataError(f'tensorflow-datasets {name!r} has no "image" feature (features: {sorted(spec)})')
  has_label = 'label' in spec
  process = process or default_process(options)

  def convert(example):
    label = tf.cast(example['label'], tf.int64) - options.label_offset if has_label else tf.constant(-1, tf.int64)
    return process({'encoded': example['image'], 'label': label})

  return pipeline.robust_map(ds, convert)


def image_dataset(spec: str, options: Optional[ReadOptions] = None, process: Optional[Process] = None):
  """Reads images from a source spec: `tfrecord:<glob>`, `folder:<dir>`, `list:<file>@<root>` or `tfds:<name>:<split>`.

  Args:
    spec: the source (see `sources.parse_source`).
    options: sharding, order, data_dir, label offset, minimum side.
    process: optional {'encoded', 'label'} -> dict function (default: full decode).

  Returns:
    A dataset of dicts (see the module docstring), not batched, not repeated.

  Raises:
    DataError: bad spec, missing folder, list file or image root, malformed list, empty
      glob, unavailable tfds dataset.
  """
  options = options or ReadOptions()
  source = parse_source(spec)
  if source.kind == 'tfrecord':
    return tfrecord_images(source.location, options, process)
  if source.kind == 'folder':
    return folder_images(source.location, options, process)
  if source.kind == 'list':
    return list_images(source.location, source.root, options, process)
  return tfds_images(source.location, source.split, options, process)
