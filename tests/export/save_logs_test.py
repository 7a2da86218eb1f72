"""Exports log nothing from TensorFlow: no Keras layer serialization, no harmless rename lines."""

import logging

import tensorflow as tf
from absl import logging as absl_logging

from mtssl_tf.configs import LassoConfig
from mtssl_tf.export.saved_model import export
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel


def test_export_is_quiet_and_saves_only_what_the_signatures_read(tiny_trunk, tmp_path, caplog):
  cfg = TasksConfig()
  cfg.relative_position.enabled = True
  lasso = LassoConfig()
  lasso.enabled = True
  model = MultiTaskModel(tiny_trunk, build_tasks(cfg, 16), lasso)
  model.features('relative_position', tf.zeros([1, 32, 32, 3]), training=False)
  for name in ('absl', 'tensorflow'):
    caplog.set_level(logging.INFO, logger=name)
  absl_logging.info('capture check')  # INFO records of both loggers reach caplog.
  tf.get_logger().info('capture check')
  path = export(model, str(tmp_path / 'saved'))
  messages = [r.getMessage() for r in caplog.records]
  assert messages == ['capture check', 'capture check'], messages

  loaded = tf.saved_model.load(path)
  assert not hasattr(loaded, 'model')  # No Keras layers in the SavedModel.
  expected = {v.name for v in model.trunk.variables + model.lasso.variables}
  for norm in model.lasso_norms.values():  # Only with lasso.mix_norm 'per_consumer'.
    expected |= {v.name for v in norm.variables}
  assert {v.name for v in loaded.trunk_variables} == expected
