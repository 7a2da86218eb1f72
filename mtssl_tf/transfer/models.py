"""Target architectures ("students") trained on pseudo-labels, by name: `build_model`.

Every student maps float images in [-1, 1] ([B, H, W, 3]) to a dict of named
endpoints plus 'logits', and lists in `probe_endpoints` the layers whose frozen
features are probed with linear classifiers (Noroozi et al. 2018, Table 4):

* 'alexnet': Krizhevsky et al. 2012's conv1-conv5 + fc6-fc7 (as Noroozi's target), no
  two-GPU groups, BatchNorm after each conv/fc (or the original LRN after conv1-2),
  a `width` multiplier for tests; probes conv1-conv5.
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
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

LOGITS = 'logits'
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


def _scaled(units: int, width: float) -> int:
  return max(1, int(round(units * width)))


class AlexNet(tf.keras.Model):
  """AlexNet (Krizhevsky et al. 2012) as Noroozi et al. 2018's target network.

  conv1 11x11/4 96, pool, conv2 5x5 256, pool, conv3 3x3 384, conv4 3x3 384,
  conv5 3x3 256, pool, fc6 4096, fc7 4096, linear classifier; ReLU after each conv/fc,
  3x3/2 max pools, dropout on fc6/fc7. conv1 pads 'same' so 224 px inputs give
  Krizhevsky's 55 -> 27 -> 13 -> 6 sizes (56, 27, 13, 6 here) and small inputs still fit.
  """

  CONVS = (('conv1', 96, 11, 4), ('conv2', 256, 5, 1), ('conv3', 384, 3, 1), ('conv4', 384, 3, 1),
           ('conv5', 256, 3, 1))  # fmt: skip
  POOLED = ('conv1', 'conv2', 'conv5')

  def __init__(self, num_classes: int, width: float = 1.0, batch_norm: bool = True, dropout: float = 0.5,
               fc_units: int = 4096, name: str = 'alexnet'):  # fmt: skip
    """Creates the layers.

    Args:
      num_classes: classifier outputs (the number of clusters).
      width: multiplier of every conv's channels and the fc units (0.125 for tests).
      batch_norm: BatchNorm after every conv and fc layer; else LRN after conv1 and conv2.
      dropout: dropout rate of fc6 and fc7.
      fc_units: fc6/fc7 units before `width`.
      name: model name.
    """
    super().__init__(name=name)
    self.batch_norm = batch_norm
    self.probe_endpoints: Tuple[str, ...] = tuple(c[0] for c in self.CONVS)
    self.convs, self.norms = {}, {}
    for conv, filters, kernel, stride in self.CONVS:
      self.convs[conv] = tf.keras.layers.Conv2D(
        _scaled(filters, width), kernel, stride, padding='same', use_bias=not batch_norm, name=conv
      )
      if batch_norm:
        self.norms[conv] = tf.keras.layers.BatchNormalization(name=f'{conv}_bn')
    self.fcs = {}
    for fc in ('fc6', 'fc7'):
      self.fcs[fc] = tf.keras.layers.Dense(_scaled(fc_units, width), use_bias=not batch_norm, name=fc)
      if batch_norm:
        self.norms[fc] = tf.keras.layers.BatchNormalization(name=f'{fc}_bn')
    self.dropout = tf.keras.layers.Dropout(dropout)
    self.classifier = tf.keras.layers.Dense(
      num_classes, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.01), name=LOGITS
    )

  def _norm(self, name: str, x, training):
    if self.batch_norm:
      return self.norms[name](x, training=training)
    if name in ('conv1', 'conv2'):
      # Caffe's bvlc_alexnet LRN (size 5, alpha 1e-4, beta 0.75): TF's alpha is not divided by the size.
      return tf.nn.local_response_normalization(x, depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75)
    return x

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    endpoints = {}
    x = images
    for conv, *_ in self.CONVS:
      x = tf.nn.relu(self._norm(conv, self.convs[conv](x), training))
      endpoints[conv] = x
      if conv in self.POOLED:
        # fc6 needs static sizes anyway; 'SAME' only where a tiny test input leaves < 3 pixels.
        x = tf.nn.max_pool2d(x, 3, 2, 'VALID' if min(x.shape[1], x.shape[2]) >= 3 else 'SAME')
    endpoints['pool5'] = x
    x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
    for fc in ('fc6', 'fc7'):
      x = tf.nn.relu(self._norm(fc, self.fcs[fc](x), training))
      endpoints[fc] = x
      x = self.dropout(x, training=training)
    endpoints[LOGITS] = self.classifier(x)
    return endpoints


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
  del input_size  # Any size from 32 px: the pools adapt.
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
