"""SavedModel export: signatures, values equal to the live model, loadable without mtssl_tf."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig
from mtssl_tf.export.saved_model import export, preprocess
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel

SAVED_MODEL_CLI = str(__import__('pathlib').Path(sys.executable).with_name('saved_model_cli'))


def _model(tiny_trunk):
  cfg = TasksConfig()
  cfg.relative_position.enabled = True
  cfg.exemplar.enabled = True
  lasso = LassoConfig()
  lasso.enabled = True
  lasso.init = 'uniform'
  model = MultiTaskModel(tiny_trunk, build_tasks(cfg, 16), lasso)
  for name in model.task_names:
    model.features(name, tf.zeros([1, 32, 32, 3]), training=False)
  return model


def test_export_signatures_values_and_standalone_load(tiny_trunk, tmp_path):
  model = _model(tiny_trunk)
  path = export(model, str(tmp_path / 'saved'))
  images = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
  loaded = tf.saved_model.load(path)
  assert set(loaded.signatures) == {'serving_default', 'final', 'block3_units', 'lasso'}
  final = loaded.signatures['final'](images=tf.constant(images))['final'].numpy()
  live = model.trunk(preprocess(tf.constant(images), 'rgb'), training=False)
  np.testing.assert_allclose(final, live['final'].numpy(), atol=1e-5)
  units = loaded.signatures['block3_units'](images=tf.constant(images))
  assert sorted(units) == ['unit_01', 'unit_02']
  mixes = loaded.signatures['lasso'](images=tf.constant(images))
  assert sorted(mixes) == ['exemplar', 'relative_position'] and mixes['exemplar'].shape == (2, 3, 4, 128)

  shown = subprocess.run([SAVED_MODEL_CLI, 'show', '--dir', path, '--all'], capture_output=True, text=True)
  assert shown.returncode == 0, shown.stderr
  for name in ('serving_default', 'final', 'block3_units', 'lasso'):
    assert f"signature_def['{name}']" in shown.stdout

  # A downstream process that cannot import mtssl_tf at all.
  np.save(tmp_path / 'images.npy', images)
  script = (
    "import sys; sys.modules['mtssl_tf'] = None\n"
    'import json, numpy as np, tensorflow as tf\n'
    f'm = tf.saved_model.load({path!r})\n'
    f'x = tf.constant(np.load({str(tmp_path / "images.npy")!r}))\n'
    "print(json.dumps(m.signatures['final'](images=x)['final'].numpy().sum().item()))\n"
  )
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert json.loads(run.stdout.strip().splitlines()[-1]) == pytest.approx(float(final.sum()), rel=1e-4)


def test_without_lasso_there_is_no_lasso_signature(tiny_trunk, tmp_path):
  cfg = TasksConfig()
  cfg.exemplar.enabled = True
  model = MultiTaskModel(tiny_trunk, build_tasks(cfg, 16), LassoConfig())
  model.features('exemplar', tf.zeros([1, 32, 32, 3]), training=False)
  loaded = tf.saved_model.load(export(model, str(tmp_path / 'saved'), preprocessing='harmonized'))
  assert set(loaded.signatures) == {'serving_default', 'final', 'block3_units'}
  gray = np.full((1, 32, 32, 3), 128, np.uint8)
  assert loaded.signatures['final'](images=tf.constant(gray))['final'].shape == (1, 2, 2, 128)
