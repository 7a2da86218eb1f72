"""The `figures` protocol: PNGs of the stated pixel sizes, TensorBoard images, neighbours = brute-force cosine."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.evaluation import embedding, runner
from mtssl_tf.evaluation.config import load_eval_config


def _png_size(path):
  with open(path, 'rb') as f:
    return tuple(tf.io.decode_png(f.read()).shape.as_list())


@pytest.mark.numerics
def test_nearest_matches_brute_force_cosine():
  rng = np.random.default_rng(0)
  bank, queries = rng.normal(size=(50, 12)), rng.normal(size=(6, 12))
  indices, cosines = embedding.nearest(bank.astype(np.float32), queries.astype(np.float32), 5)
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  similarity = q @ b.T
  # float32 cosines of unit vectors: within ~1e-6 of float64, so 1e-5 bounds the error.
  top = np.sort(similarity, axis=1)[:, ::-1][:, :5]
  np.testing.assert_allclose(cosines, top, atol=1e-5)
  # The chosen rows are the brute-force top 5: their float64 similarities are the top 5 ones
  # (a near-tie within the float error may swap two rows on another CPU, which this allows),
  # and where the next-best row is clearly worse the indices are exactly the brute-force ones.
  np.testing.assert_allclose(np.take_along_axis(similarity, indices, axis=1), top, atol=1e-5)
  order = np.argsort(-similarity, axis=1, kind='stable')
  gaps = -np.diff(-np.sort(-similarity, axis=1)[:, :6], axis=1) > 1e-5  # Rank j to rank j + 1.
  clear = gaps & np.concatenate([np.ones_like(gaps[:, :1]), gaps[:, :-1]], axis=1)  # Apart from both neighbours.
  np.testing.assert_array_equal(np.where(clear, indices, -1), np.where(clear, order[:, :5], -1))


@pytest.mark.numerics
def test_figures_end_to_end(tmp_path, pretrained, tiny_world):
  sources = tiny_world['sources']
  overrides = [
    f'figures.train_source={sources["images_train"]}',
    f'figures.test_source={sources["images_validation"]}',
    'figures.image_size=64',
    'figures.crop_size=64',
    'figures.queries=3',
    'figures.neighbours=4',
    'figures.thumbnail=32',
    'figures.tsne_pixels=300',
    'figures.batch_size=16',
  ]
  cfg = load_eval_config([], overrides, pretrained['run_dir'])
  results = runner.run('figures', cfg, str(tmp_path))
  out = os.path.join(str(tmp_path), 'eval', 'figures')
  assert _png_size(os.path.join(out, 'tsne.png')) == (300, 300, 3)
  cell = 32 + 2 * embedding.FRAME
  assert _png_size(os.path.join(out, 'retrieval.png')) == (3 * cell, 5 * cell + embedding.GAP, 3)
  assert results['counts'] == {'tsne': 20, 'bank': 40, 'queries': 3}
  assert 0.0 <= results['retrieval_precision'] <= 1.0
  # The neighbours are the brute-force cosine ranking of the features they were ranked on.
  saved = np.load(os.path.join(out, 'features.npz'))
  b = saved['bank'] / np.linalg.norm(saved['bank'], axis=1, keepdims=True)
  q = saved['queries'] / np.linalg.norm(saved['queries'], axis=1, keepdims=True)
  similarity = q.astype(np.float64) @ b.T.astype(np.float64)
  ranked = np.sort(similarity, axis=1)[:, ::-1][:, :4]
  got = np.take_along_axis(similarity, np.asarray(results['neighbours']), axis=1)
  # The j-th neighbour has the j-th largest cosine. A random trunk's pooled features are nearly collinear
  # (cosines ~0.9999, neighbours ~1e-5 apart), so the bound is float32's error on a 128-term dot product of
  # unit vectors (~1e-6), not exact indices.
  np.testing.assert_allclose(got, ranked, atol=2e-6, rtol=0)
  assert all(len(set(r)) == 4 for r in results['neighbours'])
  assert np.all(np.diff(np.asarray(results['cosines']), axis=1) <= 1e-6)
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(out, 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {'figures/tsne', 'figures/retrieval'} <= tags


def test_retrieval_grid_layout():
  queries = np.full([2, 4, 4, 3], 10, np.uint8)
  bank = np.stack([np.full([4, 4, 3], 50 + i, np.uint8) for i in range(5)])
  grid = embedding.retrieval_grid(queries, bank, np.array([[3, 1], [0, 4]]), np.array([[True, False], [False, True]]))
  cell = 4 + 2 * embedding.FRAME
  assert grid.shape == (2 * cell, 3 * cell + embedding.GAP, 3)
  x = cell + embedding.GAP  # First neighbour of row 0: bank image 3, green frame.
  assert grid[embedding.FRAME, x + embedding.FRAME, 0] == 53
  assert tuple(grid[0, x]) == embedding._GREEN and tuple(grid[0, x + cell]) == embedding._RED
