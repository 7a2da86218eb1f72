"""The `knn` protocol end to end on the tiny world, and its agreement with the classifier on its own features."""

import json
import os

import pytest

from mtssl_tf.evaluation import protocols, runner
from mtssl_tf.evaluation.config import load_eval_config


def test_knn_protocol_end_to_end(tmp_path, pretrained, tiny_world):
  sources = tiny_world['sources']
  overrides = [
    f'knn.train_source={sources["images_train"]}',
    f'knn.test_source={sources["images_validation"]}',
    'knn.image_size=64',
    'knn.crop_size=64',
    'knn.k=[5,200]',
    'knn.batch_size=16',
    'knn.chunk_size=7',
  ]
  cfg = load_eval_config([], overrides, pretrained['run_dir'])
  results = runner.run('knn', cfg, str(tmp_path))
  # The tiny world: 40 training images (the bank) and 20 validation images (the queries), 10 classes.
  assert results['counts'] == {'bank': 40, 'queries': 20, 'num_classes': 10}
  for key in ('top1_k5', 'top5_k5', 'top1_k200', 'top5_k200'):
    assert 0.0 <= results[key] <= 1.0
  assert results['top5_k200'] >= results['top1_k200']
  with open(os.path.join(str(tmp_path), 'eval', 'knn', 'results.json')) as f:
    assert json.load(f)['top1_k5'] == pytest.approx(results['top1_k5'])
  assert protocols.protocol_class('knn').columns[0].key == 'top1_k20'


def test_knn_config_errors_are_named(pretrained):
  with pytest.raises(ValueError, match='knn.k'):
    load_eval_config([], ['knn.k=[5,5]'], pretrained['run_dir'])
  with pytest.raises(ValueError, match='knn.endpoint'):
    load_eval_config([], ['knn.endpoint=block9'], pretrained['run_dir'])
