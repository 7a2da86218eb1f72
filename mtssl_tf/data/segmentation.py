"""PASCAL VOC semantic segmentation data: `SegmentationClass` label PNGs and `ImageSets/Segmentation` splits.

A source is `vocseg:<folder>:<split>`, where <folder> is a VOC year folder holding
`JPEGImages/`, `SegmentationClass/` and `ImageSets/Segmentation/<split>.txt` (e.g.
`/data/VOCdevkit/VOC2012`), or a VOCdevkit root with a `VOC2012/` folder. Nothing is
downloaded. The synthetic world writes its scenes in this layout (`segmentation_train`,
`segmentation_val` in its manifest).

Labels follow the VOC devkit: index 0 is background, 1..20 the classes of `VOC_CLASSES`
in order, 255 void (object outlines and ambiguous pixels; ignored by the loss and the
scores). The devkit stores them as palette PNGs whose palette is `voc_colormap()`
(devkit `VOClabelcolormap.m`); TensorFlow's PNG decoder expands palettes to RGB, so
colours are mapped back to indices, and an unknown colour is an error. Single-channel
PNGs (index images, as converted SBD labels are often stored) are read as indices.
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from mtssl_tf.data import decode, pipeline
from mtssl_tf.data.detection import VOC_CLASSES
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.sources import DataError, require_dir

SEG_CLASSES = ('background',) + tuple(VOC_CLASSES)
VOID = 255
_KIND = 'vocseg'


def voc_colormap(count: int = 256) -> np.ndarray:
  """uint8 [count, 3]: the devkit's label colours (VOClabelcolormap.m: index bits spread over R, G, B)."""
  colours = np.zeros((count, 3), np.uint8)
  for index in range(count):
    code, rgb = index, [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
      code >>= 3
    colours[index] = rgb
  return colours


def find_segmentation_dir(root: str) -> str:
  """`root` if it holds `ImageSets/Segmentation`, else `root/VOC2012`.

  Raises:
    DataError: neither does.
  """
  require_dir(root, 'VOC segmentation folder')
  for candidate in (root, os.path.join(root, 'VOC2012')):
    if tf.io.gfile.isdir(os.path.join(candidate, 'ImageSets', 'Segmentation')):
      return candidate
  raise DataError(
    f'VOC segmentation folder {root!r} has no ImageSets/Segmentation (nor VOC2012/ImageSets/Segmentation)'
  )


def read_segmentation_ids(voc_dir: str, split: str) -> List[str]:
  """Image ids of `ImageSets/Segmentation/<split>.txt`.

  Raises:
    DataError: no such split (the message lists the ones there are) or an empty one.
  """
  folder = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
  path = os.path.join(folder, f'{split}.txt')
  if not tf.io.gfile.exists(path):
    known = sorted(f[:-4] for f in tf.io.gfile.listdir(folder) if f.endswith('.txt'))
    raise DataError(f'VOC segmentation split {split!r} not found: no {path!r}; splits present: {known}')
  with tf.io.gfile.GFile(path) as f:
    ids = [line.split()[0] for line in f.read().splitlines() if line.strip()]
  if not ids:
    raise DataError(f'VOC segmentation split {path!r} lists no images')
  return ids


def decode_label(encoded: tf.Tensor, num_classes: int = len(SEG_CLASSES)) -> tf.Tensor:
  """PNG bytes -> uint8 [H, W] class indices (module docstring); fails on a colour outside the palette."""
  image = tf.io.decode_png(encoded, channels=0)

  def from_palette():
    # int32 before the arithmetic: uint8 * 256 overflows under numpy 2's casting rules (current line).
    colours = voc_colormap()[list(range(num_classes)) + [VOID]].astype(np.int32)
    rgb = tf.cast(image[..., :3], tf.int32)
    codes = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    known = tf.constant(colours[:, 0] * 65536 + colours[:, 1] * 256 + colours[:, 2], tf.int32)
    match = tf.equal(codes[..., None], known)
    found = tf.reduce_all(tf.reduce_any(match, axis=-1))
    indices = tf.constant(list(range(num_classes)) + [VOID], tf.int32)
    with tf.control_dependencies([tf.debugging.Assert(found, ['label PNG has a colour outside the VOC palette'])]):
      return tf.cast(tf.gather(indices, tf.argmax(tf.cast(match, tf.int32), axis=-1)), tf.uint8)

  return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.cast(image[..., 0], tf.uint8), from_palette)


def voc_segmentation_dataset(root: str, split: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """{'image': uint8 [H, W, 3], 'label': uint8 [H, W], 'image_id'} per image of a split, in file order.

  Args:
    root: the VOC year folder or a VOCdevkit root (`find_segmentation_dir`).
    split: an `ImageSets/Segmentation` split ('train', 'val', 'trainval').
    options: sharding and order (`shuffle_files`, `seed`); `min_side` is not applied
      (resizing would blur the labels).

  Raises:
    DataError: missing folder, split or label files.
  """
  options = options or ReadOptions()
  voc_dir = find_segmentation_dir(root)
  ids = read_segmentation_ids(voc_dir, split)
  labels = [os.path.join(voc_dir, 'SegmentationClass', f'{i}.png') for i in ids]
  missing = [p for p in labels[:1] + labels[-1:] if not tf.io.gfile.exists(p)]
  if missing:
    raise DataError(f'VOC segmentation split {split!r} of {voc_dir!r}: no label file {missing[0]!r}')
  images = [os.path.join(voc_dir, 'JPEGImages', f'{i}.jpg') for i in ids]
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(images), tf.constant(labels), tf.constant(ids)))
  if options.shuffle_files:
    ds = ds.shuffle(len(ids), seed=options.seed, reshuffle_each_iteration=True)
  if options.num_shards > 1:
    ds = ds.shard(options.num_shards, options.shard_index)

  def read(item):
    # In the robust map: an unreadable file, a label of another size or colour is skipped, counted and named.
    image_path, label_path, image_id = item
    image = decode.decode_rgb(tf.io.read_file(image_path))
    label = decode_label(tf.io.read_file(label_path))
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)))
    with tf.control_dependencies([tf.debugging.Assert(same, ['label and image sizes differ'])]):
      return {'image': tf.identity(image), 'label': tf.identity(label), 'image_id': image_id}

  return pipeline.robust_map(ds, read, describe=lambda item: item[1])


def segmentation_dataset(spec: str, options: Optional[ReadOptions] = None) -> tf.data.Dataset:
  """Reads `vocseg:<VOC year folder or VOCdevkit root>:<split>` (module docstring).

  Raises:
    DataError: a bad spec, or the reader's errors.
  """
  kind, sep, rest = spec.partition(':')
  root, _, split = rest.rpartition(':')
  if kind != _KIND or not sep or not root or not split:
    raise DataError(f'segmentation source {spec!r}: expected {_KIND}:<VOC year folder>:<split>, '
                    f'e.g. {_KIND}:/data/VOCdevkit/VOC2012:val')  # fmt: skip
  return voc_segmentation_dataset(root, split, options)
