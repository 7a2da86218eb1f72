"""Target architectures ("students") trained on pseudo-labels, by name: `build_model`.

Every student maps float images in [-1, 1] ([B, H, W, 3]) to a dict of named
endpoints plus 'logits', and lists in `probe_endpoints` the layers whose frozen
features are probed with linear classifiers (Noroozi et al. 2018, Table 4):

* 'alexnet': the network Noroozi et al. 2018 transfer into (§3-§5: "the target
  architecture", always AlexNet) = `trunk.alexnet.AlexNet` variant 'standard', i.e. the
  CaffeNet layers of MehdiNoroozi/JigsawPuzzleSolver's prototxt and Caffe's
  bvlc_reference_caffenet (conv1 11x11/4 unpadded, 2-GPU groups on conv2/4/5, LRN after
  pool1/pool2, Caffe's ceil-mode 3x3/2 pools, 227 px input, fc6/fc7 4096 with dropout
  0.5, the prototxt's fillers) + the cluster classifier fc8 ('logits', one output per
  cluster; bvlc_reference_caffenet's fc8 filler: N(0, 0.01), bias 0). Our options, off
  by default: `width` scales every layer (tests, small worlds) and `batch_norm` swaps LRN
  for BatchNorm after every conv and fc (small-world training from scratch). Probes
  conv1-conv5. Inputs from 55 px up (smaller ones leave a pool window empty).
* 'resnet_v2_trunk': our ResNet-v2 trunk (blocks 1-3) + global average pooling +
  linear; probes stem, block1-3. Its checkpoints hold the trunk at `model/trunk`, so
  `backbone.load_trunk` (and so `mtssl-eval`) reads a trained student directly.
* any `tf.keras.applications` class ('ResNet50', or 'keras:MobileNetV2'), weights=None,
  without its top + global average pooling + linear; probes the last layer of each
  resolution (or the `endpoints` given).

More architectures: `@register_model('name')` on a builder (num_classes, input_size, **kwargs).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.trunk import alexnet as caffenet
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

LOGITS = 'logits'
# bvlc_reference_caffenet.prototxt fc8: weight_filler gaussian std 0.01, bias_filler constant 0.
CLASSIFIER_STDDEV = 0.01
_REGISTRY: Dict[str, Callable[..., tf.keras.Model]] = {}


def register_model(name: str):
  """Decorator adding a builder (num_classes, input_size, **kwargs) -> student to the registry."""

  def add(builder):
    _REGISTRY[name] = builder
    return builder

  return add


def model_names() -> List[str]:
  """Registered names (any `tf.keras.applications` class works too)."""
  return sorted(_REGISTRY)


class AlexNet(caffenet.AlexNet):
  """Noroozi et al. 2018's target AlexNet: `trunk.alexnet` 'standard' + the cluster classifier fc8.

  Endpoints: conv1..conv5 (after ReLU, before pooling), pool5, fc6, fc7 (after ReLU,
  before dropout) and 'logits' (fc8 on dropout(fc7)). The layers are the trunk's
  (`convs`, `norms`, `fcs` dicts), so every reader of a student (the probes, `voc07_cls`,
  `nonlinear`, `filters`) finds conv1..conv5 by name; `classifier` is fc8.
  """

  CONVS = caffenet.CONVS  # (name, filters, kernel, padding, groups, bias init) per conv layer.
  POOLED = caffenet.POOLED

  def __init__(self, num_classes: int, width: float = 1.0, batch_norm: bool = False,
               dropout: float = caffenet.DROPOUT, fc_units: int = 4096, name: str = 'alexnet',
               groups: int = caffenet.GROUPS):  # fmt: skip
    """Creates the layers.

    Args:
      num_classes: classifier outputs (the number of clusters).
      width: multiplier of every conv's channels and the fc units (0.125 for tests).
      batch_norm: BatchNorm after every conv and fc layer (our small-world option); else
        CaffeNet's LRN after pool1 and pool2 (the paper's network).
      dropout: dropout rate after fc6 and fc7 (CaffeNet: 0.5).
      fc_units: fc6/fc7 units before `width` (CaffeNet: 4096).
      name: model name.
      groups: channel groups of conv2/4/5 (CaffeNet: 2; 1 to hold the conv layers of an
        ungrouped trunk such as deepcontext's, see `trunk.alexnet`).
    """
    super().__init__('standard', width, batch_norm, fc_units=(fc_units, fc_units), dropout=dropout, name=name,
                     groups=groups)  # fmt: skip
    self.probe_endpoints: Tuple[str, ...] = tuple(c[0] for c in self.CONVS)
    self.classifier = tf.keras.layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=CLASSIFIER_STDDEV), name=LOGITS
    )

  def forward(self, images, training=None, taps=None) -> Dict[str, tf.Tensor]:
    endpoints = dict(super().forward(images, training=training, taps=taps))
    # The trunk returns fc7 before its dropout; fc8 reads it after (prototxt drop7 -> fc8).
    x = self.dropout(endpoints['fc7'], training=training)
    endpoints[LOGITS] = self.classifier(x)
    if taps is not None:
      taps[LOGITS] = (x, endpoints[LOGITS])
    return endpoints

  def weight_layers(self) -> Dict[str, tf.keras.layers.Layer]:
    """conv1..fc7 and the classifier fc8 (named `LOGITS`), in network order."""
    return {**super().weight_layers(), LOGITS: self.classifier}


def alexnet_parameter_count(num_classes: int, width: float = 1.0, batch_norm: bool = False, fc_units: int = 4096,
                            input_size: int = 227) -> int:  # fmt: skip
  """Parameters of `AlexNet(num_classes, ...)` built at `input_size`: the trunk's arithmetic + fc8."""
  trunk = caffenet.parameter_count('standard', width, batch_norm, (fc_units, fc_units), input_size)
  return trunk + caffenet.scaled(fc_units, width) * num_classes + num_classes


class TrunkStudent(tf.keras.Model):
  """Our ResNet-v2 trunk + global average pooling of `final` + a linear classifier."""

  def __init__(self, num_classes: int, trunk: Optional[TrunkConfig] = None, name: str = 'trunk_student'):
    """Creates the layers; `trunk` is an attribute, so checkpoints hold it at `model/trunk`."""
    super().__init__(name=name)
    self.trunk = ResNetV2Trunk(trunk or TrunkConfig())
    self.probe_endpoints = ('stem', 'block1', 'block2', 'block3')
    self.classifier = tf.keras.layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01), name=LOGITS
    )

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    endpoints = dict(self.trunk(images, training=training))
    endpoints[LOGITS] = self.classifier(tf.reduce_mean(endpoints['final'], axis=[1, 2]))
    return endpoints


