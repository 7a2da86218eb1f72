"""The weighted kNN classifier against a brute-force numpy kNN, and the monitor on checkpoints."""

import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig
from mtssl_tf.configs.base import ConfigError, validate_all
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.tasks.relative_position import RelativePositionConfig, RelativePositionTask
from mtssl_tf.train import knn


def brute_force(bank, bank_labels, queries, num_classes, k, temperature):
  """float64 reference: every similarity, a stable sort (lower bank index first on ties), weighted votes."""
  bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
  queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  similarity = queries @ bank.T
  order = np.argsort(-similarity, axis=1, kind='stable')[:, : min(k, len(bank))]
  votes = np.zeros([len(queries), num_classes])
  for q in range(len(queries)):
    for i in order[q]:
      votes[q, bank_labels[i]] += np.exp(similarity[q, i] / temperature)
  return votes, similarity, order


def ranking(votes):
  return np.argsort(-votes, axis=1, kind='stable')  # Ties: lower class first.


@pytest.mark.numerics
@pytest.mark.parametrize('k', [1, 5, 20, 200])
def test_votes_match_brute_force(k):
  rng = np.random.default_rng(k)
  bank, queries = rng.normal(size=(150, 16)), rng.normal(size=(40, 16))
  bank_labels = rng.integers(0, 7, 150)
  want, similarity, order = brute_force(bank, bank_labels, queries, 7, k, knn.TEMPERATURE)
  got = knn.knn_votes(bank.astype(np.float32), bank_labels, queries.astype(np.float32), 7, [k], chunk_size=16)[k]
  got = got.numpy()
  # float32 cosines are within ~1e-6 of float64 (16-term dot products of unit vectors); divided by
  # T = 0.07 and exponentiated, a weight's relative error is ~1e-6 / 0.07 ~ 2e-5. Queries whose k-th and
  # (k+1)-th neighbours are that close could swap a neighbour; the random draw has a wide gap at every k.
  ranked = np.sort(similarity, axis=1)[:, ::-1]
  if k < len(bank):
    assert np.min(ranked[:, k - 1] - ranked[:, k]) > 1e-5
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)
  # Predicted classes agree wherever the top two votes are not tied within that tolerance.
  top2 = np.sort(want, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-3 * top2[:, 1]
  assert clear.sum() >= 30
  pred = knn.ranked_classes(tf.constant(got), 5).numpy()
  np.testing.assert_array_equal(pred[clear, 0], ranking(want)[clear, 0])


@pytest.mark.numerics
def test_accuracy_matches_brute_force_and_is_chunk_independent():
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(6, 8)) * 2
  bank_labels, query_labels = rng.integers(0, 6, 200), rng.integers(0, 6, 60)
  bank = centres[bank_labels] + rng.normal(size=(200, 8))
  queries = centres[query_labels] + rng.normal(size=(60, 8))
  scores = knn.knn_accuracy(bank, bank_labels, queries, query_labels, 6, (20, 200), chunk_size=7)
  whole = knn.knn_accuracy(bank, bank_labels, queries, query_labels, 6, (20, 200), chunk_size=1000)
  assert scores.keys() == {'top1_k20', 'top5_k20', 'top1_k200', 'top5_k200'}
  for k in (20, 200):
    votes, _, _ = brute_force(bank, bank_labels, queries, 6, k, knn.TEMPERATURE)
    ranks = ranking(votes)
    # One query more or less: a near tie may rank differently in float32 (see the test above).
    assert abs(scores[f'top1_k{k}'] - np.mean(ranks[:, 0] == query_labels)) <= 1 / 60 + 1e-9
    assert abs(scores[f'top5_k{k}'] - np.mean((ranks[:, :5] == query_labels[:, None]).any(1))) <= 1 / 60 + 1e-9
    assert abs(scores[f'top1_k{k}'] - whole[f'top1_k{k}']) <= 1 / 60 + 1e-9
  assert scores['top1_k20'] > 0.5  # Clustered features: far above chance (1/6).


