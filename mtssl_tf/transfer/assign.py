"""Steps 2 and 3 of knowledge transfer: k-means on the features, pseudo-labels for images.

`run_cluster` fits `KMeans` on the feature shards (streamed chunk by chunk, never all
in memory) and writes `clusters/kmeans.npz` and `clusters/summary.json` (objective per
iteration, cluster sizes, agreement with the true labels where known, seconds). A
rerun with the same k-means config on the same features is skipped.

`run_assign` labels each image of `assign.source` with its nearest centre. The images
may differ from the clustered ones (Noroozi et al. cluster one dataset and transfer
to another): they then go through the same extractor first. Pseudo-labels are
written as Model Garden image TFRecords, one per feature shard, readable by our
`tfrecord:` reader:

* `image/encoded`: the image's original bytes (or a resized JPEG re-encoding);
* `image/class/label`: the pseudo-label, in [0, k);
* `image/original_label`: the source's label (-1: none), for diagnostics only;
* `image/id`, `image/cluster_distance`: the image id and squared distance to its centre.

Each shard's assignments are also kept as `assignments-NNNNN.npz`; the TFRecord is
renamed into place last, so a restart redoes only unfinished shards. `summary.json`
(written when all shards are) holds the cluster-size histogram: empty clusters and
min/median/max sizes, the numbers that say whether k suits the data.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import to_plain
from mtssl_tf.data import decode
from mtssl_tf.data.images import ENCODED_KEY, LABEL_KEY
from mtssl_tf.evaluation.classification import resize_shorter_side
from mtssl_tf.transfer.config import OUTPUTS, TransferConfig, world_sources
from mtssl_tf.transfer.extract import FeatureShards, Progress, build_featurizer, extract_features, image_records
from mtssl_tf.transfer.kmeans import KMeans

MODEL = 'kmeans.npz'
SUMMARY = 'summary.json'
RECORDS = 'train-{:05d}.tfrecord'
ORIGINAL_LABEL_KEY = 'image/original_label'
ID_KEY = 'image/id'
DISTANCE_KEY = 'image/cluster_distance'


# ----------------------------------------------------------------------------- statistics


def cluster_sizes(labels: np.ndarray, num_clusters: int) -> Dict[str, Any]:
  """Histogram statistics of cluster assignments: empty clusters, min/median/max/mean size, all sizes."""
  sizes = np.bincount(np.asarray(labels, np.int64), minlength=num_clusters)
  return {
    'num_clusters': int(num_clusters),
    'images': int(sizes.sum()),
    'empty': int((sizes == 0).sum()),
    'min': int(sizes.min()),
    'median': float(np.median(sizes)),
    'max': int(sizes.max()),
    'mean': float(sizes.mean()),
    'sizes': sizes.tolist(),
  }


def format_sizes(stats: Dict[str, Any]) -> str:
  """One line of `cluster_sizes`, for logs and the binary's output."""
  return (f'{stats["images"]} images in {stats["num_clusters"]} clusters: {stats["empty"]} empty, size min '
          f'{stats["min"]}, median {stats["median"]:g}, max {stats["max"]}')  # fmt: skip


def label_agreement(pseudo: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
  """NMI (arithmetic normalisation) and purity of the clusters w.r.t. the true labels of labelled images.

  A diagnostic only: the labels are never used to make pseudo-labels. {} without labels.
  """
  keep = np.asarray(labels) >= 0
  if not keep.any():
    return {}
  a = np.unique(np.asarray(pseudo)[keep], return_inverse=True)[1]
  b = np.unique(np.asarray(labels)[keep], return_inverse=True)[1]
  table = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(table, (a, b), 1)
  p = table / table.sum()
  pa, pb = p.sum(1), p.sum(0)
  nz = p > 0
  mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
  ha, hb = float(-(pa * np.log(pa)).sum()), float(-(pb * np.log(pb)).sum())
  nmi = 2 * mi / (ha + hb) if ha + hb > 0 else 1.0
  return {'labelled_images': int(keep.sum()), 'nmi': nmi, 'purity': float(table.max(1).sum() / table.sum())}


def _write_json(path: str, data: Dict[str, Any]) -> None:
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True, default=float)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_summary(directory: str) -> Optional[Dict[str, Any]]:
  """`<directory>/summary.json`, or None."""
  path = os.path.join(directory, SUMMARY)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- cluster


