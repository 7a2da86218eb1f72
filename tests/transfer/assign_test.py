"""Clustering and pseudo-labels: readable TFRecords, histograms, resumption, another dataset."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.transfer import assign, extract


def _records(spec):
  """Every pseudo-labelled record: (pseudo-label, original label, id, bytes), through our image reader."""
  features = {
    'image/class/label': tf.io.FixedLenFeature([], tf.int64),
    assign.ORIGINAL_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    assign.ID_KEY: tf.io.FixedLenFeature([], tf.int64),
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
  }
  files = sorted(tf.io.gfile.glob(spec[len('tfrecord:') :]))
  out = []
  for serialized in tf.data.TFRecordDataset(files):
    x = tf.io.parse_single_example(serialized, features)
    out.append((int(x['image/class/label']), int(x[assign.ORIGINAL_LABEL_KEY]), int(x[assign.ID_KEY]),
                x['image/encoded'].numpy()))  # fmt: skip
  return out


def test_cluster_assign_and_read_back(transfer_config, tmp_path):
  cfg, model_dir = transfer_config, str(tmp_path)
  extract.run_extract(cfg, model_dir, progress=False)
  clustered = assign.run_cluster(cfg, model_dir, progress=False)
  k = cfg.cluster.num_clusters
  assert not clustered['skipped'] and clustered['sizes']['images'] == 40 and len(clustered['sizes']['sizes']) == k
  history = clustered['objective_history']
  assert history and all(b <= a * (1 + 1e-5) for a, b in zip(history, history[1:]))
  # The bounds' work per pass, one fraction per entry of the history.
  assert len(clustered['searched_history']) == len(clustered['scored_history']) == len(history)
  assert 0 <= clustered['agreement']['nmi'] <= 1 and 0 < clustered['agreement']['purity'] <= 1
  assert os.path.exists(os.path.join(model_dir, 'clusters', 'kmeans.npz'))
  # Same config and features: skipped; another k: refitted.
  assert assign.run_cluster(cfg, model_dir, progress=False)['skipped']

  summary = assign.run_assign(cfg, model_dir, progress=False)
  assert summary['complete'] and summary['shards'] == 4 and summary['num_clusters'] == k
  # Our image reader decodes every record; its labels are the pseudo-labels, in [0, k).
  reader = image_dataset(summary['records'], ReadOptions())
  labels = [int(x['label']) for x in reader]
  assert len(labels) == 40 and all(0 <= y < k for y in labels)
  sizes = summary['sizes']
  assert np.bincount(labels, minlength=k).tolist() == sizes['sizes']
  assert sizes['empty'] == sizes['sizes'].count(0) and sizes['min'] == min(sizes['sizes'])
  assert sizes['max'] == max(sizes['sizes']) and sizes['median'] == float(np.median(sizes['sizes']))
  assert assign.format_sizes(sizes).startswith(f'40 images in {k} clusters')
  # The training images clustered are the ones labelled: same labels as the clustering's own pass.
  assert sizes['sizes'] == clustered['sizes']['sizes']

  # Original bytes passed through, original labels kept under their own key, ids in order.
  originals = [(int(i), r['encoded'].numpy(), int(r['label'])) for i, r in extract.image_records(cfg.extract.source)]
  records = _records(summary['records'])
  assert [r[2] for r in records] == list(range(40))
  assert all(r[3] == originals[r[2]][1] and r[1] == originals[r[2]][2] for r in records)
  with open(os.path.join(model_dir, 'pseudo_labels', 'summary.json')) as f:
    assert json.load(f)['sizes']['sizes'] == sizes['sizes']

  # Interrupted after one shard, then resumed: the same records, nothing duplicated.
  os.remove(os.path.join(model_dir, 'pseudo_labels', 'summary.json'))
  os.remove(os.path.join(model_dir, 'pseudo_labels', 'train-00002.tfrecord'))
  partial = assign.run_assign(cfg, model_dir, max_shards=1, progress=False)
  assert partial == {'complete': False, 'shards': 3}
  assert not os.path.exists(os.path.join(model_dir, 'pseudo_labels', 'train-00003.tfrecord'))
  assert assign.run_assign(cfg, model_dir, progress=False)['sizes'] == sizes
  assert _records(summary['records']) == records


def test_assign_another_dataset_reencoded(transfer_config, tiny_world, tmp_path):
  cfg, model_dir = transfer_config, str(tmp_path)
  extract.run_extract(cfg, model_dir, progress=False)
  assign.run_cluster(cfg, model_dir, progress=False)
  cfg.assign.source, cfg.assign.reencode_size = tiny_world['sources']['images_validation'], 32
  summary = assign.run_assign(cfg, model_dir, progress=False)
  assert summary['source'] == cfg.assign.source and summary['sizes']['images'] == 20
  assert summary['features'] == os.path.join(model_dir, 'pseudo_labels', 'features')
  assert extract.FeatureShards(summary['features']).num_rows == 20
  images = list(image_dataset(summary['records'], ReadOptions()))
  assert len(images) == 20 and all(min(x['image'].shape[:2]) == 32 for x in images)
  assert all(0 <= int(x['label']) < cfg.cluster.num_clusters for x in images)


def test_assign_needs_a_clustering(transfer_config, tmp_path):
  with pytest.raises(FileNotFoundError, match='cluster step'):
    assign.run_assign(transfer_config, str(tmp_path), progress=False)
  with pytest.raises(FileNotFoundError, match='extract step'):
    assign.run_cluster(transfer_config, str(tmp_path), progress=False)


def test_histogram_and_agreement_statistics():
  stats = assign.cluster_sizes(np.array([0, 0, 2, 2, 2, 4]), 6)
  assert stats['sizes'] == [2, 0, 3, 0, 1, 0] and stats['empty'] == 3 and stats['images'] == 6
  assert (stats['min'], stats['median'], stats['max'], stats['mean']) == (0, 0.5, 3, 1.0)
  perfect = assign.label_agreement(np.array([3, 3, 1, 1, 0]), np.array([0, 0, 1, 1, 2]))
  assert perfect['nmi'] == pytest.approx(1.0) and perfect['purity'] == 1.0
  unrelated = assign.label_agreement(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))
  assert unrelated['nmi'] == pytest.approx(0.0, abs=1e-12) and unrelated['purity'] == 0.5
  assert assign.label_agreement(np.array([0, 1]), np.array([-1, -1])) == {}
  partial = assign.label_agreement(np.array([0, 1, 1]), np.array([5, 7, -1]))
  assert partial['labelled_images'] == 2 and partial['nmi'] == pytest.approx(1.0)
