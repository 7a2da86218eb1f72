"""VOC07 SVM and low-shot protocols: targets, AP against voc_metrics, seeded balanced draws, runs end to end."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.evaluation import runner, svm, voc_metrics
from mtssl_tf.evaluation.config import load_eval_config


def test_image_targets_follow_the_voc07_devkit():
  # Class 1: one easy box -> present; class 3: only difficult boxes -> ignored; the rest absent.
  targets = svm.image_targets(tf.constant([1, 1, 3, 3]), tf.constant([False, True, True, True]), 5).numpy()
  assert targets.tolist() == [0, 1, 0, -1, 0]
  assert svm.image_targets(tf.zeros([0], tf.int64), tf.zeros([0], tf.bool), 3).numpy().tolist() == [0, 0, 0]


def test_lowshot_sample_is_seeded_and_balanced():
  rng = np.random.default_rng(0)
  targets = rng.choice([1, 0, 0, 0, -1], size=(400, 5)).astype(np.int32)
  a = svm.lowshot_sample(targets, 4, seed=(0, 4, 0))
  np.testing.assert_array_equal(a, svm.lowshot_sample(targets, 4, seed=(0, 4, 0)))
  assert not np.array_equal(a, svm.lowshot_sample(targets, 4, seed=(0, 4, 1)))
  for c in range(5):
    # k positives and (classes - 1) x k negatives per class, each from its own pool; the rest ignored.
    assert (a[:, c] == 1).sum() == 4 and (a[:, c] == 0).sum() == 16
    assert np.all(targets[a[:, c] == 1, c] == 1) and np.all(targets[a[:, c] == 0, c] == 0)
  assert not np.any((a != -1) & (targets == -1))
  # A pool smaller than asked: all of it is drawn.
  small = svm.lowshot_sample(targets[:10], 96, seed=1)
  np.testing.assert_array_equal(small == 1, targets[:10] == 1)


@pytest.mark.numerics
def test_classification_ap_matches_voc_metrics():
  scores = np.array([0.9, 0.8, 0.8, 0.3, 0.2, 0.1])
  targets = np.array([1, 0, -1, 1, 0, 1])
  # Ignored image dropped; ranked 0.9(+), 0.8(-), 0.3(+), 0.2(-), 0.1(+).
  precision, recall = voc_metrics.precision_recall(np.array([1, 0, 1, 0, 1], bool), 3)
  assert svm.classification_ap(scores, targets) == voc_metrics.eleven_point_average_precision(precision, recall)
  assert np.isnan(svm.classification_ap(scores, np.zeros(6, int)))


def _overrides(section, sources, extra=()):
  return [
    f'{section}.train_source={sources["detection_trainval"]}',
    f'{section}.test_source={sources["detection_test"]}',
    f'{section}.image_size=64',
    f'{section}.crop_size=64',
    f'{section}.batch_size=8',
    f'{section}.costs=[0.01,1.0,100.0]',
    *extra,
  ]


@pytest.mark.numerics
def test_voc07_svm_end_to_end_ap_matches_voc_metrics(tmp_path, pretrained, tiny_world):
  cfg = load_eval_config([], _overrides('voc07_svm', tiny_world['sources']), pretrained['run_dir'])
  results = runner.run('voc07_svm', cfg, str(tmp_path))
  saved = np.load(os.path.join(str(tmp_path), 'eval', 'voc07_svm', 'test_scores.npz'))
  scores, targets = saved['scores'], saved['targets']
  checked = 0
  for c, name in enumerate(svm.VOC_CLASSES):
    keep = targets[:, c] != -1
    positive = targets[keep, c] == 1
    if results['ap'][name] is None:  # No AP (NaN, written as null): no positives to rank.
      assert not positive.any() or np.isnan(scores[:, c]).all()
      continue
    # The project's VOC07 AP on the SVM's own scores, ranked here independently.
    order = np.argsort(-scores[keep, c], kind='stable')
    precision, recall = voc_metrics.precision_recall(positive[order], positive.sum())
    assert results['ap'][name] == voc_metrics.eleven_point_average_precision(precision, recall)
    assert results['chosen_cost'][name] in (0.01, 1.0, 100.0)
    checked += 1
  assert checked >= 2
  assert results['mAP'] == pytest.approx(np.mean([a for a in results['ap'].values() if a is not None]))
  with open(os.path.join(str(tmp_path), 'eval', 'voc07_svm', 'results.json')) as f:
    json.loads(f.read(), parse_constant=lambda c: pytest.fail(f'results.json holds {c}, not strict JSON'))
  assert results['counts']['trainval'] + results['counts']['test'] == 16


def test_voc07_lowshot_end_to_end(tmp_path, pretrained, tiny_world):
  extra = ['voc07_lowshot.counts=[1,2]', 'voc07_lowshot.draws=2']
  cfg = load_eval_config([], _overrides('voc07_lowshot', tiny_world['sources'], extra), pretrained['run_dir'])
  results = runner.run('voc07_lowshot', cfg, str(tmp_path))
  for k in (1, 2):
    entry = results['per_count'][str(k)]
    assert len(entry['draws']) == 2 and entry['cost'] in (0.01, 1.0, 100.0)
    assert entry['mean'] == pytest.approx(np.mean(entry['draws']))
    assert entry['std'] == pytest.approx(np.std(entry['draws']))
    assert max(entry['positives_per_class']) <= k
    assert results[f'mAP_k{k}'] == entry['mean']
