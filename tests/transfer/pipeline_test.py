"""The whole chain extract -> cluster -> assign -> train -> probe, as a library and as mtssl-transfer."""

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from mtssl_tf.configs import ConfigError
from mtssl_tf.transfer import assign, extract, student
from mtssl_tf.transfer.config import load_transfer_config

ROOT = pathlib.Path(__file__).parents[2]
CONFIGS = ROOT / 'configs' / 'transfer'


def test_chain_end_to_end(pretrained, transfer_config, tmp_path):
  cfg, model_dir = transfer_config, str(tmp_path)
  cfg.extract.init = pretrained['saved_model']  # An exported pre-trained trunk as the teacher.
  features = extract.run_extract(cfg, model_dir, progress=False)
  assert features['complete'] and features['rows'] == 40 and features['fingerprint']['kind'] == 'saved_model'
  clusters = assign.run_cluster(cfg, model_dir, progress=False)
  assert clusters['sizes']['images'] == 40
  labels = assign.run_assign(cfg, model_dir, progress=False)
  assert labels['complete'] and labels['sizes']['images'] == 40
  trained = student.run_train(cfg, model_dir, progress=False)
  assert trained['num_classes'] == cfg.cluster.num_clusters and trained['steps'] == cfg.train.steps
  assert trained['train_source'] == labels['records']
  probes = student.run_probe(cfg, model_dir, progress=False)['probes']
  assert sorted(probes) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
  assert all(0.0 <= p['top1'] <= 1.0 and p['dims'] <= 9216 for p in probes.values())
  assert (tmp_path / 'student' / 'probe' / 'results.json').exists()

  # The student's SavedModel is a teacher in turn (another round of transfer).
  cfg.extract.init, cfg.extract.signature, cfg.extract.output_key = trained['saved_model'], 'features', 'conv5'
  cfg.extract.crop_size = cfg.train.crop_size
  second = extract.extract_features(cfg.extract, str(tmp_path / 'round2'), progress=False)
  assert second['rows'] == 40 and second['dims'] == 2 * 2 * 32


def test_load_config_takes_the_trunk_from_the_init_run(pretrained):
  cfg = load_transfer_config([], [f'extract.init={pretrained["run_dir"]}'])
  assert cfg.extract.trunk.width == 8 and tuple(cfg.extract.trunk.units_per_block) == (1, 1, 2)
  # Files still win: tiny.yaml pins the demo trunk's shape (for the random-network control).
  tiny = load_transfer_config([str(CONFIGS / 'tiny.yaml')], [f'extract.init={pretrained["run_dir"]}'])
  assert tiny.extract.trunk.width == 16 and tiny.cluster.num_clusters == 20 and tiny.train.architecture == 'alexnet'
  paper = load_transfer_config([str(CONFIGS / 'imagenet.yaml')], ['extract.init=random'])
  assert paper.cluster.num_clusters == 2000 and paper.extract.grid == 4 and paper.train.width == 1.0
  assert paper.extract.trunk.width == 64  # Random init: the ResNet-101 default.


@pytest.mark.parametrize(
  'overrides, message',
  [
    (['extract.pooling=min'], 'extract.pooling'),
    (['extract.trunk.width=0'], 'extract.trunk.width'),
    (['extract.init=/no/such/run'], "extract.init: init source '/no/such/run'"),
    (['extract.crop_size=300'], 'extract.image_size'),
    (['cluster.num_clusterz=3'], "cluster.num_clusterz'; did you mean 'cluster.num_clusters'"),
    (['cluster.num_clusters=1'], 'cluster.num_clusters'),
    (['assign.jpeg_quality=0'], 'assign.jpeg_quality'),
    (['train.crop_size=16'], 'train.crop_size'),
    (['train.dropout=1.0'], 'train.dropout'),
    (['probe.steps=0'], 'probe.steps'),
    (['probe.endpoints=[conv1, conv1]'], 'probe.endpoints'),
  ],
)
def test_config_errors_name_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message):
    load_transfer_config([], overrides)


def test_binary_runs_every_step(pretrained, tiny_world, tmp_path):
  sources = tiny_world['sources']
  small = {
    'extract': {'source': sources['images_train'], 'init': pretrained['run_dir'], 'trunk': {'width': 8},
                'image_size': 64, 'crop_size': 64, 'grid': 2, 'batch_size': 20, 'shard_size': 16, 'num_images': 40},
    'cluster': {'num_clusters': 4, 'iterations': 5},
    'train': {'width': 0.125, 'image_size': 64, 'crop_size': 56, 'steps': 3, 'batch_size': 8, 'log_every_steps': 3,
              'shuffle_buffer': 40},
    'probe': {'train_source': sources['images_train'], 'validation_source': sources['images_validation'],
              'image_size': 64, 'crop_size': 56, 'steps': 2, 'batch_size': 8, 'eval_batch_size': 20,
              'log_every_steps': 2, 'shuffle_buffer': 40},
  }  # fmt: skip
  test_yaml = tmp_path / 'test.yaml'
  test_yaml.write_text(yaml.safe_dump(small))
  model_dir = tmp_path / 'run'
  base = [sys.executable, '-m', 'mtssl_tf.bin.transfer']
  flags = [f'--config={CONFIGS / "tiny.yaml"}', f'--config={test_yaml}', f'--model_dir={model_dir}']
  result = subprocess.run(base + ['all'] + flags, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = {line.split(':', 1)[0]: line.split(':', 1)[1] for line in result.stdout.splitlines() if ':' in line}
  assert json.loads(lines['extract'])['rows'] == 40 and json.loads(lines['assign'])['images'] == 40
  assert sorted(json.loads(lines['probe'])) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
  saved = yaml.safe_load((model_dir / 'transfer_config.yaml').read_text())
  assert saved['extract']['trunk']['width'] == 8 and saved['cluster']['num_clusters'] == 4
  # A rerun of a finished step does nothing new.
  again = subprocess.run(base + ['cluster'] + flags, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert again.returncode == 0 and '"skipped": true' in again.stdout, again.stderr[-3000:]
  bad = subprocess.run(base + ['cluster'] + flags + ['--override=cluster.init=faiss'], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)  # fmt: skip
  assert bad.returncode != 0 and 'cluster.init' in bad.stderr


def test_a_detection_source_trains_the_student_on_scene_labels(transfer_config, tiny_world, tmp_path):
  # Noroozi Table 5's "Places labels" row in miniature: the world's scenes, each labelled by its largest object.
  cfg, model_dir = transfer_config, str(tmp_path)
  cfg.train.source, cfg.train.num_classes = tiny_world['sources']['detection_trainval'], 0
  trained = student.run_train(cfg, model_dir, progress=False)
  with open(tmp_path / 'scenes' / 'train.json') as f:
    labels = json.load(f)['labels']
  assert trained['train_source'] == f'tfrecord:{tmp_path / "scenes" / "train.tfrecord"}'
  assert trained['num_classes'] == max(labels) + 1 and trained['steps'] == cfg.train.steps
  cfg.train.num_classes = 1
  with pytest.raises(ConfigError, match=r'train\.num_classes: 1 is too few for the scene labels'):
    student.run_train(cfg, str(tmp_path / 'again'), progress=False)
