"""The supervised "ImageNet labels" baseline: schedule, config, a short run, its trunk for other evaluations."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, override, validate_all
from mtssl_tf.evaluation import backbone, supervised

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def tiny_cfg(**values) -> supervised.SupervisedConfig:
  cfg = supervised.SupervisedConfig()
  override(cfg, dict(image_size=64, crop_size=56, batch_size=8, eval_batch_size=10, steps=3, log_every_steps=1,
                     checkpoint_every_steps=2, shuffle_buffer=40))  # fmt: skip
  return override(cfg, values)


@pytest.mark.parametrize(
  'epoch_size, values',
  [
    # 100 steps per epoch: the rate drops at steps 200, 400 (after epochs 2, 4), not before.
    (1000, {0: 1.0, 199: 1.0, 200: 0.94, 399: 0.94, 400: 0.94**2, 1000: 0.94**5}),
    # 100.1 steps per epoch: epoch 2 ends at step 200.2, epoch 4 at 400.4.
    (1001, {200: 1.0, 201: 0.94, 400: 0.94, 401: 0.94**2}),
  ],
)
def test_learning_rate_drops_by_0_94_every_two_epochs(epoch_size, values):
  cfg = tiny_cfg(learning_rate=0.1, batch_size=10)
  schedule = supervised.learning_rate_schedule(cfg, epoch_size)
  for step, factor in values.items():
    assert float(schedule(step)) == pytest.approx(0.1 * factor, rel=1e-6), step


@pytest.mark.parametrize(
  'values, key',
  [
    ({'epochs_per_decay': 0.0}, 'supervised.epochs_per_decay'),
    ({'lr_decay_factor': 1.5}, 'supervised.lr_decay_factor'),
    ({'crop_size': 72}, 'supervised.image_size'),
    ({'epoch_size': -1}, 'supervised.epoch_size'),
    ({'batch_size': 0}, 'supervised.batch_size'),
  ],
)
def test_config_errors_name_the_key(values, key):
  with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
    validate_all(tiny_cfg(**values))


def test_missing_source_is_named(pretrained, tmp_path):
  with pytest.raises(ConfigError, match=r'supervised\.validation_source'):
    supervised.run_supervised(tiny_cfg(), pretrained['trunk_config'], str(tmp_path), 'tfrecord:x', '')


def test_short_run_gives_a_trunk_the_other_evaluations_load(pretrained, tiny_world, tmp_path):
  trunk_config = pretrained['trunk_config']
  sources = tiny_world['sources']
  args = (trunk_config, str(tmp_path), sources['images_train'], sources['images_validation'])
  results = supervised.run_supervised(tiny_cfg(steps=2), *args, progress=False)
  out_dir = os.path.join(tmp_path, 'eval', 'supervised')
  assert json.load(open(os.path.join(out_dir, 'results.json')))['top1'] == pytest.approx(results['top1'])
  assert 0 <= results['top1'] <= results['top5'] <= 1
  counts = results['counts']
  assert (counts['epoch_size'], counts['num_classes'], counts['validation_examples']) == (40, 10, 20)
  tags = set()
  for path in glob.glob(os.path.join(out_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {'supervised/top1', 'supervised/top5', 'supervised/loss', 'supervised/learning_rate'} <= tags

  # Resumes from step 2; the trunk it saved is what load_trunk reads from the eval folder.
  results = supervised.run_supervised(tiny_cfg(steps=3), *args, progress=False)
  assert results['counts']['steps'] == 3 and results['checkpoint'].endswith('ckpt-3')
  model = supervised.SupervisedModel(trunk_config, 10)
  model(tf.zeros([1, 56, 56, 3]))
  tf.train.Checkpoint(model=model).read(results['checkpoint']).expect_partial().assert_existing_objects_matched()
  trunk = backbone.load_trunk(results['trunk_source'], trunk_config)
  assert len(trunk.variables) == len(model.trunk.variables)
  for loaded, trained in zip(trunk.variables, model.trunk.variables):
    assert trained.name == 'supervised/' + loaded.name
    np.testing.assert_array_equal(loaded.numpy(), trained.numpy(), err_msg=loaded.name)
  assert backbone.run_trunk_config(results['trunk_source'])['width'] == trunk_config.width
  # Training went on after the resume: the trunk of step 3 is not the one of step 2.
  step2 = backbone.load_trunk(results['checkpoint'][: -len('3')] + '2', trunk_config)
  assert not np.allclose(step2.stem_conv.kernel.numpy(), trunk.stem_conv.kernel.numpy())
