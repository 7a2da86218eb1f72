"""Figures 3 and 4: PNG files of the documented size, from fabricated data and a real lasso checkpoint."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import override, save_config
from mtssl_tf.grid import figures
from mtssl_tf.tasks import build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.experiment import ExperimentConfig


def _png_size(path):
  image = tf.image.decode_png(tf.io.read_file(path))
  return int(image.shape[1]), int(image.shape[0])


def test_figure3_from_fabricated_series(tmp_path):
  series = {
    'ImageNet top-5 (%)': {'rp': [(2.0, 20.0), (1.0, 15.0)], 'col': [(1.0, 18.0), (2.0, 22.0)]},
    'NYU % < 1.25': {'rp': [(1.0, 40.0), (2.0, 45.0)]},
  }
  path = figures.figure3(series, str(tmp_path / 'out' / 'figure3.png'), {'ImageNet top-5 (%)': {'random': 12.0}})
  assert _png_size(path) == figures.figure3_size(2) == (800, 320)
  with pytest.raises(ValueError, match='no series'):
    figures.figure3({}, str(tmp_path / 'empty.png'))


def test_figure4_from_fabricated_alpha(tmp_path):
  alpha = np.random.default_rng(0).normal(size=(4, 23))
  names = ['relative_position', 'colorization', 'exemplar', 'motion_segmentation']
  path = figures.figure4(alpha, names, str(tmp_path / 'figure4.png'))
  assert _png_size(path) == figures.figure4_size(4, 23)
  with pytest.raises(ValueError, match='3 row names for 4 rows'):
    figures.figure4(alpha, names[:3], str(tmp_path / 'bad.png'))
  with pytest.raises(ValueError, match='tasks, units'):
    figures.figure4(alpha[0], names, str(tmp_path / 'bad.png'))


def _lasso_run(run_dir, lasso=True):
  """A run dir as mtssl-train leaves it: config.yaml + checkpoints/ckpt-1 holding model/lasso."""
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 3], 'width': 8},
    'lasso': {'enabled': lasso},
    'tasks': {'relative_position': {'enabled': True, 'hidden_units': 8}, 'exemplar': {'enabled': True}},
  })  # fmt: skip
  save_config(cfg, run_dir)
  model = MultiTaskModel(cfg.trunk, build_tasks(cfg.tasks, 16), cfg.lasso)
  if lasso:  # Distinct, non-normalised rows: the reader must normalise them as LassoMix does.
    model.lasso.raw_alpha.assign(np.random.default_rng(1).uniform(0.1, 2.0, (2, 3)).astype(np.float32))
  tf.train.Checkpoint(model=model).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))
  return model


def test_figure4_from_a_real_lasso_checkpoint(tmp_path):
  run_dir = str(tmp_path / 'run')
  model = _lasso_run(run_dir)
  alpha, names = figures.alpha_from_checkpoint(run_dir)
  assert names == ['relative_position', 'exemplar']  # The lasso rows' (registry) order.
  np.testing.assert_allclose(alpha, model.lasso.alpha().numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.sum(alpha**2, axis=1), 1.0, rtol=1e-5)
  path = figures.figure4(alpha, names, str(tmp_path / 'figures' / 'figure4.png'))
  assert _png_size(path) == figures.figure4_size(2, 3)
  log_dir = figures.write_tensorboard([path], str(tmp_path / 'figures' / 'tb'))
  events = glob.glob(os.path.join(log_dir, 'events.out.tfevents.*'))
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert 'figure4' in tags


def test_alpha_from_a_checkpoint_without_lasso_is_an_error(tmp_path):
  run_dir = str(tmp_path / 'run')
  _lasso_run(run_dir, lasso=False)
  with pytest.raises(FileNotFoundError, match='has no lasso'):
    figures.alpha_from_checkpoint(run_dir)
  with pytest.raises(FileNotFoundError):
    figures.alpha_from_checkpoint(str(tmp_path / 'missing'))
