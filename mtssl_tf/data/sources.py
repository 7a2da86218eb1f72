"""Data source specs (`tfrecord:/data/train-*`, `tfds:imagenet2012:train`, `folder:/photos`).

Paths are checked when the pipeline is built, so a missing folder or an empty glob is
a clear error on the coordinator before any server starts training.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

import tensorflow as tf

KINDS = ('tfrecord', 'tfds', 'folder')


class DataError(ValueError):
  """A data source is missing, empty or malformed. The message names the path or spec."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed source spec.

  Attributes:
    kind: 'tfrecord', 'tfds' or 'folder'.
    location: file glob (tfrecord), folder path (folder) or dataset name (tfds).
    split: tfds split, e.g. 'train' or 'validation[:10%]'; None for files.
  """

  kind: str
  location: str
  split: Optional[str] = None


def parse_source(spec: str) -> Source:
  """Parses `kind:location[:split]`.

  Examples: `tfrecord:/data/imagenet/train-*`, `folder:/photos`,
  `tfds:imagenet2012:train`, `tfds:voc/2007:test`.

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