def stage_outputs(model: tf.keras.Model) -> List[str]:
  """Names of the last layer at each spatial resolution (4-D outputs, padding layers aside), in order."""
  last: Dict[Tuple[int, int], str] = {}
  order: List[Tuple[int, int]] = []
  for layer in model.layers[1:]:
    if isinstance(layer, tf.keras.layers.ZeroPadding2D):
      continue  # Padding before a strided layer is not a stage's output.
    shape = getattr(layer, 'output_shape', None)
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] is None:
      continue
    size = (shape[1], shape[2])
    if size not in last:
      order.append(size)
    last[size] = layer.name
  return [last[size] for size in order]


class KerasStudent(tf.keras.Model):
  """A `tf.keras.applications` network (weights=None, no top) + global average pooling + linear."""

  def __init__(self, application: str, num_classes: int, input_size: int, endpoints: Sequence[str] = (), **kwargs):
    """Builds the application at `input_size`.

    Args:
      application: class name in `tf.keras.applications`, e.g. 'ResNet50'.
      num_classes: classifier outputs.
      input_size: square input side.
      endpoints: layers to expose and probe; empty = `stage_outputs`.
      **kwargs: passed to the application (e.g. alpha=0.35 for MobileNetV2).
    """
    super().__init__(name=f'keras_{application.lower()}')
    base = getattr(tf.keras.applications, application)(
      weights=None, include_top=False, input_shape=(input_size, input_size, 3), **kwargs
    )
    names = list(endpoints) or stage_outputs(base)
    if base.layers[-1].name not in names:
      names.append(base.layers[-1].name)
    self.probe_endpoints = tuple(names)
    self.features = tf.keras.Model(base.input, [base.get_layer(n).output for n in names], name=base.name)
    self.classifier = tf.keras.layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01), name=LOGITS
    )

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    outputs = self.features(images, training=training)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    endpoints = dict(zip(self.probe_endpoints, outputs))
    endpoints[LOGITS] = self.classifier(tf.reduce_mean(outputs[-1], axis=[1, 2]))
    return endpoints


@register_model('alexnet')
def _alexnet(num_classes: int, input_size: int, **kwargs) -> tf.keras.Model:
  sizes = caffenet.endpoint_sizes('standard', input_size)
  if min(sizes.values()) < 1 or min(sizes['conv1'], sizes['conv2'], sizes['conv5']) < caffenet.POOL_KERNEL:
    raise ValueError(f'alexnet: a {input_size} px input leaves a pooled map smaller than the 3x3 window; use >= 55 px')
  return AlexNet(num_classes, **kwargs)


@register_model('resnet_v2_trunk')
def _trunk(num_classes: int, input_size: int, trunk: Optional[TrunkConfig] = None) -> tf.keras.Model:
  del input_size
  return TrunkStudent(num_classes, trunk)


def build_model(name: str, num_classes: int, input_size: int, **kwargs) -> tf.keras.Model:
  """A student by name, its variables created by one call at `input_size`.

  Args:
    name: a registered name ('alexnet', 'resnet_v2_trunk'), or a `tf.keras.applications`
      class, optionally prefixed 'keras:'.
    num_classes: classifier outputs.
    input_size: square input side in pixels.
    **kwargs: builder arguments (AlexNet: width, batch_norm, dropout, fc_units;
      resnet_v2_trunk: trunk; Keras: endpoints and the application's own).

  Raises:
    ValueError: an unknown name (the known ones listed).
  """
  application = name[len('keras:') :] if name.startswith('keras:') else name
  if name in _REGISTRY:
    model = _REGISTRY[name](num_classes, input_size, **kwargs)
  elif hasattr(tf.keras.applications, application) and application[:1].isupper():
    model = KerasStudent(application, num_classes, input_size, **kwargs)
  else:
    raise ValueError(f'unknown architecture {name!r}: one of {model_names()} or a tf.keras.applications class')
  model(tf.zeros([1, input_size, input_size, 3]), training=False)
  return model