def cluster_features(config, features_dir: str, out_dir: str, progress: bool = True) -> Dict[str, Any]:
  """Fits k-means on the shards in `features_dir`; writes the model and summary to `out_dir`.

  Args:
    config: a `KMeansConfig`.
    features_dir: a complete extraction (`extract.extract_features`).
    out_dir: where `kmeans.npz` and `summary.json` go.
    progress: log k-means progress.

  Returns:
    The summary; `skipped` is True when a model of this config on these features existed.

  Raises:
    FileNotFoundError: no complete extraction in `features_dir`.
  """
  shards = FeatureShards(features_dir)
  features = {'fingerprint': shards.manifest['fingerprint'], 'rows': shards.num_rows, 'dims': shards.dims}
  plain = json.loads(json.dumps(to_plain(config)))
  model_path = os.path.join(out_dir, MODEL)
  done = read_summary(out_dir)
  if done and tf.io.gfile.exists(model_path) and done['config'] == plain and done['features'] == features:
    logging.info('cluster: %s already holds k-means of this config on these features; skipped', out_dir)
    return dict(done, skipped=True)
  tf.io.gfile.makedirs(out_dir)
  start = time.perf_counter()
  kmeans = KMeans(config).fit(shards, progress=progress)
  fit_seconds = time.perf_counter() - start
  kmeans.save(model_path)
  labels, distances = _assign_all(kmeans, shards)
  sizes = cluster_sizes(labels, config.num_clusters)
  summary = {
    'config': plain,
    'features': features,
    'objective_history': [float(x) for x in kmeans.objective_history],
    # The work the distance bounds left per assignment pass (fractions of the sample and of n x k).
    'searched_history': [round(x, 6) for x in kmeans.active_history],
    'scored_history': [round(x, 6) for x in kmeans.scored_history],
    'mean_sq_distance': float(distances.mean()),
    'sizes': sizes,
    'agreement': label_agreement(labels, shards.all_labels()),
    'seconds': {'fit': fit_seconds, 'total': time.perf_counter() - start},
    'model': model_path,
  }
  _write_json(os.path.join(out_dir, SUMMARY), summary)  # Last: it marks the step done.
  if progress:
    logging.info('cluster: %s; %.1f s -> %s', format_sizes(sizes), summary['seconds']['total'], model_path)
  return dict(summary, skipped=False)


def _assign_all(kmeans, shards: FeatureShards) -> Tuple[np.ndarray, np.ndarray]:
  parts = [kmeans.assign(chunk) for chunk in shards]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run_cluster(cfg: TransferConfig, model_dir: str, progress: bool = True) -> Dict[str, Any]:
  """The `cluster` step: `<model_dir>/features` -> `<model_dir>/clusters`."""
  return cluster_features(
    cfg.cluster, os.path.join(model_dir, OUTPUTS['extract']), os.path.join(model_dir, OUTPUTS['cluster']), progress
  )


# ----------------------------------------------------------------------------- assign


def pseudo_label_spec(directory: str) -> str:
  """The `tfrecord:` spec of the pseudo-labelled images in `directory`."""
  return 'tfrecord:' + os.path.join(directory, RECORDS.replace('{:05d}', '*'))


