"""SavedModel export: signatures, values equal to the live model, loadable without mtssl_tf."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, LassoConfig, override, save_config, validate_all
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.export.saved_model import export
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import launch
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.transfer.config import ExtractConfig
from mtssl_tf.transfer.extract import NetworkFeatures, resolve_preprocessing
from mtssl_tf.trunk.inputs import preprocess

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics

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
  assert loaded.input_convention.numpy() == b'rgb'  # Colour by default (Doersch §3.3).
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


def test_export_feeds_colour_unless_grey_is_asked_and_extraction_agrees(tiny_trunk, tiny_world, tmp_path):
  # A harmonized run (RP/H): Doersch §3.3 still evaluates it on colour images.
  cfg = ExperimentConfig()
  cfg.trunk = tiny_trunk
  cfg.runtime.precision = 'float32'  # As the model built below; 'auto' is bf16 on some CPUs.
  rp = dict(enabled=True, harmonize=True, batch_size=2, patch_size=16, gap=4, jitter=1, min_area=4096, max_area=4096,
            min_downsample=4, hidden_units=8)  # fmt: skip
  override(cfg, {'tasks': {'relative_position': rp}})
  validate_all(cfg)
  source = tiny_world['sources']['images_train']
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso)
  model.build_all({n: next(iter(t.dataset(ReadOptions(), source, repeat=False))) for n, t in tasks.items()})
  run_dir = str(tmp_path / 'run')
  save_config(cfg, run_dir)
  tf.train.Checkpoint(model=model).save(f'{run_dir}/checkpoints/ckpt')
  images = tf.constant(np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
  exported = {}
  for choice, expected in (('', 'rgb'), ('as_trained', 'harmonized')):
    # The default (no argument) into the run's saved_model/, as mtssl-train and mtssl-export write it.
    args = (str(tmp_path / choice), choice) if choice else ()
    path = launch.export_latest(cfg, run_dir, *args)
    loaded = tf.saved_model.load(path)
    assert loaded.input_convention.numpy().decode() == expected
    live = model.trunk(preprocess(images, expected), training=False)['final']
    # Same weights, same float32 ops in the same order: equal up to rounding (~1e-6).
    np.testing.assert_allclose(loaded.signatures['final'](images=images)['final'], live, atol=1e-5)
    exported[expected] = path

  # Transfer extraction: colour by default, grey when asked, from the checkpoint or from a
  # SavedModel exported that way; a SavedModel that preprocesses otherwise is a named error.
  cases = [
    (run_dir, 'rgb', 'rgb', True),
    (run_dir, 'as_trained', 'harmonized', True),
    (exported['rgb'], 'rgb', 'rgb', True),
    (exported['harmonized'], 'rgb', 'rgb', False),
    (exported['harmonized'], 'harmonized', 'harmonized', True),
    (exported['rgb'], 'as_trained', 'harmonized', False),  # Its run was harmonized; it was exported colour.
  ]
  extract = ExtractConfig()
  assert extract.preprocessing == 'rgb'
  extract.trunk = tiny_trunk
  extract.crop_size = extract.image_size = 32
  for init, asked, mode, ok in cases:
    extract.init, extract.preprocessing = init, asked
    assert resolve_preprocessing(extract) == mode
    if ok:
      assert NetworkFeatures(extract).dims > 0
    else:
      with pytest.raises(ConfigError, match='extract.preprocessing'):
        NetworkFeatures(extract)
