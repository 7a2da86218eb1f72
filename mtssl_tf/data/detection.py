"""PASCAL VOC 2007 detection readers: a VOCdevkit folder or tensorflow-datasets `voc/2007`.

Both readers yield the same dicts:

* 'image': uint8 [H, W, 3];
* 'boxes': float32 [N, 4], normalised [ymin, xmin, ymax, xmax] in [0, 1]. VOC XML
  gives 1-based inclusive pixel corners (x1, y1, x2, y2); they become
  ymin = (y1 - 1) / H, xmin = (x1 - 1) / W, ymax = y2 / H, xmax = x2 / W, i.e. the
  0-based pixel box with exclusive max divided by the decoded image size. tfds stores
  ymin = y1 / H (no 1-based shift), so its mins are moved down by one pixel to match;
* 'classes': int64 [N] in 0..19, indices into `VOC_CLASSES`;
* 'difficult': bool [N], VOC's `difficult` flag (excluded from VOC mAP);
* 'truncated': bool [N], VOC's `truncated` flag;
* 'image_id': string, e.g. '000005';
* 'num_skipped': int64 (see `pipeline.robust_map`).

The XML annotations are parsed once on the host when the dataset is built (a
malformed file or unknown class is a `DataError` naming the file); images are read
and decoded with pure TF ops inside `robust_map`, so the pipeline runs on
ParameterServerStrategy workers and a missing or corrupt JPEG is skipped and counted.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.images import ReadOptions, ensure_min_side
from mtssl_tf.data.sources import DataError, parse_source, require_dir

VOC_CLASSES = (
  'aeroplane',
  'bicycle',
  'bird',
  'boat',
  'bottle',
  'bus',
  'car',
  'cat',
  'chair',
  'cow',
  'diningtable',
  'dog',
  'horse',
  'motorbike',
  'person',
  'pottedplant',
  'sheep',
  'sofa',
  'train',
  'tvmonitor',
)
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def find_voc_dir(root: str, year: str = '2007') -> str:
  """The `VOC<year>` folder of a VOCdevkit root (or `root` itself if it is that folder).

  Raises:
    DataError: neither `root/VOC<year>` nor `root` holds `ImageSets/Main`.
  """
  require_dir(root, 'VOCdevkit folder')
  for candidate in (os.path.join(root, f'VOC{year}'), root):
    if tf.io.gfile.isdir(os.path.join(candidate, 'ImageSets', 'Main')):
      return candidate
  raise DataError(f'VOCdevkit folder {root!r} has no VOC{year}/ImageSets/Main (nor ImageSets/Main)')


def read_split_ids(voc_dir: str, split: str) -> List[str]:
  """Image ids listed in `ImageSets/Main/<split>.txt`.

  Raises:
    DataError: no such split file (the message lists the splits there are).
  """
  main = os.path.join(voc_dir, 'ImageSets', 'Main')
  path = os.path.join(main, f'{split}.txt')
  if not tf.io.gfile.exists(path):
    # Per-class files (`dog_trainval.txt`) are not splits.
    known = sorted(f[:-4] for f in tf.io.gfile.listdir(main) if f.endswith('.txt') and '_' not in f)
    raise DataError(f'VOC split {split!r} not found: no {path!r}; splits present: {known}')
  with tf.io.gfile.GFile(path) as f:
    return [line.split()[0] for line in f.read().splitlines() if line.strip()]


def _text(element: ET.Element, tag: str, path: str) -> str:
  child = element.find(tag)
  if child is None or child.text is None or not child.text.strip():
    raise DataError(f'VOC annotation {path!r}: <{element.tag}> has no <{tag}>')
  return child.text.strip()


def _flag(element: ET.Element, tag: str) -> bool:
  # Absent flags mean 0, as in the devkit's own reader.
  child = element.find(tag)
  return child is not None and child.text is not None and child.text.strip() == '1'


def parse_annotation(path: str) -> Dict[str, np.ndarray]:
  """Parses one VOC XML file.

  Returns:
    {'boxes': float32 [N, 4] 0-based pixel [ymin, xmin, ymax, xmax] with exclusive max
    (VOC's 1-based inclusive corners shifted: y1 - 1, x1 - 1, y2, x2),
    'classes': int64 [N], 'difficult': bool [N], 'truncated': bool [N]}.

  Raises:
    DataError: unreadable or malformed XML, an unknown class name, a missing or
      inverted box; the message names the file.
  """
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      root = ET.fromstring(f.read())
  except ET.ParseError as e:
    raise DataError(f'VOC annotation {path!r} is not valid XML: {e}') from None
  except tf.errors.OpError as e:
    raise DataError(f'VOC annotation {path!r} cannot be read: {e.message}') from None
  boxes, classes, difficult, truncated = [], [], [], []
  for obj in root.findall('object'):
    name = _text(obj, 'name', path).lower()
    if name not in _CLASS_INDEX:
      raise DataError(f'VOC annotation {path!r} names unknown class {name!r}; expected one of {VOC_CLASSES}')
    bndbox = obj.find('bndbox')
    if bndbox is None:
      raise DataError(f'VOC annotation {path!r}: object {name!r} has no <bndbox>')
    try:
      x1, y1, x2, y2 = (float(_text(bndbox, tag, path)) for tag in ('xmin', 'ymin', 'xmax', 'ymax'))
    except ValueError as e:
      raise DataError(f'VOC annotation {path!r}: object {name!r} has a non-numeric box: {e}') from None
    if x2 < x1 or y2 < y1:
      raise DataError(f'VOC annotation {path!r}: object {name!r} has an inverted box {(x1, y1, x2, y2)}')
    boxes.append((y1 - 1, x1 - 1, y2, x2))
    classes.append(_CLASS_INDEX[name])
    difficult.append(_flag(obj, 'difficult'))
    truncated.append(_flag(obj, 'truncated'))
  return {
    'boxes': np.asarray(boxes, np.float32).reshape(-1, 4),
    'classes': np.asarray(classes, np.int64),
    'difficult': np.asarray(difficult, bool),
    'truncated': np.asarray(truncated, bool),
  }


def _normalise(pixel_boxes: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """0-based exclusive-max pixel boxes -> [0, 1] boxes for `image`'s decoded size."""
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.stack([size[0], size[1], size[0], size[1]])
  return tf.clip_by_value(pixel_boxes / scale, 0.0, 1.0)


def voc_dataset(root: str, split: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads a VOCdevkit folder (`<root>/VOC2007/{JPEGImages,Annotations,ImageSets/Main}`).

  Args:
    root: the VOCdevkit folder (or its VOC2007 sub-folder).
    split: an `ImageSets/Main` split: 'trainval', 'test', 'train' or 'val'.
    options: sharding (by image), order and `min_side` (boxes are normalised, so
      upscaling keeps them right).

  Returns:
    A dataset of dicts (see the module docstring), not batched, not repeated.

  Raises:
    DataError: missing folder or split, missing or malformed annotation, unknown class.
  """
  options = options or ReadOptions()
  voc_dir = find_voc_dir(root)
  ids = read_split_ids(voc_dir, split)
  if not ids:
    raise DataError(f'VOC split {split!r} in {voc_dir!r} lists no images')
  annotations = [parse_annotation(os.path.join(voc_dir, 'Annotations', f'{i}.xml')) for i in ids]
  lengths = [len(a['classes']) for a in annotations]

  def ragged(key, dtype):
    values = np.concatenate([a[key] for a in annotations]).astype(dtype)
    return tf.RaggedTensor.from_row_lengths(values, tf.constant(lengths, tf.int64))

  paths = [os.path.join(voc_dir, 'JPEGImages', f'{i}.jpg') for i in ids]
  ds = tf.data.Dataset.from_tensor_slices(
    (
      tf.constant(paths),
      tf.constant(ids),
      ragged('boxes', np.float32),
      ragged('classes', np.int64),
      ragged('difficult', bool),
      ragged('truncated', bool),
    )
  )
  if options.shuffle_files:
    ds = ds.shuffle(len(ids), seed=options.seed, reshuffle_each_iteration=True)
  if options.num_shards > 1:
    ds = ds.shard(options.num_shards, options.shard_index)

  def read(item):
    # Reading inside the robust map: a missing or corrupt JPEG is skipped and counted.
    path, image_id, boxes, classes, difficult, truncated = item
    image = decode.decode_rgb(tf.io.read_file(path))
    return {
      'image': ensure_min_side(image, options.min_side),
      'boxes': _normalise(boxes, image),
      'classes': classes,
      'difficult': difficult,
      'truncated': truncated,
      'image_id': image_id,
    }

  return pipeline.robust_map(ds, read)


def tfds_example_to_detection(example: Dict[str, tf.Tensor], min_side: int = 0) -> Dict[str, tf.Tensor]:
  """Converts a tfds `voc` example to this module's convention (pure TF).

  Args:
    example: {'image': encoded string or uint8 [H, W, 3], 'image/filename': e.g.
      '000005.jpg', 'objects': {'bbox': float32 [N, 4] tfds-normalised, 'label': int64
      [N], 'is_difficult': bool [N], 'is_truncated': bool [N], ...}}.
    min_side: see `ReadOptions.min_side`.

  Returns:
    The module's dict, without 'num_skipped'.
  """
  image = example['image']
  if image.dtype == tf.string:
    image = decode.decode_rgb(image)
  objects = example['objects']
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  # tfds divides VOC's 1-based mins by the size without the shift; undo it.
  shift = tf.stack([1.0 / size[0], 1.0 / size[1], 0.0, 0.0])
  boxes = tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4])
  return {
    'image': ensure_min_side(image, min_side),
    'boxes': tf.clip_by_value(boxes - shift, 0.0, 1.0),
    'classes': tf.cast(objects['label'], tf.int64),
    'difficult': tf.cast(objects['is_difficult'], tf.bool),
    'truncated': tf.cast(objects['is_truncated'], tf.bool),
    'image_id': tf.strings.regex_replace(example['image/filename'], r'\.[^.]*$', ''),
  }


def load_tfds(name: str, split: str, options: ReadOptions, decoders=None) -> tf.data.Dataset:
  """`tfds.load` with no download, sharded per `options`; failures become a `DataError`."""
  import tensorflow_datasets as tfds  # Imported here: it is slow to import and optional per run.

  read_config = tfds.ReadConfig(
    shuffle_seed=options.seed,
    input_context=tf.distribute.InputContext(
      num_input_pipelines=options.num_shards, input_pipeline_id=options.shard_index
    ),
  )
  try:
    return tfds.load(
      name,
      split=split,
      data_dir=options.data_dir,
      download=False,
      shuffle_files=options.shuffle_files,
      decoders=decoders,
      read_config=read_config,
    )
  except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError...).
    raise DataError(
      f'tensorflow-datasets {name!r} split {split!r} is not available in data_dir {options.data_dir!r}: '
      f'{type(e).__name__}: {e}. Prepare it offline with `tfds build` (see BUILD.md).'
    ) from None


def tfds_voc(name: str, split: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads a prepared tensorflow-datasets `voc/2007` (never downloads)."""
  options = options or ReadOptions()
  import tensorflow_datasets as tfds

  # Images stay encoded so that a bad one is skipped by the robust map, not fatal.
  ds = load_tfds(name, split, options, decoders={'image': tfds.decode.SkipDecoding()})
  spec = ds.element_spec
  missing = {'image', 'image/filename', 'objects'} - set(spec)
  if missing:
    raise DataError(f'tensorflow-datasets {name!r} is not a VOC dataset: no {sorted(missing)} features')
  return pipeline.robust_map(ds, lambda example: tfds_example_to_detection(example, options.min_side))


def detection_dataset(spec: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads VOC detection data from `voc:<VOCdevkit root>:<split>` or `tfds:voc/2007:<split>`.

  Args:
    spec: the source; the VOC root is everything between the first and the last ':'.
    options: sharding, order, data_dir, min_side.

  Returns:
    A dataset of dicts (see the module docstring), not batched, not repeated.

  Raises:
    DataError: bad spec, missing folder or split, malformed annotation, unavailable
      tfds dataset.
  """
  options = options or ReadOptions()
  kind, sep, rest = spec.partition(':')
  if kind == 'voc' and sep:
    root, sep, split = rest.rpartition(':')
    if not root or not split:
      raise DataError(
        f'detection source {spec!r}: expected voc:<VOCdevkit root>:<split>, e.g. voc:/data/VOCdevkit:test'
      )
    return voc_dataset(root, split, options)
  if kind == 'tfds':
    source = parse_source(spec)
    return tfds_voc(source.location, source.split, options)
  raise DataError(f'detection source {spec!r}: expected voc:<VOCdevkit root>:<split> or tfds:voc/2007:<split>')
