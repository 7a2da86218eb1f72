"""Students: the model registry, training on pseudo-labels (resumable), per-layer probes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, TrunkConfig
from mtssl_tf.data.synthetic.classification import encode_png, image_example
from mtssl_tf.evaluation import backbone
from mtssl_tf.transfer import models, student
from mtssl_tf.transfer.config import ProbeConfig, StudentConfig
from mtssl_tf.trunk import alexnet

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]])


def _colour_images(size: int = 64) -> np.ndarray:
  """48 noisy images whose label is their colour (i % 3), seeded."""
  rng = np.random.default_rng(0)
  return np.stack([np.clip(COLOURS[i % 3] + rng.normal(0, 25, (size, size, 3)), 0, 255) for i in range(48)]).astype(
    np.uint8
  )


@pytest.fixture(scope='module')
def colour_records(tmp_path_factory):
  """An easy pseudo-labelled set: 48 noisy 64 px images whose label is their colour (3 classes)."""
  folder = tmp_path_factory.mktemp('colours')
  with tf.io.TFRecordWriter(str(folder / 'train-00000.tfrecord')) as writer:
    for i, image in enumerate(_colour_images()):
      writer.write(image_example(encode_png(image), i % 3).SerializeToString())
  return f'tfrecord:{folder}/train-*'


def _tiny_student_config(**changes):
  cfg = StudentConfig()
  cfg.width, cfg.dropout, cfg.image_size, cfg.crop_size, cfg.batch_size = 0.125, 0.0, 64, 56, 12
  cfg.batch_norm = True  # Small-world training from scratch (the paper's network has LRN).
  cfg.steps, cfg.learning_rate, cfg.log_every_steps, cfg.checkpoint_every_steps, cfg.shuffle_buffer = (
    30,
    0.02,
    5,
    10,
    48,
  )
  for key, value in changes.items():
    setattr(cfg, key, value)
  return cfg


def test_alexnet_student_is_the_papers_network_plus_the_cluster_classifier():
  # Full width at CaffeNet's 227 px: the trunk's endpoints (Caffe ceil pools: 55 -> 27 -> 13 -> 6) + fc8.
  full = models.build_model('alexnet', 1000, 227)
  shapes = {k: tuple(v.shape[1:]) for k, v in full(tf.zeros([1, 227, 227, 3]), training=False).items()}
  assert shapes == {'conv1': (55, 55, 96), 'conv2': (27, 27, 256), 'conv3': (13, 13, 384), 'conv4': (13, 13, 384),
                    'conv5': (13, 13, 256), 'pool5': (6, 6, 256), 'fc6': (4096,), 'fc7': (4096,),
                    'logits': (1000,)}  # fmt: skip
  assert full.probe_endpoints == ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
  # Parameters: trunk.alexnet's arithmetic (fc6/fc7 included) + fc8; with 1000 classes CaffeNet's 60,965,224.
  assert full.count_params() == alexnet.parameter_count('standard') + 4096 * 1000 + 1000 == 60_965_224
  assert [full.convs[c].groups for c, *_ in alexnet.CONVS] == [1, 2, 1, 2, 2]
  assert not [v for v in full.variables if '_bn' in v.name]  # The paper's network: LRN, no BatchNorm.
  del full
  # Our small-world options: a width multiplier and BatchNorm; counts still from the arithmetic.
  tiny = models.build_model('alexnet', 7, 64, width=0.125, batch_norm=True)
  endpoints = tiny(tf.zeros([2, 64, 64, 3]), training=False)
  assert endpoints['logits'].shape == (2, 7) and endpoints['conv1'].shape == (2, 14, 14, 12)
  assert endpoints['fc6'].shape == (2, 512) and endpoints['conv5'].shape == (2, 3, 3, 32)
  expected = alexnet.parameter_count('standard', 0.125, True, input_size=64) + 512 * 7 + 7
  assert tiny.count_params() == expected == models.alexnet_parameter_count(7, 0.125, True, input_size=64)
  with pytest.raises(ValueError, match='55 px'):
    models.build_model('alexnet', 7, 48, width=0.125)


def test_registry_builds_other_students_with_probe_layers():
  keras = models.build_model('keras:MobileNetV2', 5, 64, alpha=0.35)
  outputs = keras(tf.zeros([1, 64, 64, 3]))
  assert outputs['logits'].shape == (1, 5) and len(keras.probe_endpoints) == 5
  assert [outputs[e].shape[1] for e in keras.probe_endpoints] == [32, 16, 8, 4, 2]
  with pytest.raises(ValueError, match='unknown architecture'):
    models.build_model('vgg_nonexistent', 5, 64)
  assert 'alexnet' in models.model_names() and 'resnet_v2_trunk' in models.model_names()


def test_student_learns_an_easy_labelling_and_resumes(colour_records, tmp_path):
  out = str(tmp_path / 'student')
  results = student.train_student(_tiny_student_config(steps=20), out, colour_records, 3, progress=False, export=False)
  assert results['steps'] == 20 and np.isfinite(results['last_window']['loss'])
  assert results['last_window']['loss'] < results['first_window']['loss']
  assert results['last_window']['train_top1'] >= 0.8
  # Resumed to a later step from the last checkpoint; then loadable and exported.
  results = student.train_student(_tiny_student_config(steps=24), out, colour_records, 3, progress=False)
  assert results['steps'] == 24 and results['checkpoint'].endswith('ckpt-24')
  assert {'checkpoints', 'results.json', 'saved_model', 'student.json'} <= set(os.listdir(out))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(out))
  loaded = student.load_student(out)
  images = tf.constant(np.repeat(COLOURS[:, None, None], 56, 1).repeat(56, 2).astype(np.uint8))
  loaded_logits = loaded(tf.cast(images, tf.float32) / 127.5 - 1, training=False)['logits'].numpy()
  exported = tf.saved_model.load(os.path.join(out, 'saved_model'))
  features = exported.signatures['features'](images=images)
  assert sorted(features) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
  logits = exported.signatures['serving_default'](images=images)['logits'].numpy()
  # The SavedModel is the same network traced separately: equal up to float32 rounding of a
  # few thousand-term sums (relative ~1e-5 of the logits' scale; 1e-3 leaves a wide margin).
  np.testing.assert_allclose(logits, loaded_logits, rtol=0, atol=1e-3 * max(1.0, np.abs(loaded_logits).max()))
  # The restored weights are the trained ones: on the training images, with BatchNorm on batch
  # statistics as in training (after 24 steps the moving statistics have moved ~21% of the way
  # at momentum 0.99, so inference mode says little), it beats chance (1/3) by a margin. Which
  # images it gets right depends on the arithmetic; the rate clears 0.5 with room (train top-1 >= 0.8).
  # (Last: a training-mode call also moves the moving statistics.)
  crops = tf.cast(_colour_images()[:, 4:60, 4:60], tf.float32) / 127.5 - 1
  predicted = loaded(crops, training=True)['logits'].numpy().argmax(-1)
  assert np.mean(predicted == np.arange(48) % 3) >= 0.5


def test_probe_student_reports_each_layer(colour_records, tmp_path):
  tf.keras.utils.set_random_seed(0)
  model = models.build_model('alexnet', 4, 56, width=0.125, batch_norm=True)
  cfg = ProbeConfig()
  cfg.image_size, cfg.crop_size, cfg.steps, cfg.batch_size, cfg.eval_batch_size = 64, 56, 4, 12, 16
  cfg.log_every_steps, cfg.checkpoint_every_steps, cfg.shuffle_buffer = 2, 4, 48
  cfg.endpoints = ('conv1', 'conv5', 'fc7')
  results = student.probe_student(cfg, model, str(tmp_path / 'probe'), colour_records, colour_records, progress=False)
  probes = results['probes']
  assert sorted(probes) == ['conv1', 'conv5', 'fc7']
  assert all(0.0 <= p['top1'] <= p['top5'] <= 1.0 for p in probes.values())
  assert probes['conv1']['grid'] == 12 and probes['conv1']['dims'] == 12 * 12 * 12  # Under 9216: the whole map.
  assert probes['fc7']['grid'] == 1 and probes['fc7']['dims'] == 512
  assert results['counts']['num_classes'] == 3 and results['counts']['validation_examples'] == 48
  with open(tmp_path / 'probe' / 'results.json') as f:
    assert json.load(f)['probes']['conv5']['top1'] == probes['conv5']['top1']
  cfg.endpoints = ('conv9',)
  with pytest.raises(ConfigError, match='probe.endpoints'):
    student.probe_student(cfg, model, str(tmp_path / 'other'), colour_records, colour_records, progress=False)


def test_trunk_student_is_a_trunk_for_the_evaluations(colour_records, tmp_path):
  trunk = TrunkConfig()
  trunk.units_per_block, trunk.width = (1, 1, 2), 8
  cfg = _tiny_student_config(architecture='resnet_v2_trunk', trunk=trunk, steps=2, checkpoint_every_steps=2)
  out = str(tmp_path / 'student')
  student.train_student(cfg, out, colour_records, 3, progress=False, export=False)
  assert backbone.run_trunk_config(out)['width'] == 8
  loaded = backbone.load_trunk(out, trunk)
  trained = student.load_student(out)
  assert trained.probe_endpoints == ('stem', 'block1', 'block2', 'block3')
  for a, b in zip(loaded.variables, trained.trunk.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(ConfigError, match='train.architecture'):
    student.train_student(_tiny_student_config(architecture='nope'), str(tmp_path / 'x'), colour_records, 3)