def test_ties_rule_is_exact():
  # Basis vectors: every cosine is exactly 0 or 1, so the ties below are exact in any arithmetic.
  eye = np.eye(4, dtype=np.float32)
  bank = np.stack([eye[0], eye[0], eye[1], eye[2]])
  bank_labels = np.array([3, 1, 0, 2])
  queries = eye[[0]]
  votes = knn.knn_votes(bank, bank_labels, queries, 4, [1, 2, 4])
  # k = 1: two neighbours at similarity 1; the lower bank index (label 3) wins.
  assert knn.ranked_classes(votes[1], 1).numpy()[0, 0] == 3
  # k = 2: classes 1 and 3 get equal votes; the lower class index ranks first.
  assert knn.ranked_classes(votes[2], 4).numpy()[0].tolist()[:2] == [1, 3]
  want, _, _ = brute_force(bank.astype(np.float64), bank_labels, queries.astype(np.float64), 4, 2, knn.TEMPERATURE)
  assert ranking(want)[0, :2].tolist() == [1, 3]
  # k = 4 (the whole bank): classes 0 and 2 tie at exp(0) each; k is capped at the bank size.
  assert knn.ranked_classes(votes[4], 4).numpy()[0].tolist() == [1, 3, 0, 2]
  assert knn.knn_votes(bank, bank_labels, queries, 4, [500])[500].numpy().sum() == pytest.approx(votes[4].numpy().sum())


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='empty'):
    knn.knn_votes(np.zeros([0, 3]), np.zeros([0]), np.ones([1, 3]), 2)
  with pytest.raises(ValueError, match='k >= 1'):
    knn.knn_votes(np.ones([2, 3]), np.zeros([2]), np.ones([1, 3]), 2, [0])
  cfg = knn.KnnMonitorConfig()
  cfg.k = (20, 20)
  with pytest.raises(ConfigError, match='knn.k'):
    validate_all(cfg)


def test_adaptive_avg_pool_cells():
  x = tf.reshape(tf.range(2 * 5 * 5 * 3, dtype=tf.float32), [2, 5, 5, 3])
  np.testing.assert_allclose(knn.adaptive_avg_pool(x, 1), tf.reduce_mean(x, [1, 2]))
  pooled = knn.adaptive_avg_pool(x, 2).numpy()
  assert pooled.shape == (2, 12)
  # Cell (1, 1) spans rows and columns 2..4 (floor(5/2) .. ceil(10/2) - 1).
  np.testing.assert_allclose(pooled[:, 9:], tf.reduce_mean(x[:, 2:5, 2:5], [1, 2]))


def _checkpoint(tmp_path, trunk_config, seed):
  tasks = {'relative_position': RelativePositionTask(RelativePositionConfig(hidden_units=16))}
  model = MultiTaskModel(trunk_config, tasks, LassoConfig())
  model.trunk(tf.zeros([1, 64, 64, 3]))
  rng = np.random.default_rng(seed)
  for v in model.trunk.variables:
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32) + (1.0 if 'gamma' in v.name or 'variance' in v.name else 0))
  path = tf.train.Checkpoint(model=model).save(os.path.join(str(tmp_path), f'ckpt{seed}', 'tick'))
  return path, {v.name: v.numpy() for v in model.trunk.variables}


def _rng_draws():
  return tf.random.uniform([4]).numpy(), np.random.rand(2), random.random()


def test_monitor_reads_only_and_writes_summaries(tmp_path, tiny_trunk, tiny_world):
  first, weights = _checkpoint(tmp_path, tiny_trunk, 1)
  second, _ = _checkpoint(tmp_path, tiny_trunk, 2)
  cfg = knn.KnnMonitorConfig(enabled=True, bank_size=30, query_size=12, batch_size=16, k=(5, 20))
  validate_all(cfg)
  bank, query = knn.resolve_sources(cfg, tiny_world['sources'])
  monitor = knn.KnnMonitor(cfg, tiny_trunk, str(tmp_path / 'run' / 'knn'), bank, query)
  # Random state: the same draws after a seed whether or not the monitor ran in between.
  tf.random.set_seed(5), np.random.seed(5), random.seed(5)
  without = _rng_draws()
  tf.random.set_seed(5), np.random.seed(5), random.seed(5)
  scores = monitor.evaluate(first, step=10, extra={'tick': 1})
  with_monitor = _rng_draws()
  for a, b in zip(without, with_monitor):
    np.testing.assert_array_equal(a, b)
  assert {v.name.split('/', 1)[1]: v.numpy() for v in monitor.trunk.variables}.keys() == {
    n.split('/', 1)[1] for n in weights
  }
  for v in monitor.trunk.variables:  # The checkpoint's weights, exactly (a copy).
    np.testing.assert_array_equal(v.numpy(), weights['trunk/' + v.name.split('/', 1)[1]])
  monitor.evaluate(second, step=20, extra={'tick': 2})
  # Two checkpoints read into one trunk, 42 images in batches of 16 (the last padded): one trace.
  assert monitor.traces == 1
  assert set(scores) == {'top1_k5', 'top5_k5', 'top1_k20', 'top5_k20'}
  assert all(0.0 <= v <= 1.0 for v in scores.values())
  ticks = knn.read_ticks(str(tmp_path / 'run'))
  assert [t['step'] for t in ticks] == [10, 20] and ticks[0]['tick'] == 1
  tags = {}
  for path in tf.io.gfile.glob(str(tmp_path / 'run' / 'knn' / 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  assert tags['knn/top1_k20'] == [10, 20] and tags['knn/top5_k5'] == [10, 20]
  assert json.loads(json.dumps(scores)) == scores
