"""Data source specs (`tfrecord:/data/train-*`, `tfds:imagenet2012:train`, `folder:/photos`, `list:<file>@<root>`).

Kinds of labelled image source:
  tfrecord:<glob>         Model Garden-style image TFRecords (`image/encoded`, `image/class/label`).
  tfds:<name>:<split>     a tensorflow-datasets dataset prepared offline.
  folder:<dir>            image files; labels from first-level sub-folder names (sorted).
  list:<list file>@<root> an image list as Places ships it: one `<relative path> <label>` per line,
                          paths relative to `<root>` (the part after the last '@').

The `list:` kind reads the Places datasets as distributed, whose first-level folders are
letters (`a/airfield/...`), so `folder:` would label every image by its letter. The
formats below are as the dataset's own documentation and public readers show them
(read, not run): the Places365 development kit README (training images listed with
their category ids in `places365_train_*.txt`; 'each line [of places365_val.txt] contains
one image filename and its corresponding scene category label (from 0 to 364)';
fine-grained categories nest, e.g. `s/swimming_pool/indoor`); pytorch/vision
`torchvision/datasets/places365.py` (splits each line at whitespace, strips the leading
'/', joins the tarballs' `data_256` / `val_256` folders, which it renames
`data_256_standard`); for Places205 a tensorpack `place_lmdb_generator.py` (splits
`trainvalsplit_places205/train_places205.csv` lines at ' ' and matches the paths after
`data/vision/torralba/deeplearning/images256/` in imagesPlaces205_resize.tar) and
self-supervised benchmark configs with that folder as image prefix and the csv files as
annotation files:
  Places365-Standard  `list:<root>/places365_train_standard.txt@<root>/data_256`, lines
                      '/a/airfield/00000001.jpg 0' (a leading '/'; some classes one level
                      deeper, '/a/apartment_building/outdoor/...');
                      `list:<root>/places365_val.txt@<root>/val_256`, lines
                      'Places365_val_00000001.jpg 165' (a flat folder). Labels 0..364, the ids
                      of `categories_places365.txt` ('/a/airfield 0').
  Places205           `list:<root>/trainvalsplit_places205/train_places205.csv@<images256>`
                      (and `val_places205.csv`), lines 'a/abbey/00000000.jpg 0', space
                      separated despite the extension; labels 0..204; `<images256>` is
                      `data/vision/torralba/deeplearning/images256` where the images archive
                      was unpacked (configs/eval/places_linear.yaml: a link `<root>/images256`).
A line with only a path is unlabelled (label -1) when every line of its file is so
(e.g. `places365_test.txt`); blank lines are skipped; paths hold no whitespace.

Paths are checked when the pipeline is built, so a missing folder, list file or root, or
an empty glob is a clear error on the coordinator before any server starts training.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

import tensorflow as tf

KINDS = ('tfrecord', 'tfds', 'folder', 'list')


class DataError(ValueError):
  """A data source is missing, empty or malformed. The message names the path or spec."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed source spec.

  Attributes:
    kind: 'tfrecord', 'tfds', 'folder' or 'list'.
    location: file glob (tfrecord), folder path (folder), dataset name (tfds) or list
      file (list).
    split: tfds split, e.g. 'train' or 'validation[:10%]'; None for files.
    root: the folder a list's paths are relative to (list); None for the others.
  """

  kind: str
  location: str
  split: Optional[str] = None
  root: Optional[str] = None


def parse_source(spec: str) -> Source:
  """Parses `kind:location[:split]` or `list:<list file>@<image root>`.

  Examples: `tfrecord:/data/imagenet/train-*`, `folder:/photos`,
  `tfds:imagenet2012:train`, `tfds:voc/2007:test`,
  `list:/data/places205/trainvalsplit_places205/train_places205.csv@/data/places205/images256`.
  A `list:` spec splits at its last '@' (so the image root holds none); both parts are
  required. Nothing is read here (see `images.read_image_list`).

  Raises:
    DataError: unknown kind or missing parts, naming the spec.
  """
  kind, sep, rest = spec.partition(':')
  if not sep or kind not in KINDS or not rest:
    raise DataError(f'data source {spec!r}: expected one of {", ".join(k + ":..." for k in KINDS)}')
  if kind == 'tfds':
    name, sep, split = rest.partition(':')
    if not name or not sep or not split:
      raise DataError(f'data source {spec!r}: expected tfds:<name>:<split>, e.g. tfds:imagenet2012:train')
    return Source(kind, name, split)
  if kind == 'list':
    list_file, sep, root = rest.rpartition('@')
    if not list_file or not sep or not root:
      raise DataError(
        f'data source {spec!r}: expected list:<list file>@<image root>, e.g. '
        'list:/data/places365/places365_train_standard.txt@/data/places365/data_256'
      )
    return Source(kind, list_file, root=root)
  return Source(kind, rest)


def list_files(pattern: str, what: str = 'files') -> List[str]:
  """Sorted files matching a glob; an empty match is an error naming the pattern."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    parent = os.path.dirname(pattern) or '.'
    hint = '' if tf.io.gfile.exists(parent) else f' (folder {parent!r} does not exist)'
    raise DataError(f'no {what} match {pattern!r}{hint}')
  return files


def require_dir(path: str, what: str = 'folder') -> str:
  """Returns `path` if it is a directory, else raises a DataError naming it."""
  if not tf.io.gfile.isdir(path):
    raise DataError(f'{what} {path!r} does not exist or is not a directory')
  return path
