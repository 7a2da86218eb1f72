"""NYU Depth v2 readers: the labeled .mat file, TFRecords converted from it, or tfds.

Every reader yields dicts:

* 'image': uint8 [H, W, 3] (480 x 640 for NYU);
* 'depth': float32 [H, W] metres, 0 where not valid (so a NaN never reaches a loss);
* 'valid': bool [H, W], depth > 0 and finite. NYU's raw Kinect holes are 0: the
  labeled file's `rawDepths` has them; its `depths` are in-painted and (almost) all
  valid. Evaluation usually also restricts to `EIGEN_CROP` (`eigen_crop_mask`);
* 'index': int64, the image's 0-based index in the labeled .mat (-1 for tfds);
* 'num_skipped': int64 (see `pipeline.robust_map`).

The labeled file `nyu_depth_v2_labeled.mat` is MATLAB v7.3, i.e. HDF5: `images` is
(1449, 3, 640, 480) uint8 and `depths` (1449, 640, 480) float32 as h5py sees them
(MATLAB's column-major H x W x C x N, reversed), so an image is `images[i]`
transposed to [H, W, C] and a depth map `depths[i].T`. h5py cannot run inside TF ops,
so there are two ways in:

* `nyu_mat_to_tfrecords` converts (some of) the file once into TFRecords
  ('image/encoded' PNG or JPEG, 'depth/raw' float32 little-endian bytes, exact); the
  reader of those is pure TF and sharded by file, for training on workers;
* `nyu_mat_dataset` loads the selected images on the host (in chunks, straight into
  the dataset) for small evaluation sets on one machine. The data stays in host
  memory: 2.15 MB per 640 x 480 image (0.92 MB RGB + 1.23 MB depth), about 1.4 GB for
  the 654 test images, 3.1 GB for all 1449; it becomes constants of the dataset
  graph, so it cannot be shipped to ParameterServerStrategy workers.

The standard split is 795 train / 654 test images, given by the official
`splits.mat` (`trainNdxs`, `testNdxs`, 1-based indices); it is read, never invented.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.detection import load_tfds
from mtssl_tf.data.images import ReadOptions, named, tfrecord_records
from mtssl_tf.data.sources import DataError, list_files, parse_source

# Eigen et al. (2014) evaluate on rows 45:471 and columns 41:601 of the 480 x 640
# image (top, bottom, left, right; ends exclusive), where the Kinect depth is valid.
EIGEN_CROP = (45, 471, 41, 601)
NYU_SIZE = (480, 640)
SPLITS = ('train', 'test', 'all')
SPLIT_FILE = 'splits.mat'
_SPLIT_KEYS = {'train': 'trainNdxs', 'test': 'testNdxs'}
ENCODED_KEY = 'image/encoded'
DEPTH_KEY = 'depth/raw'


def eigen_crop_mask(height: int = NYU_SIZE[0], width: int = NYU_SIZE[1]) -> tf.Tensor:
  """bool [height, width]: `EIGEN_CROP`, scaled for other image sizes (bounds rounded half up)."""
  top, bottom, left, right = EIGEN_CROP
  sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]

  def scaled(value, scale):
    return int(np.floor(value * scale + 0.5))  # Not round(): banker's rounding is uneven.

  rows = tf.range(height)
  cols = tf.range(width)
  in_rows = (rows >= scaled(top, sy)) & (rows < scaled(bottom, sy))
  in_cols = (cols >= scaled(left, sx)) & (cols < scaled(right, sx))
  return in_rows[:, None] & in_cols[None, :]


def with_validity(image: tf.Tensor, depth: tf.Tensor, index: tf.Tensor) -> Dict[str, tf.Tensor]:
  """The output dict: depth as float32 metres, zeroed where not valid, and 'valid'."""
  depth = tf.cast(depth, tf.float32)
  valid = tf.math.is_finite(depth) & (depth > 0)
  return {
    'image': image,
    'depth': tf.where(valid, depth, tf.zeros_like(depth)),
    'valid': valid,
    'index': tf.cast(index, tf.int64),
  }


def read_nyu_splits(path: str) -> Dict[str, np.ndarray]:
  """Reads `splits.mat` (MATLAB v5 via scipy, or v7.3 via h5py).

  Returns:
    {'train': int64 0-based indices, 'test': ...}, sorted.

  Raises:
    DataError: missing or unreadable file, or no `trainNdxs`/`testNdxs`.
  """
  if not os.path.isfile(path):
    raise DataError(f'NYU split file {path!r} does not exist (the official one is splits.mat: trainNdxs/testNdxs)')
  import h5py

  try:
    if h5py.is_hdf5(path):
      with h5py.File(path, 'r') as f:
        raw = {k: np.asarray(f[v]) for k, v in _SPLIT_KEYS.items() if v in f}
    else:
      import scipy.io  # Only for MATLAB v5 files, as the official splits.mat is.

      mat = scipy.io.loadmat(path)
      raw = {k: np.asarray(mat[v]) for k, v in _SPLIT_KEYS.items() if v in mat}
  except (OSError, ValueError) as e:
    raise DataError(f'NYU split file {path!r} cannot be read: {e}') from None
  if len(raw) != 2:
    raise DataError(f'NYU split file {path!r} has no {" / ".join(_SPLIT_KEYS.values())}')
  splits = {}
  for name, values in raw.items():
    values = values.reshape(-1)
    if values.size and (values.min() < 1 or np.any(values != np.round(values))):
      raise DataError(f'NYU split file {path!r}: {_SPLIT_KEYS[name]} must hold 1-based integer indices')
    splits[name] = np.sort(values.astype(np.int64) - 1)
  return splits


def _open_mat(mat_path: str, depth_key: str):
  """Opens the labeled file; returns (h5py.File, images, depths), shapes checked."""
  import h5py

  if not os.path.isfile(mat_path):
    raise DataError(f'NYU labeled file {mat_path!r} does not exist')
  try:
    f = h5py.File(mat_path, 'r')
  except OSError as e:
    raise DataError(f'NYU labeled file {mat_path!r} is not HDF5 (MATLAB v7.3): {e}') from None
  missing = [k for k in ('images', depth_key) if k not in f]
  if missing:
    f.close()
    raise DataError(f'NYU labeled file {mat_path!r} has no {missing} datasets (has {sorted(f.keys())})')
  images, depths = f['images'], f[depth_key]
  if images.ndim != 4 or images.shape[1] != 3 or depths.shape != (images.shape[0],) + images.shape[2:]:
    f.close()
    raise DataError(
      f'NYU labeled file {mat_path!r}: expected images (N, 3, W, H) and {depth_key} (N, W, H), '
      f'got {images.shape} and {depths.shape}'
    )
  return f, images, depths


def _select(num_images: int, indices: Optional[Sequence[int]], mat_path: str) -> np.ndarray:
  if indices is None:
    return np.arange(num_images, dtype=np.int64)
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size and (indices.min() < 0 or indices.max() >= num_images):
    raise DataError(f'NYU indices out of range for {mat_path!r}, which holds {num_images} images')
  return indices


def iter_nyu_mat(
  mat_path: str, indices: Optional[Sequence[int]] = None, depth_key: str = 'depths', chunk_size: int = 64
):
  """Yields (indices, images uint8 [n, H, W, 3], depths float32 [n, H, W]) chunks on the host.

  Args:
    mat_path: the labeled .mat file.
    indices: 0-based images to read (any order; read in sorted order), default all.
    depth_key: 'depths' (in-painted) or 'rawDepths' (with 0 holes).
    chunk_size: images per h5py read.
  """
  f, images, depths = _open_mat(mat_path, depth_key)
  with f:
    selected = np.unique(_select(images.shape[0], indices, mat_path))  # h5py wants increasing indices.
    for start in range(0, len(selected), chunk_size):
      chunk = selected[start : start + chunk_size]
      image = np.ascontiguousarray(np.transpose(images[chunk], (0, 3, 2, 1)))
      depth = np.ascontiguousarray(np.transpose(depths[chunk], (0, 2, 1)), dtype=np.float32)
      yield chunk, image, depth


def _resolve_split(mat_path: str, split: str, split_file: Optional[str]) -> Optional[np.ndarray]:
  if split not in SPLITS:
    raise DataError(f'NYU split {split!r}: expected one of {SPLITS}')
  if split == 'all':
    return None
  path = split_file or os.path.join(os.path.dirname(mat_path), SPLIT_FILE)
  if not os.path.isfile(path):
    raise DataError(
      f'NYU split {split!r} of {mat_path!r} needs the official split file (trainNdxs/testNdxs); '
      f'{path!r} does not exist. Pass split_file, or use split "all".'
    )
  return read_nyu_splits(path)[split]


def nyu_mat_dataset(
  mat_path: str,
  split: str = 'all',
  options: Optional[ReadOptions] = None,
  split_file: Optional[str] = None,
  depth_key: str = 'depths',
  chunk_size: int = 64,
) -> tf.data.Dataset:
  """Reads the labeled .mat file on the host into a dataset (small eval sets; see module doc).

  Args:
    mat_path: `nyu_depth_v2_labeled.mat`.
    split: 'train' or 'test' (from `split_file`), or 'all' images.
    options: sharding (by image, before loading, so a shard holds only its images) and
      shuffling.
    split_file: the splits file; default `splits.mat` next to `mat_path`.
    depth_key: 'depths' or 'rawDepths'.
    chunk_size: images per h5py read and per `from_tensor_slices`.

  Returns:
    A dataset of dicts (see the module docstring), in index order unless shuffled.

  Raises:
    DataError: missing or malformed file, missing split file, indices out of range.
  """
  options = options or ReadOptions()
  indices = _resolve_split(mat_path, split, split_file)
  f, images, _ = _open_mat(mat_path, depth_key)
  with f:
    width, height = images.shape[2:]
    selected = np.unique(_select(images.shape[0], indices, mat_path))
  selected = selected[options.shard_index :: options.num_shards]
  # One dataset per chunk, concatenated, so no single copy of the whole set is made.
  ds = tf.data.Dataset.from_tensor_slices(
    (np.zeros([0], np.int64), np.zeros([0, height, width, 3], np.uint8), np.zeros([0, height, width], np.float32))
  )
  for chunk in iter_nyu_mat(mat_path, selected, depth_key, chunk_size):
    ds = ds.concatenate(tf.data.Dataset.from_tensor_slices(chunk))
  if options.shuffle_files:
    ds = ds.shuffle(len(selected), seed=options.seed, reshuffle_each_iteration=True)
  return pipeline.robust_map(ds, lambda item: with_validity(item[1], item[2], item[0]))


def depth_example(image: np.ndarray, depth: np.ndarray, index: int, image_format: str = 'png') -> tf.train.Example:
  """A TFRecord Example: encoded RGB, float32 depth bytes, its size and .mat index."""
  if image_format == 'png':
    encoded = tf.io.encode_png(image).numpy()
  elif image_format == 'jpeg':
    encoded = tf.io.encode_jpeg(image, quality=95).numpy()
  else:
    raise ValueError(f'image_format must be png or jpeg, got {image_format!r}')
  height, width = depth.shape

  def ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

  def data(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  return tf.train.Example(
    features=tf.train.Features(
      feature={
        ENCODED_KEY: data(encoded),
        DEPTH_KEY: data(np.asarray(depth, '<f4').tobytes()),
        'depth/height': ints(height),
        'depth/width': ints(width),
        'image/index': ints(index),
      }
    )
  )


def nyu_mat_to_tfrecords(
  mat_path: str,
  out_dir: str,
  num_shards: int = 1,
  split_indices: Optional[Mapping[str, Sequence[int]]] = None,
  depth_key: str = 'depths',
  image_format: str = 'png',
  chunk_size: int = 64,
) -> Dict[str, List[str]]:
  """Converts the labeled .mat file into TFRecords for `nyu_tfrecords`.

  Args:
    mat_path: `nyu_depth_v2_labeled.mat`.
    out_dir: output folder; files are `<split>-00000-of-0000N`.
    num_shards: files per split (images go round-robin, in index order).
    split_indices: split name -> 0-based indices, e.g. `read_nyu_splits('splits.mat')`;
      default {'all': every image}.
    depth_key: 'depths' or 'rawDepths'.
    image_format: 'png' (lossless, default) or 'jpeg'.
    chunk_size: images per h5py read.

  Returns:
    Split name -> written file paths.

  Raises:
    DataError: missing or malformed .mat file, indices out of range.
  """
  f, images, _ = _open_mat(mat_path, depth_key)
  with f:
    num_images = images.shape[0]
  split_indices = split_indices if split_indices is not None else {'all': np.arange(num_images)}
  tf.io.gfile.makedirs(out_dir)
  written = {}
  for name, indices in split_indices.items():
    indices = _select(num_images, indices, mat_path)
    shards = max(1, min(num_shards, len(indices)))
    paths = [os.path.join(out_dir, f'{name}-{i:05d}-of-{shards:05d}') for i in range(shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
      count = 0
      for chunk, image, depth in iter_nyu_mat(mat_path, indices, depth_key, chunk_size):
        for i in range(len(chunk)):
          example = depth_example(image[i], depth[i], int(chunk[i]), image_format)
          writers[count % shards].write(example.SerializeToString())
          count += 1
    finally:
      for w in writers:
        w.close()
    written[name] = paths
  return written


def parse_depth_record(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses and decodes one converted record (pure TF); raises on a malformed one."""
  parsed = tf.io.parse_single_example(
    serialized,
    {
      ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
      DEPTH_KEY: tf.io.FixedLenFeature([], tf.string),
      'depth/height': tf.io.FixedLenFeature([], tf.int64),
      'depth/width': tf.io.FixedLenFeature([], tf.int64),
      'image/index': tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    },
  )
  image = decode.decode_rgb(parsed[ENCODED_KEY])
  size = tf.stack([parsed['depth/height'], parsed['depth/width']])
  depth = tf.reshape(tf.io.decode_raw(parsed[DEPTH_KEY], tf.float32, little_endian=True), size)
  # A depth map that does not match its image is as unusable as an undecodable one.
  check = tf.debugging.assert_equal(tf.shape(image, tf.int64)[:2], size, message='depth and image sizes differ')
  with tf.control_dependencies([check]):
    depth = tf.identity(depth)
  return with_validity(image, depth, parsed['image/index'])


