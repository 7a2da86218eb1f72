"""SavedModel export of the trunk from named endpoints (never from graph names).

Signatures (all take `images`: uint8 [batch, height, width, 3], any size):
* `final`: {'final': [B, h, w, C]}, the representation heads read without lasso;
* `block3_units`: {'unit_01': ..., 'unit_NN': ...}, every block-3 unit;
* `lasso` (when the model has lasso): {<task>: mix}, each task's normalised lasso mix.
`serving_default` is `final`. Preprocessing is inside the model, so a downstream user
needs nothing from mtssl_tf: 'rgb' scales colour to [-1, 1], the default for every
trunk, harmonized or not (Doersch §3.3 replicate L "so that the network can be
evaluated on color images"); 'harmonized' feeds Lab's L replicated to three channels
(grey), when asked. The module's `input_convention` variable records which, so
readers (transfer extraction) can check it.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, List

import tensorflow as tf
from absl import logging as absl_logging

from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.trunk.inputs import PREPROCESSING, preprocess
from mtssl_tf.trunk.resnet_v2 import unit_endpoint_name

_IMAGES = tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')


class ModelRef:
  """Holds a Keras model on an export module without putting it in the SavedModel.

  `tf.saved_model.save` serializes every Keras layer the module tracks: it traces each
  layer's call functions apart from the signatures (TF's "Found untraced functions" and
  "Skipping full serialization of Keras layer" pages) and writes Keras metadata no
  reader of these exports uses. An export module keeps its model in a ModelRef (a plain
  object, which TF does not track) and tracks `variables_read(...)` of its signatures.
  """

  def __init__(self, model: tf.keras.Model):
    self.model = model


def variables_read(functions) -> List[tf.Variable]:
  """The variables the tf.functions (with input signatures) read, each once; traces them."""
  read = {v.ref(): v for f in functions for v in f.get_concrete_function().variables}
  return list(read.values())


# TF 2.15 names every variable a tf.function captures 'resource' (TensorSpec.placeholder_value
# records the op's input name as `_user_specified_name`), so signature_serialization logs
# "Function `f` contains input name(s) resource with unsupported characters which will be
# renamed ..." for every signature that reads a variable. Only those captured handles are
# renamed (the signatures' own input keeps its explicit name, `images`), so the line is
# harmless and cannot be avoided; a rename of any other input is still logged. TF's two
# "written to" lines repeat the path the caller reports.
_HARMLESS_SAVE_LOGS = re.compile(
  r'Function `[^`]*` contains input name\(s\) resource with unsupported characters'
  r'|Assets written to: |Writing fingerprint to '
)


class _HarmlessSaveLogs(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not _HARMLESS_SAVE_LOGS.match(record.getMessage())


class TrunkExport(tf.Module):
  """The exported module: the trunk (and lasso), with one tf.function per signature."""

  def __init__(self, model: MultiTaskModel, preprocessing: str = 'rgb', output_stride: int = 16):
    """Wraps a built model.

    Args:
      model: a MultiTaskModel whose trunk (and lasso) variables exist.
      preprocessing: 'rgb' or 'harmonized'.
      output_stride: output stride the exported trunk runs at.

    Raises:
      ValueError: unknown preprocessing.
    """
    super().__init__(name='mtssl_trunk')
    if preprocessing not in PREPROCESSING:
      raise ValueError(f'preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}')
    self._held = ModelRef(model)
    self.preprocessing = preprocessing
    # Saved with the model: what its signatures feed the trunk ('rgb' or 'harmonized').
    self.input_convention = tf.Variable(preprocessing, trainable=False, name='input_convention')
    self.output_stride = output_stride
    self.num_units = model.trunk.num_units
    functions = [self.final, self.block3_units]
    if model.lasso is not None:
      # Only a model with lasso gets the function: saving traces every tf.function.
      self.lasso = tf.function(self._lasso, input_signature=[_IMAGES])
      functions.append(self.lasso)
    # Trace the exported functions now and save exactly the variables they read.
    self.trunk_variables = variables_read(functions)

  @property
  def model(self) -> MultiTaskModel:
    """The wrapped model (not saved itself: see `ModelRef`)."""
    return self._held.model

  def _endpoints(self, images):
    return self.model.trunk(preprocess(images, self.preprocessing), training=False, output_stride=self.output_stride)

  @tf.function(input_signature=[_IMAGES])
  def final(self, images) -> Dict[str, tf.Tensor]:
    """The final representation."""
    return {'final': tf.cast(self._endpoints(images)['final'], tf.float32)}

  @tf.function(input_signature=[_IMAGES])
  def block3_units(self, images) -> Dict[str, tf.Tensor]:
    """Every block-3 unit output, keyed unit_01 ... unit_NN."""
    endpoints = self._endpoints(images)
    return {
      unit_endpoint_name(i + 1).split('/')[1]: tf.cast(endpoints[unit_endpoint_name(i + 1)], tf.float32)
      for i in range(self.num_units)
    }

  def _lasso(self, images) -> Dict[str, tf.Tensor]:
    """Each task's normalised lasso mix of the block-3 units."""
    inputs = preprocess(images, self.preprocessing)
    model = self.model
    outputs = {}
    endpoints = model.trunk_endpoints(inputs, training=False, output_stride=self.output_stride)
    for name in model.task_names:
      outputs[name] = tf.cast(model.mix_features(name, endpoints, training=False), tf.float32)
    return outputs


def export(model: MultiTaskModel, export_dir: str, preprocessing: str = 'rgb', output_stride: int = 16) -> str:
  """Writes the SavedModel; returns `export_dir`. `preprocessing`: 'rgb' (colour, the paper's) or 'harmonized'."""
  module = TrunkExport(model, preprocessing, output_stride)
  signatures = {'serving_default': module.final, 'final': module.final, 'block3_units': module.block3_units}
  if model.lasso is not None:
    signatures['lasso'] = module.lasso
  return save(module, export_dir, signatures)


def save(module: tf.Module, export_dir: str, signatures: Dict[str, tf.types.experimental.GenericFunction]) -> str:
  """`tf.saved_model.save` without TF's known-harmless log lines (`_HARMLESS_SAVE_LOGS`); returns `export_dir`."""
  harmless = _HarmlessSaveLogs()
  loggers = [tf.get_logger(), absl_logging.get_absl_logger()]  # builder_impl logs to the first, the rest to absl.
  for logger in loggers:
    logger.addFilter(harmless)
  try:
    tf.saved_model.save(module, export_dir, signatures=signatures)
  finally:
    for logger in loggers:
      logger.removeFilter(harmless)
  return export_dir