def _example(encoded: bytes, pseudo: int, label: int, image_id: int, distance: float) -> bytes:
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

  feature = {
    ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
    LABEL_KEY: ints(pseudo),
    ORIGINAL_LABEL_KEY: ints(label),
    ID_KEY: ints(image_id),
    DISTANCE_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=[float(distance)])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _encoded_stream(spec: str, start: int, data_dir: str, label_offset: int, reencode_size: int,
                    quality: int) -> Iterator[Tuple[int, bytes]]:  # fmt: skip
  """(id, bytes) of the source from image id `start`, in order, optionally re-encoded."""
  ds = image_records(spec, data_dir, label_offset).skip(start)
  if reencode_size:

    def reencode(index, record):
      image = resize_shorter_side(decode.decode_rgb(record['encoded']), reencode_size)
      return index, {'encoded': tf.io.encode_jpeg(image, quality=quality), 'label': record['label']}

    ds = ds.map(reencode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
  for ids, records in ds.batch(256).prefetch(tf.data.AUTOTUNE):
    yield from zip(ids.numpy().tolist(), records['encoded'].numpy().tolist())


def _seek(stream: Iterator[Tuple[int, bytes]], image_id: int) -> Optional[bytes]:
  """The bytes of image `image_id` from the id-ordered stream, or None if it is not there.

  Ids the features skip (images that failed to decode at extraction) are passed over.
  """
  for found, encoded in stream:
    if found == image_id:
      return encoded
    if found > image_id:
      return None
  return None


def _shard_done(out_dir: str, index: int) -> bool:
  return tf.io.gfile.exists(os.path.join(out_dir, RECORDS.format(index)))


def assign_pseudo_labels(
  kmeans,
  shards: FeatureShards,
  spec: str,
  out_dir: str,
  *,
  data_dir: str = '',
  label_offset: int = 0,
  reencode_size: int = 0,
  jpeg_quality: int = 90,
  max_shards: Optional[int] = None,
  progress: bool = True,
) -> Dict[str, Any]:
  """Writes pseudo-labelled TFRecords of `spec`, one per feature shard (module docstring).

  Args:
    kmeans: a fitted `KMeans`.
    shards: the features of `spec` (same extractor as the clustered ones).
    spec: the image source those features were extracted from.
    out_dir: output folder.
    data_dir: tensorflow-datasets data directory.
    label_offset: as at extraction.
    reencode_size: 0 passes the original bytes; > 0 re-encodes at this shorter side.
    jpeg_quality: quality of the re-encoding.
    max_shards: stop after this many new shards (tests); the summary is then not written.
    progress: log progress.

  Returns:
    The summary (also `summary.json`): `records` spec, `sizes` histogram, `agreement`.

  Raises:
    ValueError: the source no longer yields the images the features were extracted from.
  """
  tf.io.gfile.makedirs(out_dir)
  done = 0
  while done < len(shards) and _shard_done(out_dir, done):
    done += 1
  for path in tf.io.gfile.glob(os.path.join(out_dir, 'train-*')) + tf.io.gfile.glob(os.path.join(out_dir, 'assign*')):
    if int(os.path.basename(path).split('-')[1][:5]) >= done:
      tf.io.gfile.remove(path)  # An unfinished shard (or later ones) is redone.
  if done < len(shards) and tf.io.gfile.exists(os.path.join(out_dir, SUMMARY)):
    tf.io.gfile.remove(os.path.join(out_dir, SUMMARY))
  start = time.perf_counter()
  meter = Progress('assign', sum(s['rows'] for s in shards.shards[:done]), shards.num_rows, progress)
  stream = None
  for index in range(done, len(shards)):
    ids, labels = shards.ids(index), shards.labels(index)
    pseudo, distances = kmeans.assign(shards.features(index))
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, pseudo=pseudo, distances=distances, labels=labels)
    with tf.io.gfile.GFile(os.path.join(out_dir, f'assignments-{index:05d}.npz'), 'wb') as f:
      f.write(buffer.getvalue())
    if stream is None:
      stream = _encoded_stream(spec, int(ids[0]), data_dir, label_offset, reencode_size, jpeg_quality)
    path = os.path.join(out_dir, RECORDS.format(index))
    tmp = os.path.join(out_dir, f'.{RECORDS.format(index)}.tmp')
    with tf.io.TFRecordWriter(tmp) as writer:
      for image_id, p, label, d in zip(ids.tolist(), pseudo.tolist(), labels.tolist(), distances.tolist()):
        encoded = _seek(stream, image_id)
        if encoded is None:
          raise ValueError(f'{spec!r} no longer holds image id {image_id} of feature shard {index}; re-extract')
        writer.write(_example(encoded, p, label, image_id, d))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    meter.update(len(ids))
    if max_shards is not None and index + 1 - done >= max_shards and index + 1 < len(shards):
      return {'complete': False, 'shards': index + 1}
  pseudo, labels = [], []
  for index in range(len(shards)):
    with tf.io.gfile.GFile(os.path.join(out_dir, f'assignments-{index:05d}.npz'), 'rb') as f:
      data = np.load(io.BytesIO(f.read()))
      pseudo.append(data['pseudo'])
      labels.append(data['labels'])
  pseudo, labels = np.concatenate(pseudo), np.concatenate(labels)
  sizes = cluster_sizes(pseudo, int(kmeans.centroids.shape[0]))
  summary = {
    'complete': True,
    'source': spec,
    'features': shards.directory,
    'records': pseudo_label_spec(out_dir),
    'shards': len(shards),
    'num_clusters': sizes['num_clusters'],
    'sizes': sizes,
    'agreement': label_agreement(pseudo, labels),
    'reencode_size': reencode_size,
    'seconds': time.perf_counter() - start,
  }
  _write_json(os.path.join(out_dir, SUMMARY), summary)
  if progress:
    logging.info('assign: %s -> %s', format_sizes(sizes), summary['records'])
  return summary