def nyu_tfrecords(pattern: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads TFRecords written by `nyu_mat_to_tfrecords`; bad records skipped and counted."""
  options = options or ReadOptions()
  files = list_files(pattern, 'NYU depth TFRecord files')
  records = tfrecord_records(files, options, with_source=True)
  return pipeline.robust_map(records, lambda item: parse_depth_record(item[1]), describe=named(': bad depth record'))


def tfds_example_to_depth(example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Converts a tfds `nyu_depth_v2` example ({'image': encoded or uint8, 'depth': float16})."""
  image = example['image']
  if image.dtype == tf.string:
    image = decode.decode_rgb(image)
  return with_validity(image, example['depth'], tf.constant(-1, tf.int64))


def tfds_nyu(name: str, split: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads a prepared tensorflow-datasets `nyu_depth_v2` (never downloads)."""
  options = options or ReadOptions()
  import tensorflow_datasets as tfds

  ds = load_tfds(name, split, options, decoders={'image': tfds.decode.SkipDecoding()})
  missing = {'image', 'depth'} - set(ds.element_spec)
  if missing:
    raise DataError(f'tensorflow-datasets {name!r} is not a depth dataset: no {sorted(missing)} features')
  return pipeline.robust_map(ds, tfds_example_to_depth)


def parse_nyu_spec(rest: str) -> Tuple[str, str]:
  """Splits `<path>[:<split>]` (the part after `nyu:`) into (path, split)."""
  path, sep, split = rest.rpartition(':')
  if sep and split in SPLITS and path:
    return path, split
  return rest, 'all'


def depth_dataset(
  spec: str, options: Optional[ReadOptions] = None, split_file: Optional[str] = None, depth_key: str = 'depths'
) -> tf.data.Dataset:
  """Reads NYU Depth v2 from a source spec.

  Specs: `nyu:<labeled .mat>[:train|test|all]` (host-loaded, split from `split_file`,
  default `splits.mat` next to the .mat), `nyu:<TFRecord glob>` (from
  `nyu_mat_to_tfrecords`; the split is in the file names) or `tfds:nyu_depth_v2:<split>`.

  Args:
    spec: the source.
    options: sharding, order, data_dir.
    split_file: the .mat reader's split file.
    depth_key: the .mat reader's depth dataset, 'depths' or 'rawDepths'.

  Returns:
    A dataset of dicts (see the module docstring), not batched, not repeated.

  Raises:
    DataError: bad spec, missing file or split file, empty glob, unavailable tfds dataset.
  """
  options = options or ReadOptions()
  kind, sep, rest = spec.partition(':')
  if kind == 'nyu' and sep and rest:
    path, split = parse_nyu_spec(rest)
    if path.lower().endswith('.mat'):
      return nyu_mat_dataset(path, split, options, split_file, depth_key)
    if split != 'all':
      raise DataError(f'depth source {spec!r}: a TFRecord glob has no split suffix (the split is in its file names)')
    return nyu_tfrecords(path, options)
  if kind == 'tfds':
    source = parse_source(spec)
    return tfds_nyu(source.location, source.split, options)
  raise DataError(
    f'depth source {spec!r}: expected nyu:<file.mat>[:split], nyu:<TFRecord glob> or tfds:nyu_depth_v2:<split>'
  )
