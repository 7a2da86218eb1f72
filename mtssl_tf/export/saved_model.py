"""SavedModel export of the trunk from named endpoints (never from graph names).

Signatures (all take `images`: uint8 [batch, height, width, 3]):
* `final`: {'final': [B, h, w, C]}, the representation heads read without lasso;
* ResNet-v2 trunks: `block3_units`: {'unit_01': ..., 'unit_NN': ...}, every block-3 unit,
  and `lasso` (when the model has lasso): {<task>: mix}, each task's normalised lasso mix;
* AlexNet / VGG16 trunks (`trunk.kind`, no block-3 units, no lasso): `endpoints`, every
  named endpoint (conv1..conv5, pool5; conv1_1..conv5_3, pool1..pool5), for per-layer probes.
`serving_default` is `final`. ResNet-v2 takes any image size. AlexNet and VGG16 are built
for one static size (Caffe-style pooling), so their signatures take `image_size` x
`image_size` images: by default the network's own (227 px AlexNet, 64 px its Jigsaw tile
variant, 224 px VGG16). The module's `trunk_kind` and `image_size` variables record both.
Preprocessing is inside the model, so a downstream user
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
from mtssl_tf.trunk import registry
from mtssl_tf.trunk.inputs import PREPROCESSING, preprocess
from mtssl_tf.trunk.resnet_v2 import unit_endpoint_name


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

  def __init__(self, model: MultiTaskModel, preprocessing: str = 'rgb', output_stride: int = 16, image_size: int = 0):
    """Wraps a built model.

    Args:
      model: a MultiTaskModel whose trunk (and lasso) variables exist.
      preprocessing: 'rgb' or 'harmonized'.
      output_stride: output stride the exported trunk runs at (ResNet-v2; the others' is fixed).
      image_size: the side of the images the signatures take; 0: any (ResNet-v2) or the
        network's own (AlexNet / VGG16, which need a static size).

    Raises:
      ValueError: unknown preprocessing, or an image size the trunk cannot take.
    """
    super().__init__(name='mtssl_trunk')
    if preprocessing not in PREPROCESSING:
      raise ValueError(f'preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}')
    self._held = ModelRef(model)
    self.preprocessing = preprocessing
    # Saved with the model: what its signatures feed the trunk ('rgb' or 'harmonized').
    self.input_convention = tf.Variable(preprocessing, trainable=False, name='input_convention')
    self.output_stride = output_stride
    trunk, trunk_config = model.trunk, model.trunk_config
    if image_size < 0:
      raise ValueError(f'image_size: must be >= 0, got {image_size}')
    image_size = image_size or registry.default_input_size(trunk_config) or 0
    if image_size:
      try:
        registry.final_size(trunk_config, image_size)
      except ValueError as e:
        raise ValueError(
          f'image_size: {image_size} px is too small for trunk.kind {trunk_config.kind!r}: {e}'
        ) from None
    spec = tf.TensorSpec([None, image_size or None, image_size or None, 3], tf.uint8, name='images')
    # Saved with the model: which trunk (`TrunkConfig.kind`) produced the features, at which input size (0: any).
    self.trunk_kind = tf.Variable(trunk_config.kind, trainable=False, name='trunk_kind')
    self.image_size = tf.Variable(image_size, trainable=False, name='image_size')
    self.has_block3_units = trunk.supports_lasso
    self.final = tf.function(self._final, input_signature=[spec])
    functions = [self.final]
    if self.has_block3_units:
      self.num_units = trunk.num_units
      self.block3_units = tf.function(self._block3_units, input_signature=[spec])
      functions.append(self.block3_units)
    else:
      self.endpoint_names = tuple(n for n in trunk.endpoint_names if n != 'final')
      self.endpoints = tf.function(self._named_endpoints, input_signature=[spec])
      functions.append(self.endpoints)
    if model.lasso is not None:
      # Only a model with lasso gets the function: saving traces every tf.function.
      self.lasso = tf.function(self._lasso, input_signature=[spec])
      functions.append(self.lasso)
    # Trace the exported functions now and save exactly the variables they read.
    self.trunk_variables = variables_read(functions)

  @property
  def model(self) -> MultiTaskModel:
    """The wrapped model (not saved itself: see `ModelRef`)."""
    return self._held.model

  def _endpoints(self, images):
    return self.model.trunk(preprocess(images, self.preprocessing), training=False, output_stride=self.output_stride)

  def _final(self, images) -> Dict[str, tf.Tensor]:
    """The final representation."""
    return {'final': tf.cast(self._endpoints(images)['final'], tf.float32)}

  def _block3_units(self, images) -> Dict[str, tf.Tensor]:
    """Every block-3 unit output, keyed unit_01 ... unit_NN (ResNet-v2)."""
    endpoints = self._endpoints(images)
    return {
      unit_endpoint_name(i + 1).split('/')[1]: tf.cast(endpoints[unit_endpoint_name(i + 1)], tf.float32)
      for i in range(self.num_units)
    }

  def _named_endpoints(self, images) -> Dict[str, tf.Tensor]:
    """Every named endpoint of a conv trunk (AlexNet: conv1..conv5, pool5; VGG16: conv1_1..pool5)."""
    endpoints = self._endpoints(images)
    return {name: tf.cast(endpoints[name], tf.float32) for name in self.endpoint_names}

  def _lasso(self, images) -> Dict[str, tf.Tensor]:
    """Each task's normalised lasso mix of the block-3 units."""
    inputs = preprocess(images, self.preprocessing)
    model = self.model
    outputs = {}
    endpoints = model.trunk_endpoints(inputs, training=False, output_stride=self.output_stride)
    for name in model.task_names:
      outputs[name] = tf.cast(model.mix_features(name, endpoints, training=False), tf.float32)
    return outputs


def export(
  model: MultiTaskModel, export_dir: str, preprocessing: str = 'rgb', output_stride: int = 16, image_size: int = 0
) -> str:
  """Writes the SavedModel; returns `export_dir`.

  `preprocessing`: 'rgb' (colour, the paper's) or 'harmonized'; `image_size` as `TrunkExport`.
  """
  module = TrunkExport(model, preprocessing, output_stride, image_size)
  signatures = {'serving_default': module.final, 'final': module.final}
  if module.has_block3_units:
    signatures['block3_units'] = module.block3_units
  else:
    signatures['endpoints'] = module.endpoints
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