def run_assign(cfg: TransferConfig, model_dir: str, max_shards: Optional[int] = None, progress: bool = True):
  """The `assign` step: pseudo-labels of `assign.source` (default: the clustered images) in `pseudo_labels/`.

  Raises:
    FileNotFoundError: no k-means model (run cluster first) or no features.
  """
  world_sources(cfg)
  model_path = os.path.join(model_dir, OUTPUTS['cluster'], MODEL)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(f'no k-means model at {model_path} (run the cluster step first)')
  kmeans = KMeans.load(model_path)
  out_dir = os.path.join(model_dir, OUTPUTS['assign'])
  spec = cfg.assign.source or cfg.extract.source
  extract_cfg, features_dir = cfg.extract, os.path.join(model_dir, OUTPUTS['extract'])
  if spec != cfg.extract.source:
    # Another dataset: the same extractor, its own shards (resumable like the clustered ones).
    extract_cfg = copy.deepcopy(cfg.extract)
    extract_cfg.source, extract_cfg.num_images = spec, 0
    extract_cfg.data_dir, extract_cfg.label_offset = cfg.assign.data_dir, cfg.assign.label_offset
    # The clustered images' extractor: a HOG bag of words keeps their vocabulary.
    featurizer = build_featurizer(cfg.extract, features_dir, progress)
    features_dir = os.path.join(out_dir, 'features')
    extract_features(extract_cfg, features_dir, featurizer=featurizer, progress=progress)
  shards = FeatureShards(features_dir)
  clustered = read_summary(os.path.join(model_dir, OUTPUTS['cluster']))
  if clustered and clustered['features']['dims'] != shards.dims:
    raise ValueError(
      f'features in {features_dir} have {shards.dims} dims, the clustered ones {clustered["features"]["dims"]}'
    )
  return assign_pseudo_labels(
    kmeans, shards, spec, out_dir, data_dir=extract_cfg.data_dir, label_offset=extract_cfg.label_offset,
    reencode_size=cfg.assign.reencode_size, jpeg_quality=cfg.assign.jpeg_quality, max_shards=max_shards,
    progress=progress,
  )  # fmt: skip
