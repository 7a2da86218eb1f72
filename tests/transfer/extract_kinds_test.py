"""Teachers of every trunk kind: AlexNet / VGG16 runs give Noroozi §5 features, and mtssl-transfer runs from them."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from mtssl_tf.configs import ConfigError, LassoConfig, save_config
from mtssl_tf.evaluation import backbone
from mtssl_tf.export.saved_model import export
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.transfer import extract
from mtssl_tf.transfer.config import load_transfer_config
from mtssl_tf.trunk import alexnet, vgg16
from mtssl_tf.trunk.inputs import preprocess
from mtssl_tf.trunk.registry import build_trunk
from mtssl_tf.trunk.teacher_features import teacher_features

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

ROOT = pathlib.Path(__file__).parents[2]
WIDTH = 1 / 16
# (kind, AlexNet variant, crop): conv4 must hold §5's grid. Standard AlexNet (conv1 stride 4) at 112 px has a
# 6x6 conv4, the Jigsaw variant (stride 2) at 64 px too; VGG16's conv4_3 at 64 px is 8x8.
TEACHERS = [('alexnet', 'standard', 112), ('alexnet', 'jigsaw', 64), ('vgg16', '', 64)]


def make_conv_run(run_dir: str, kind: str, variant: str = '') -> str:
  """A pre-training run folder of a `kind` trunk: config.yaml, and checkpoints/ with the trunk at model/trunk."""
  cfg = ExperimentConfig()
  cfg.trunk.kind = kind
  section = getattr(cfg.trunk, kind)
  section.width, section.batch_norm = WIDTH, kind == 'vgg16'
  if variant:
    section.variant = variant
  save_config(cfg, run_dir)
  trunk = build_trunk(cfg.trunk)
  trunk(tf.zeros([1, 64, 64, 3]), training=False)
  rng = np.random.default_rng(5)
  for v in trunk.variables:  # Distinctive values, so a teacher read at random init would differ.
    positive = any(k in v.name for k in ('gamma', 'variance'))
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32) + (1.0 if positive else 0.0))
  tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))
  return run_dir


def section5_dims(kind: str) -> int:
  """grid * grid * conv4 channels at `WIDTH` (Noroozi §5: 5x5x384 AlexNet, 4x4x512 VGG16 at full width)."""
  if kind == 'alexnet':
    (groups,) = [g for name, _, _, _, g, _ in alexnet.CONVS if name == 'conv4']
    return 5 * 5 * alexnet.scaled(384, WIDTH, groups)
  return 4 * 4 * vgg16.scaled(512, WIDTH)


def extract_config(run_dir: str, world, crop: int, *overrides: str):
  sources = world['sources']
  values = [f'extract.init={run_dir}', f'extract.source={sources["images_train"]}', f'extract.image_size={crop}',
            f'extract.crop_size={crop}', 'extract.batch_size=8', *overrides]  # fmt: skip
  return load_transfer_config([], values)


@pytest.mark.parametrize('kind,variant,crop', TEACHERS, ids=['alexnet', 'alexnet_jigsaw', 'vgg16'])
def test_conv_teachers_give_section5_features(kind, variant, crop, tiny_world, tmp_path):
  run_dir = make_conv_run(str(tmp_path / 'run'), kind, variant)
  cfg = extract_config(run_dir, tiny_world, crop)
  assert cfg.extract.trunk.kind == kind  # From the run's config.yaml alone.
  featurizer = extract.build_featurizer(cfg.extract)
  assert featurizer.dims == section5_dims(kind)
  assert featurizer.fingerprint['teacher_features'] == 'section5'
  assert featurizer.fingerprint['endpoint'] == {'alexnet': 'conv4', 'vgg16': 'conv4_3'}[kind]
  images = tf.cast(tf.random.uniform([3, crop, crop, 3], 0, 256, seed=1), tf.uint8)
  # The same trunk and §5 pooling computed directly: same ops on the same weights, so only
  # float reassociation between a traced and an eager call separates them (float32, ~1e-6 relative).
  trunk = backbone.load_trunk(run_dir, cfg.extract.trunk)
  direct = teacher_features(trunk(preprocess(images, 'rgb'), training=False), kind).numpy()
  got = featurizer(images)
  assert got.shape == (3, section5_dims(kind)) and got.dtype == np.float32
  np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())

  # The named choice: the configured endpoint pooled by pooling / grid, as for a ResNet-v2 teacher.
  other = extract_config(run_dir, tiny_world, crop, 'extract.teacher_features=endpoint', 'extract.grid=2')
  pooled = extract.build_featurizer(other.extract)
  assert pooled.dims == 2 * 2 * trunk.output_channels and pooled.fingerprint['endpoint'] == 'final'
  assert 'teacher_features' not in pooled.fingerprint


def test_an_exported_vgg16_teacher_gives_the_same_section5_features(tiny_world, tmp_path):
  run_dir = make_conv_run(str(tmp_path / 'run'), 'vgg16')
  cfg = extract_config(run_dir, tiny_world, 64)
  model = MultiTaskModel(cfg.extract.trunk, {}, LassoConfig())
  model.trunk(tf.zeros([1, 64, 64, 3]), training=False)
  tf.train.Checkpoint(model=model).read(os.path.join(run_dir, 'checkpoints', 'ckpt-1')).expect_partial()
  saved = export(model, str(tmp_path / 'export'), image_size=64)  # Away from the run: the kind comes from the export.
  from_export = extract_config(saved, tiny_world, 64)
  assert from_export.extract.trunk.kind == 'resnet_v2'  # No config.yaml beside it.
  exported = extract.build_featurizer(from_export.extract)
  assert exported.dims == section5_dims('vgg16') and exported.fingerprint['output_key'] == 'conv4_3'
  images = tf.cast(tf.random.uniform([2, 64, 64, 3], 0, 256, seed=2), tf.uint8)
  direct = extract.build_featurizer(cfg.extract)(images)
  # The same ops on the same weights, traced in two functions: float32 reassociation only.
  np.testing.assert_allclose(exported(images), direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())
  with pytest.raises(ConfigError, match=r'extract\.crop_size: signature .* takes 64x64 images'):
    extract.build_featurizer(extract_config(saved, tiny_world, 72).extract)


def test_a_crop_too_small_for_the_section5_grid_is_named(tiny_world, tmp_path):
  run_dir = make_conv_run(str(tmp_path / 'run'), 'alexnet')
  cfg = extract_config(run_dir, tiny_world, 64)  # Standard AlexNet: conv4 is 3x3 at 64 px.
  with pytest.raises(ConfigError, match=r'extract\.crop_size: 64 px .* 3x3 conv4, smaller than the 5x5 grid'):
    extract.build_featurizer(cfg.extract)
  with pytest.raises(ConfigError, match=r'extract\.teacher_features'):
    load_transfer_config([], [f'extract.init={run_dir}', 'extract.teacher_features=conv4'])


def test_mtssl_transfer_runs_the_chain_from_a_vgg16_run(tiny_world, tmp_path):
  run_dir = make_conv_run(str(tmp_path / 'vgg16_run'), 'vgg16')
  sources = tiny_world['sources']
  small = {
    'extract': {'source': sources['images_train'], 'init': run_dir, 'image_size': 64, 'crop_size': 64,
                'batch_size': 20, 'shard_size': 20, 'num_images': 40},
    'cluster': {'num_clusters': 3, 'iterations': 3},
    'train': {'width': 0.125, 'batch_norm': True, 'image_size': 64, 'crop_size': 56, 'steps': 2, 'batch_size': 8,
              'log_every_steps': 2, 'checkpoint_every_steps': 2, 'shuffle_buffer': 40},
    'probe': {'train_source': sources['images_train'], 'validation_source': sources['images_validation'],
              'image_size': 64, 'crop_size': 56, 'steps': 2, 'batch_size': 8, 'eval_batch_size': 20,
              'log_every_steps': 2, 'checkpoint_every_steps': 2, 'shuffle_buffer': 40},
  }  # fmt: skip
  config = tmp_path / 'vgg16_teacher.yaml'
  config.write_text(yaml.safe_dump(small))
  model_dir = tmp_path / 'transfer'
  command = [sys.executable, '-m', 'mtssl_tf.bin.transfer', 'all', f'--config={config}', f'--model_dir={model_dir}']
  result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = {line.split(':', 1)[0]: line.split(':', 1)[1] for line in result.stdout.splitlines() if ':' in line}
  assert json.loads(lines['extract'])['rows'] == 40 and json.loads(lines['assign'])['images'] == 40
  assert sorted(json.loads(lines['probe'])) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
  manifest = json.loads((model_dir / 'features' / 'manifest.json').read_text())
  assert manifest['dims'] == section5_dims('vgg16') and manifest['fingerprint']['trunk']['kind'] == 'vgg16'
