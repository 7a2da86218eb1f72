"""The `figures` protocol: a t-SNE map of frozen features and a nearest-neighbour retrieval grid.

Two pictures of what a trunk learned, for any trunk `mtssl-eval` can load:

* t-SNE (scikit-learn, van der Maaten & Hinton 2008) of the L2-normalised pooled
  features of up to `tsne_size` held-out images (the test split), coloured by label:
  `tsne.png`, `tsne_pixels` x `tsne_pixels` pixels. Perplexity `perplexity` (30,
  scikit-learn's default), capped at (n - 1) / 3 for small sets; PCA initialisation
  and a fixed `seed`, so a rerun draws the same map.
* Retrieval: the first `queries` test images (left column) and, to their right, their
  `neighbours` most cosine-similar images of the bank (the first `bank_size`
  training images), most similar first, ties to the lower bank index; a neighbour's
  frame is green when it shares the query's label, red otherwise: `retrieval.png`,
  (queries x cell) by ((1 + neighbours) x cell + gap) pixels, cell = thumbnail + 2 x
  frame. Its precision@neighbours (fraction of neighbours with the query's label) is
  the protocol's number.

Both are written as PNG (matplotlib, Agg backend) to `<model_dir>/eval/figures/` and
as TensorBoard images (`figures/tsne`, `figures/retrieval`) in the same folder.
Features are those of the kNN protocol (`knn.extract`: centre crop, endpoint
average-pooled to `pool_grid` x `pool_grid`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.evaluation.knn import check_feature_fields, extract, feature_fn, labelled_split
from mtssl_tf.evaluation.protocol import Column, Context, Protocol
from mtssl_tf.train.knn import l2_normalize

NAME = 'figures'
FRAME = 2  # Pixels of each thumbnail's frame.
GAP = 8  # Pixels between the query column and its neighbours.
_GREEN, _RED, _GREY = (0, 170, 0), (210, 0, 0), (128, 128, 128)


@dataclasses.dataclass
class FiguresConfig(Config):
  """t-SNE and retrieval figures (module docstring).

  Attributes:
    train_source: the retrieval bank ('' = the world's 'images_train').
    test_source: held-out images for t-SNE and queries ('' = 'images_validation').
    data_dir: tensorflow-datasets data directory.
    label_offset: subtracted from labels.
    tsne_size: held-out images in the t-SNE map.
    bank_size: bank images searched.
    queries: query rows of the retrieval grid.
    neighbours: neighbours per query.
    thumbnail: side of a grid thumbnail in pixels.
    tsne_pixels: side of the t-SNE PNG in pixels.
    perplexity: t-SNE perplexity.
    image_size: shorter side images are resized to.
    crop_size: side of the centre crop.
    endpoint: trunk endpoint.
    pool_grid: average pooling grid (1: global).
    batch_size: images per forward pass.
    seed: t-SNE seed.
  """

  train_source: str = ''
  test_source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  tsne_size: int = 1000
  bank_size: int = 2000
  queries: int = 8
  neighbours: int = 8
  thumbnail: int = 64
  tsne_pixels: int = 800
  perplexity: float = 30.0
  image_size: int = 256
  crop_size: int = 224
  endpoint: str = 'final'
  pool_grid: int = 1
  batch_size: int = 100
  seed: int = 0

  def validate(self) -> None:
    check_feature_fields(self, NAME)
    for key in ('tsne_size', 'bank_size', 'queries', 'neighbours', 'thumbnail'):
      if getattr(self, key) < 1:
        raise ConfigError(f'figures.{key}: must be positive, got {getattr(self, key)}')
    if self.tsne_size < 4:
      raise ConfigError(f'figures.tsne_size: t-SNE needs at least 4 points, got {self.tsne_size}')
    if self.tsne_pixels < 100:
      raise ConfigError(f'figures.tsne_pixels: must be at least 100, got {self.tsne_pixels}')
    if self.perplexity <= 0:
      raise ConfigError(f'figures.perplexity: must be positive, got {self.perplexity}')


def nearest(bank: np.ndarray, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """(indices int32 [Q, k'], cosines [Q, k']) of each query's most similar bank rows, k' = min(k, bank)."""
  similarity = tf.matmul(l2_normalize(queries), l2_normalize(bank), transpose_b=True)
  top = tf.math.top_k(similarity, k=min(k, len(bank)))  # Stable: ties to the lower bank index.
  return top.indices.numpy(), top.values.numpy()


def retrieval_grid(
  query_images: np.ndarray, bank_images: np.ndarray, indices: np.ndarray, same: np.ndarray
) -> np.ndarray:
  """uint8 [Q * cell, (1 + k) * cell + GAP, 3]: query thumbnails and their neighbours, framed (module docstring)."""
  rows, k = indices.shape
  thumb = query_images.shape[1]
  cell = thumb + 2 * FRAME
  grid = np.full([rows * cell, (1 + k) * cell + GAP, 3], 255, np.uint8)

  def put(image, row, col, rgb):
    y, x = row * cell, col * cell + (GAP if col else 0)
    grid[y : y + cell, x : x + cell] = rgb
    grid[y + FRAME : y + FRAME + thumb, x + FRAME : x + FRAME + thumb] = image

  for r in range(rows):
    put(query_images[r], r, 0, _GREY)
    for j in range(k):
      put(bank_images[indices[r, j]], r, j + 1, _GREEN if same[r, j] else _RED)
  return grid


def tsne_figure(features: np.ndarray, labels: np.ndarray, pixels: int, perplexity: float, seed: int) -> np.ndarray:
  """uint8 [pixels, pixels, 3]: the t-SNE map of L2-normalised features, one colour per label."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from sklearn.manifold import TSNE

  features = l2_normalize(features).numpy()
  perplexity = min(perplexity, max(1.0, (len(features) - 1) / 3.0))
  points = TSNE(2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(features)
  dpi = 100
  fig = plt.figure(figsize=(pixels / dpi, pixels / dpi), dpi=dpi)
  try:
    ax = fig.add_axes([0.04, 0.04, 0.92, 0.92])
    cmap = plt.get_cmap('tab20' if labels.max() >= 10 else 'tab10')
    for label in np.unique(labels):
      at = labels == label
      ax.scatter(points[at, 0], points[at, 1], s=8, color=cmap(int(label) % cmap.N), label=str(label))
    if len(np.unique(labels)) <= 20:
      ax.legend(loc='best', fontsize=7, markerscale=1.5, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f't-SNE, {len(features)} held-out images, perplexity {perplexity:.3g}', fontsize=8)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  finally:
    plt.close(fig)
  return image


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] image as PNG (exactly H x W pixels)."""
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(tf.io.encode_png(image).numpy())


class FiguresProtocol(Protocol):
  """t-SNE of held-out features coloured by label, and a nearest-neighbour retrieval grid."""

  name = NAME
  summary = 't-SNE map and nearest-neighbour retrieval grid of frozen features (PNG + TensorBoard)'
  config_class = FiguresConfig
  world_sources = ('images_train', 'images_validation')
  headline = ('retrieval_precision',)
  columns = (Column('retrieval P@8 (%)', 'retrieval_precision', 100.0),)

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: FiguresConfig = ctx.section
    features = feature_fn(ctx, cfg.endpoint, cfg.pool_grid)
    limit = max(cfg.tsne_size, cfg.queries)
    held_out, held_labels, query_images = extract(
      labelled_split(cfg, ctx.test_spec), features, limit=limit, keep_images=cfg.queries, thumbnail=cfg.thumbnail
    )
    bank, bank_labels, bank_images = extract(
      labelled_split(cfg, ctx.train_spec), features, limit=cfg.bank_size, keep_images=cfg.bank_size,
      thumbnail=cfg.thumbnail,
    )  # fmt: skip
    tsne = tsne_figure(held_out[: cfg.tsne_size], held_labels[: cfg.tsne_size], cfg.tsne_pixels, cfg.perplexity,
                       cfg.seed)  # fmt: skip
    queries = len(query_images)
    indices, cosines = nearest(bank, held_out[:queries], cfg.neighbours)
    same = bank_labels[indices] == held_labels[:queries, None]
    grid = retrieval_grid(query_images, bank_images, indices, same)
    paths = {'tsne': os.path.join(ctx.out_dir, 'tsne.png'), 'retrieval': os.path.join(ctx.out_dir, 'retrieval.png')}
    # The features the neighbours were ranked on, for checking and re-plotting.
    np.savez(os.path.join(ctx.out_dir, 'features.npz'), bank=bank, queries=held_out[:queries])
    write_png(paths['tsne'], tsne)
    write_png(paths['retrieval'], grid)
    writer = tf.summary.create_file_writer(ctx.out_dir)
    with writer.as_default(step=0):
      tf.summary.image('figures/tsne', tsne[None])
      tf.summary.image('figures/retrieval', grid[None])
      tf.summary.scalar('figures/retrieval_precision', float(same.mean()))
    writer.flush()
    results = {
      'retrieval_precision': float(same.mean()),
      'figures': paths,
      'sizes': {'tsne': list(tsne.shape[:2]), 'retrieval': list(grid.shape[:2])},
      'neighbours': indices.tolist(),
      'cosines': cosines.tolist(),
      'protocol': {
        'features': f'{cfg.endpoint} average-pooled to {cfg.pool_grid}x{cfg.pool_grid}, L2-normalised',
        'tsne': f'scikit-learn TSNE, PCA init, seed {cfg.seed}',
        'retrieval': 'cosine similarity, ties to the lower bank index',
        'preprocessing': ctx.preprocessing,
        'init_source': ctx.init,
      },
      'counts': {'tsne': min(len(held_out), cfg.tsne_size), 'bank': len(bank), 'queries': queries},
    }
    path = ctx.write_results(results)
    if ctx.progress:
      logging.info(
        'figures: %s, retrieval P@%d %.4f -> %s', paths, cfg.neighbours, results['retrieval_precision'], path
      )
    return results
