"""The images nearest to cluster centres (Noroozi et al. 2018, Figure 5), from pseudo-label records.

`assign` stores with every pseudo-labelled image its squared distance to its centre,
so the nearest images of each cluster are a single streaming pass over the records:
a bounded heap per cluster holds only the current best few encoded images.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Dict, List

import numpy as np
import tensorflow as tf

from mtssl_tf.data.images import ENCODED_KEY, LABEL_KEY
from mtssl_tf.transfer.assign import DISTANCE_KEY, ID_KEY, pseudo_label_spec

_FEATURES = {
  ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
  LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
  ID_KEY: tf.io.FixedLenFeature([], tf.int64),
  DISTANCE_KEY: tf.io.FixedLenFeature([], tf.float32),
}


@dataclasses.dataclass
class ClusterSamples:
  """One cluster's nearest images.

  Attributes:
    cluster: the pseudo-label.
    size: images assigned to it in all.
    ids: image ids, nearest first.
    distances: their squared distances to the centre.
    images: uint8 [n, image_size, image_size, 3], centre-cropped squares.
  """

  cluster: int
  size: int
  ids: List[int]
  distances: List[float]
  images: np.ndarray


def _square(encoded: bytes, size: int) -> np.ndarray:
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  side = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
  image = tf.image.resize_with_crop_or_pad(image, side, side)
  return tf.cast(tf.image.resize(image, (size, size), antialias=True), tf.uint8).numpy()


def nearest_to_centres(
  directory: str, num_clusters: int = 8, per_cluster: int = 8, image_size: int = 64
) -> List[ClusterSamples]:
  """The `per_cluster` images nearest to the centre of each of the `num_clusters` largest clusters.

  Args:
    directory: a transfer run's `pseudo_labels/` folder (written by `assign`).
    num_clusters: clusters shown (the largest, ties by label).
    per_cluster: images per cluster, nearest first.
    image_size: side of the returned square thumbnails.

  Raises:
    FileNotFoundError: no pseudo-label records in `directory`.
  """
  files = sorted(tf.io.gfile.glob(pseudo_label_spec(directory).split(':', 1)[1]))
  if not files:
    raise FileNotFoundError(f'{directory}: no pseudo-label records (run `mtssl-transfer assign` first)')
  heaps: Dict[int, list] = {}
  sizes: Dict[int, int] = {}
  # Parsed in batches but kept in a Python heap: only per_cluster encoded images per
  # cluster are ever held, whatever the dataset's size.
  data = tf.data.TFRecordDataset(files).batch(256).map(lambda r: tf.io.parse_example(r, _FEATURES))
  for batch in data.as_numpy_iterator():
    for encoded, label, image_id, distance in zip(
      batch[ENCODED_KEY], batch[LABEL_KEY], batch[ID_KEY], batch[DISTANCE_KEY]
    ):
      label = int(label)
      sizes[label] = sizes.get(label, 0) + 1
      heap = heaps.setdefault(label, [])
      item = (-float(distance), -int(image_id), encoded)  # Max-heap on distance; ties keep lower ids.
      if len(heap) < per_cluster:
        heapq.heappush(heap, item)
      elif item > heap[0]:
        heapq.heapreplace(heap, item)
  chosen = sorted(sizes, key=lambda c: (-sizes[c], c))[:num_clusters]
  out = []
  for cluster in chosen:
    best = sorted(heaps[cluster], key=lambda item: (-item[0], -item[1]))
    out.append(
      ClusterSamples(
        cluster=cluster,
        size=sizes[cluster],
        ids=[-item[1] for item in best],
        distances=[-item[0] for item in best],
        images=np.stack([_square(item[2], image_size) for item in best]),
      )
    )
  return out
