"""voc07_cls on a deepcontext-style AlexNet run (conv1 padded by 5, no conv groups; Context's trunk): the conv
layers go into the standard AlexNet with the run's groups, so every kernel fits."""

import os

import numpy as np
import tensorflow as tf

from mtssl_tf.configs import save_config
from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation import voc_classification as vc
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.trunk.registry import build_trunk


def test_an_ungrouped_context_trunk_is_copied_into_an_ungrouped_alexnet(tmp_path):
  run_dir = str(tmp_path / 'run')
  cfg = ExperimentConfig()
  cfg.trunk.kind = 'alexnet'
  cfg.trunk.alexnet.width = 1 / 16
  cfg.trunk.alexnet.conv1_padding = 5
  cfg.trunk.alexnet.groups = 1
  save_config(cfg, run_dir)
  trunk = build_trunk(cfg.trunk)
  trunk(tf.zeros([1, 96, 96, 3]), training=False)
  rng = np.random.default_rng(3)
  for v in trunk.variables:
    v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
  tf.train.Checkpoint(model=tf.train.Checkpoint(trunk=trunk)).save(os.path.join(run_dir, 'checkpoints', 'ckpt'))

  eval_cfg = load_eval_config([], ['voc07_cls.crop_size=64', 'voc07_cls.fc_units=64'], run_dir)
  model, description = vc.build_classifier(runner.context('voc07_cls', eval_cfg, run_dir, progress=False))
  net = model.net
  assert net.groups == 1 and net.conv1_padding == 0 and net.spec.conv1_stride == 4
  for conv in ('conv2', 'conv4', 'conv5'):  # The grouped layers of CaffeNet: full fan-in here, as in the run.
    np.testing.assert_array_equal(net.convs[conv].kernel.numpy(), trunk.net.convs[conv].kernel.numpy(), conv)
  logits = model(tf.zeros([2, 64, 64, 3], tf.uint8), training=False)
  assert logits.shape == (2, eval_cfg.voc07_cls.num_classes)
