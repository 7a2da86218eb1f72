"""The `knn` protocol: weighted kNN classification on frozen features, on demand from `mtssl-eval`.

The classifier is `mtssl_tf.train.knn` (DINO / solo-learn: cosine similarity of
L2-normalised features, k nearest bank images vote with weight exp(sim / 0.07),
ties to the lower index), the same one the pre-training monitor runs at compute
ticks; this protocol runs it on any trunk (`--init`), on whole splits by default.

Features: the frozen trunk in inference mode on one centre crop per image (shorter
side `image_size`, crop `crop_size`, as the linear protocol's test view), endpoint
`endpoint` average-pooled to `pool_grid` x `pool_grid` (1: global pooling, the pooled
backbone output DINO and solo-learn use). Bank: the training split (or its first
`bank_size` labelled images in file order); queries: the test split likewise.

`extract` here is shared with the SVM and figure protocols (`svm.py`, `embedding.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.classification import centre_crop, classification_dataset, resize_shorter_side
from mtssl_tf.evaluation.protocol import Column, Context, Protocol
from mtssl_tf.train import knn as knn_lib

NAME = 'knn'
# Any trunk kind's endpoints (`backbone.ENDPOINT_NAMES`); the loaded trunk must have the one named.
ENDPOINTS = backbone.ENDPOINT_NAMES


def check_feature_fields(cfg, section: str) -> None:
  """Checks the feature fields the kNN, SVM and figure sections share, naming `<section>.<key>`."""
  if not backbone.is_endpoint_name(cfg.endpoint):
    raise ConfigError(f'{section}.endpoint: unknown endpoint {cfg.endpoint!r} (one of {ENDPOINTS} or block3/unit_NN)')
  for key in ('pool_grid', 'batch_size'):
    if getattr(cfg, key) < 1:
      raise ConfigError(f'{section}.{key}: must be positive, got {getattr(cfg, key)}')
  if cfg.crop_size < 32 or cfg.image_size < cfg.crop_size:
    raise ConfigError(
      f'{section}.crop_size / image_size: need 32 <= crop_size <= image_size, got {cfg.crop_size}, {cfg.image_size}'
    )


def feature_fn(ctx: Context, endpoint: str, pool_grid: int) -> Callable[[tf.Tensor], tf.Tensor]:
  """uint8 images -> float32 [B, grid * grid * C] pooled endpoint features of the frozen trunk."""
  trunk, to_input = ctx.trunk(), ctx.input_fn()

  @tf.function(reduce_retracing=True)
  def features(images):
    endpoints = trunk(to_input(images), training=False)
    if endpoint not in endpoints:
      raise ConfigError(f'{ctx.name}.endpoint: the trunk has no endpoint {endpoint!r} (it has {sorted(endpoints)})')
    return knn_lib.adaptive_avg_pool(endpoints[endpoint], pool_grid)

  return features


def extract(
  dataset: tf.data.Dataset,
  features: Callable[[tf.Tensor], tf.Tensor],
  label_key: str = 'label',
  limit: int = 0,
  keep_images: int = 0,
  thumbnail: int = 64,
) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
  """Features and labels of a batched dataset of {'image' uint8, label_key}, in order.

  Args:
    dataset: test batches (one pass).
    features: `feature_fn`'s function.
    label_key: the label field.
    limit: stop after this many examples (0: all).
    keep_images: also return the first this many images, resized to `thumbnail`.
    thumbnail: side of the kept images.

  Returns:
    (float32 [N, D], labels [N, ...], uint8 [min(N, keep_images), t, t, 3] or None).

  Raises:
    ValueError: the dataset is empty.
  """
  feats, labels, images, count = [], [], [], 0
  for batch in dataset:
    if limit and count >= limit:
      break
    take = batch['image'][: limit - count] if limit else batch['image']
    feats.append(features(take).numpy())
    labels.append(batch[label_key][: len(take)].numpy())
    if keep_images and count < keep_images:
      small = tf.image.resize(take[: keep_images - count], [thumbnail, thumbnail], antialias=True)
      images.append(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8).numpy())
    count += len(take)
  if not feats:
    raise ValueError('no examples to extract features from')
  kept = np.concatenate(images) if images else None
  return np.concatenate(feats).astype(np.float32), np.concatenate(labels), kept


def test_view(image: tf.Tensor, image_size: int, crop_size: int) -> tf.Tensor:
  """The evaluation view of an image: shorter side `image_size`, centre `crop_size` crop (uint8)."""
  return centre_crop(resize_shorter_side(image, image_size), crop_size)


@dataclasses.dataclass
class KnnEvalConfig(Config):
  """Weighted kNN classification of frozen features (module docstring).

  Attributes:
    train_source: the bank's labelled images ('' = the world's 'images_train').
    test_source: the queries' labelled images ('' = the world's 'images_validation').
    data_dir: tensorflow-datasets data directory for `tfds:` sources.
    label_offset: subtracted from labels (1 for Model Garden ImageNet).
    bank_size: bank images (0: the whole training split).
    query_size: query images (0: the whole test split).
    image_size: shorter side images are resized to (ImageNet convention: 256).
    crop_size: side of the centre crop (224).
    endpoint: trunk endpoint ('final': block 3 after BN-ReLU).
    pool_grid: average pooling grid (1: global, DINO / solo-learn).
    k: neighbour counts (DINO reports 20 and 200).
    temperature: vote temperature T (DINO / solo-learn: 0.07).
    batch_size: images per forward pass.
    chunk_size: queries per similarity block (bounds memory at chunk x bank floats).
  """

  train_source: str = ''
  test_source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  bank_size: int = 0
  query_size: int = 0
  image_size: int = 256
  crop_size: int = 224
  endpoint: str = 'final'
  pool_grid: int = 1
  k: Tuple[int, ...] = knn_lib.K_VALUES
  temperature: float = knn_lib.TEMPERATURE
  batch_size: int = 100
  chunk_size: int = 256

  def validate(self) -> None:
    check_feature_fields(self, NAME)
    for key in ('bank_size', 'query_size', 'label_offset'):
      if getattr(self, key) < 0:
        raise ConfigError(f'knn.{key}: must be >= 0, got {getattr(self, key)}')
    if not self.k or min(self.k) < 1 or len(set(self.k)) != len(self.k):
      raise ConfigError(f'knn.k: need distinct positive neighbour counts, got {list(self.k)}')
    if self.temperature <= 0 or self.chunk_size < 1:
      raise ConfigError(f'knn.temperature / chunk_size: must be positive, got {self.temperature}, {self.chunk_size}')


def labelled_split(cfg, spec: str) -> tf.data.Dataset:
  """A labelled image source as test batches (centre crops, in file order)."""
  return classification_dataset(
    spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size, training=False,
    label_offset=cfg.label_offset, data_dir=cfg.data_dir,
  )  # fmt: skip


class KnnProtocol(Protocol):
  """Weighted kNN top-1/top-5 of frozen features (DINO / solo-learn protocol)."""

  name = NAME
  summary = 'weighted kNN (cosine, T=0.07) on frozen pooled features, k=20 and 200 (top-1/top-5)'
  config_class = KnnEvalConfig
  source_fields = ('train_source', 'test_source')
  world_sources = ('images_train', 'images_validation')
  headline = ('top1_k20', 'top5_k20', 'top1_k200', 'top5_k200')
  columns = (Column('kNN top-1 k=20 (%)', 'top1_k20', 100.0), Column('kNN top-1 k=200 (%)', 'top1_k200', 100.0))

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: KnnEvalConfig = ctx.section
    features = feature_fn(ctx, cfg.endpoint, cfg.pool_grid)
    bank, bank_labels, _ = extract(labelled_split(cfg, ctx.train_spec), features, limit=cfg.bank_size)
    queries, query_labels, _ = extract(labelled_split(cfg, ctx.test_spec), features, limit=cfg.query_size)
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    scores = knn_lib.knn_accuracy(
      bank, bank_labels, queries, query_labels, num_classes, cfg.k, cfg.temperature, cfg.chunk_size
    )
    writer = tf.summary.create_file_writer(ctx.out_dir)
    with writer.as_default(step=0):
      for key, value in scores.items():
        tf.summary.scalar(f'knn/{key}', value)
    writer.flush()
    results = dict(
      scores,
      protocol={
        'classifier': f'weighted kNN: cosine of L2-normalised features, weights exp(sim/{cfg.temperature}), '
        'k capped at the bank size, ties to the lower bank index / class index',
        'features': f'{cfg.endpoint} average-pooled to {cfg.pool_grid}x{cfg.pool_grid} ({bank.shape[1]} dims)',
        'view': f'centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
        'preprocessing': ctx.preprocessing,
        'init_source': ctx.init,
      },
      counts={'bank': len(bank), 'queries': len(queries), 'num_classes': num_classes},
    )
    path = ctx.write_results(results)
    if ctx.progress:
      logging.info('knn: %s -> %s', ', '.join(f'{k} {v:.4f}' for k, v in scores.items()), path)
    return results
