"""AlexNet and VGG16 under the `detection` protocol's Faster R-CNN (Noroozi et al. 2018, Table 3 "Det.").

Noroozi et al. (§5, "Fine-Tuning on PASCAL VOC") fine-tune every AlexNet of Table 3 with Fast
R-CNN (Girshick 2015): "multi-scale fine-tuning for 150K iterations, with the basic learning
rate of 0.001 and dividing the learning rate by 10 every 50K iterations", "We have locked the
first layer in all cases ... as it is the default settings of Fast-RCNN", single- and
multi-scale test both reported. Fast R-CNN scores precomputed selective-search proposals.

The proposals are a config choice (`proposals`): 'selective_search' runs Fast R-CNN itself on
precomputed selective-search boxes (`fast_rcnn`, `proposals`), as the paper; 'rpn' (the
default, and the miniature's) takes them from the protocol's own region proposal network, the
Faster R-CNN of `detection_model` with the AlexNet (or VGG16) as its backbone: every result of
that choice carries `TABLE_NOTE` and the results tables print it. Everything after the
proposals is Fast R-CNN's network (rbgirshick/fast-rcnn,
models/CaffeNet/train.prototxt; py-faster-rcnn's ZF end-to-end model for the RPN):

* backbone: conv1..conv5 of the evaluated AlexNet (stride 16 at conv5, no pool5), the
  CaffeNet layers of `trunk.alexnet` with their BatchNorm or LRN. The prototxt pads conv1 by 5
  and its pools by 1; ours are the student's own layers (conv1 unpadded, Caffe ceil-mode
  pools), so the image is zero-padded at the top-left by `grid_offset`'s 9 pixels, which puts
  each conv5 cell's centre on its anchors' centre (16 x + 8; within half a pixel) and makes
  the conv5 grid exactly the canvas / 16 the anchors and the RPN need. VGG16: conv5_3 (its
  cells' centres already sit at 16 x + 8; Fast R-CNN's VGG16 drops pool5 too).
* RPN: one 3x3 convolution (py-faster-rcnn ZF: rpn_conv/3x3 256 filters; `rpn_filters`),
  Faster R-CNN's anchors and sampling (`detection_model`).
* ROI pooling: roi_pool5 max-pools each ROI of conv5 into 6 x 6 bins (spatial_scale 1/16;
  VGG16: 7 x 7). Model Garden has ROI-align, not ROI max pooling: the ROI is bilinearly
  sampled at `roi_crop_size` (12 = 2 x 6) points a side and each 2 x 2 block max-pooled (6 x 6).
* box head: fc6, fc7 (4096 x the network's width, ReLU, dropout 0.5), new: Noroozi §5
  re-initialises the fully connected layers; drawn with CaffeNet's fc fillers (N(0, 0.005),
  bias 1; `trunk.alexnet`). cls_score and bbox_pred: `instance_heads.DetectionHead` (Fast
  R-CNN's N(0, 0.01) / N(0, 0.001)).
* conv1 (and its BatchNorm) frozen with `freeze_conv1` (the prototxt's conv1 lr_mult 0).

Where the network comes from: an AlexNet student (`mtssl-transfer`'s student folder) or a
run's Jigsaw-variant AlexNet trunk (conv1 stride 2) gives its conv weights to a new standard
(stride-4) conv-only AlexNet, as Noroozi §5 and `voc07_cls` do; a run's standard AlexNet or
VGG16 trunk is fine-tuned in place.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import tensorflow as tf
from official.vision.modeling.heads import instance_heads

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.evaluation import fast_rcnn
from mtssl_tf.evaluation.detection_config import NAME, DetectionEvalConfig
from mtssl_tf.evaluation.detection_model import LEVEL, STRIDE, FasterRCNN, create_variables, freeze_batch_norms
from mtssl_tf.trunk import alexnet, vgg16

KINDS = ('alexnet', 'vgg16')
ENDPOINTS = {'alexnet': 'conv5', 'vgg16': 'conv5_3'}
# Written into every result of a conv network and printed under every table showing it (issue 16).
TABLE_NOTE = (
  'Detection of AlexNet/VGG16 networks: Faster R-CNN region proposals (an RPN on the network) in place of '
  "Fast R-CNN's selective-search proposals (Noroozi et al. 2018, Table 3); otherwise Fast R-CNN's settings. "
  'A documented choice (BUILD.md, "Detection of AlexNet and VGG16").'
)
# Side of the blank canvas that creates the variables: AlexNet's pool5 needs a 3x3 conv5 (>= 48 px).
BUILD_SIZE = 64


Layer = Tuple[str, int, int, int]  # ('conv' or 'pool', kernel, stride, padding).


def _alexnet_layers(conv1_padding: int = 0) -> List[Layer]:
  """The standard AlexNet from the input to pool5 (conv1's padding as the network's: CaffeNet 0)."""
  layers = []
  for conv, _, kernel, pad, _, _ in alexnet.CONVS:
    stride = alexnet.VARIANTS['standard'].conv1_stride if conv == 'conv1' else 1
    layers.append(('conv', kernel, stride, conv1_padding if conv == 'conv1' else pad))
    if conv in alexnet.POOLED:
      layers.append(('pool', alexnet.POOL_KERNEL, alexnet.POOL_STRIDE, 0))
  return layers


def _vgg16_layers() -> List[Layer]:
  """VGG16 from the input to pool5 ('same' 3x3 convs, 2x2/2 pools)."""
  layers = []
  for _, convs in vgg16.BLOCKS:
    layers += [('conv', vgg16.KERNEL, 1, vgg16.KERNEL // 2)] * convs + [
      ('pool', vgg16.POOL_KERNEL, vgg16.POOL_STRIDE, 0)
    ]
  return layers


def _layers(kind: str, conv1_padding: int = 0) -> List[Layer]:
  """`kind`'s layers up to its detection endpoint (conv5 / conv5_3), then pool5 (which its `call` computes)."""
  return _alexnet_layers(conv1_padding) if kind == 'alexnet' else _vgg16_layers()


def grid_offset(layers: Sequence[Layer]) -> Tuple[int, float]:
  """(stride, shift): the last layer's cell x has its centre at input coordinate stride * x + stride / 2 + shift.

  A layer (kernel k, stride s, padding p) maps its output coordinate u (pixel x spans
  [x, x + 1)) to input s u + k / 2 - p - s / 2; the chain composes these maps. The anchors
  and ROI-align put cell x's centre at stride * x + stride / 2, so zero-padding the image's
  top and left by floor(shift) pixels aligns the grid (CaffeNet AlexNet: shift 9.5, VGG16: 0).
  """
  stride, shift = 1, 0.0
  for _, kernel, s, pad in layers:
    shift += stride * (kernel / 2 - pad - s / 2)
    stride *= s
  return stride, shift


def alignment_pad(kind: str, conv1_padding: int = 0) -> int:
  """Top-left zero padding (pixels) that centres `kind`'s stride-16 endpoint cells on their anchors."""
  stride, shift = grid_offset(_layers(kind, conv1_padding)[:-1])  # Up to the endpoint, pool5 left out.
  if stride != STRIDE:
    raise ValueError(f'{kind}: its detection endpoint has stride {stride}, the detector needs {STRIDE}')
  return int(shift // 1)


def endpoint_side(kind: str, canvas: int, conv1_padding: int = 0) -> int:
  """The endpoint's side on a `canvas` px side (after `alignment_pad`), or 0 when a layer up to pool5 does not fit."""
  side = canvas + alignment_pad(kind, conv1_padding)
  layers = _layers(kind, conv1_padding)
  sides = []
  for op, kernel, stride, pad in layers:
    if op == 'pool':
      if side < kernel:
        return 0
      side = alexnet.caffe_pool_size(side, kernel, stride)
    else:
      side = (side + 2 * pad - kernel) // stride + 1
    if side < 1:
      return 0
    sides.append(side)
  return sides[-2]  # The endpoint is the layer before pool5.


def min_canvas(kind: str, conv1_padding: int = 0) -> int:
  """The smallest canvas side (a multiple of 16) on which `kind` runs through pool5 (its `call` computes it)."""
  side = STRIDE
  while not endpoint_side(kind, side, conv1_padding):
    side += STRIDE
  return side


def check_config(cfg: DetectionEvalConfig, kind: str) -> None:
  """Raises `ConfigError` naming the key for what a conv network cannot run (before anything is loaded)."""
  if cfg.use_lasso:
    raise ConfigError(f'{NAME}.use_lasso: the lasso mixes ResNet-v2 block-3 units; trunk.kind is {kind!r}')
  if cfg.box_head_init == 'checkpoint':
    raise ConfigError(f"{NAME}.box_head_init: 'checkpoint' transfers a ResNet-v2 block 4; trunk.kind {kind!r} gets "
                      'new fc6/fc7 (Noroozi §5); use auto or random')  # fmt: skip


def check_canvases(cfg: DetectionEvalConfig, kind: str, conv1_padding: int = 0) -> None:
  """Raises `ConfigError` naming the scale key when a canvas is too small for `kind` (its pool5 would not fit)."""
  smallest = min_canvas(kind, conv1_padding)
  for key, scales in (('scales', cfg.scales), ('test_scale', [cfg.test_scale]), ('test_scales', cfg.test_scales)):
    for scale in scales:
      if -(-scale // STRIDE) * STRIDE < smallest:
        raise ConfigError(f'{NAME}.{key}: {scale} px is too small for {kind}: its canvas (the scale rounded up to '
                          f'{STRIDE}) must be at least {smallest} px for every layer up to pool5 to fit')  # fmt: skip


def network_kind(network: Any) -> str:
  """'resnet_v2', 'alexnet' or 'vgg16' for a trunk of the registry or an AlexNet student.

  Raises:
    ConfigError: anything else (the object's type is named).
  """
  kind = getattr(network, 'kind', None)
  if kind in ('resnet_v2', *KINDS):
    return kind
  if isinstance(network, alexnet.AlexNet):  # A transfer student (`transfer.models.AlexNet`) or a bare AlexNet.
    return 'alexnet'
  raise ConfigError(f'{NAME}: runs on ResNet-v2, AlexNet or VGG16 trunks and AlexNet students, not on a '
                    f'{type(network).__name__}')  # fmt: skip


def standard_alexnet(source: alexnet.AlexNet) -> alexnet.AlexNet:
  """A new conv-only standard (stride-4) AlexNet holding copies of `source`'s conv layers (and BatchNorms)."""
  # The source's own layer choices where it has them (conv1 padding and groups: cdoersch/deepcontext's Context net).
  choices = {k: getattr(source, k) for k in ('conv1_padding', 'groups') if hasattr(source, k)}
  net = alexnet.AlexNet('standard', source.width, source.batch_norm, fc_units=(), name='alexnet', **choices)
  net(tf.zeros([1, BUILD_SIZE, BUILD_SIZE, 3]), training=False)
  for conv, *_ in alexnet.CONVS:  # Same kernel shapes in both variants: only conv1's stride differs.
    net.convs[conv].set_weights(source.convs[conv].get_weights())
    if conv in net.norms:
      net.norms[conv].set_weights(source.norms[conv].get_weights())
  return net


def detection_network(network: Any) -> Tuple[tf.keras.Model, str, str]:
  """(the conv net the detector fine-tunes, its kind, where its layers came from) for a conv trunk or student."""
  kind = network_kind(network)
  if kind == 'vgg16':
    return network.net, kind, 'VGG16 trunk conv1_1-conv5_3, fine-tuned in place'
  if getattr(network, 'kind', None) == 'alexnet':  # A run's trunk (`registry.ConvNetTrunk`).
    if network.net.variant == 'standard':
      return network.net, kind, 'AlexNet trunk conv1-conv5, fine-tuned in place'
    return standard_alexnet(network.net), kind, (f'AlexNet trunk ({network.net.variant} variant) conv1-conv5 '
                                                 'copied into the standard stride-4 AlexNet')  # fmt: skip
  return standard_alexnet(network), kind, 'AlexNet student conv1-conv5 copied into a conv-only AlexNet'


def conv1_padding(net: Any) -> int:
  """conv1's zero padding of an AlexNet (0 for CaffeNet and for VGG16's 'same' convs, which the geometry has)."""
  return int(getattr(net, 'conv1_padding', 0))


def first_conv_layers(net: Any) -> List[tf.keras.layers.Layer]:
  """The first convolution and its norm: the registry's `first_conv` / `first_norm`, or a conv net's first `convs`."""
  if hasattr(net, 'first_conv'):
    return [net.first_conv] + ([net.first_norm] if net.first_norm is not None else [])
  first = next(iter(net.convs))
  return [net.convs[first]] + ([net.norms[first]] if first in net.norms else [])


class ConvDetectionBackbone(tf.keras.Model):
  """A conv net's stride-16 endpoint as the one-level pyramid `{'4': features}` (`DetectionBackbone`'s interface)."""

  def __init__(self, net: tf.keras.Model, kind: str, freeze_batch_norm: bool = True, name: str = 'backbone'):
    """Wraps `net` (a `trunk.alexnet.AlexNet` or `trunk.vgg16.VGG16`; reachable as `self.trunk`).

    Args:
      net: the network; its `call` returns named endpoints.
      kind: 'alexnet' or 'vgg16'.
      freeze_batch_norm: its BatchNorm layers (if any) in inference mode with fixed scale and offset.
      name: model name.
    """
    super().__init__(name=name)
    self.trunk, self.kind = net, kind
    self.endpoint, self.pad = ENDPOINTS[kind], alignment_pad(kind, conv1_padding(net))
    self.freeze_batch_norm = freeze_batch_norm
    if freeze_batch_norm:
      freeze_batch_norms(net)
    self.box_input, self.lasso, self.lasso_norm = 'final', None, None  # What `FasterRCNN` reads of a backbone.

  @property
  def output_channels(self) -> int:
    return int(self.trunk.convs[self.endpoint].filters)

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    """Preprocessed canvases [B, H, W, 3] (sides multiples of 16) -> {'4': float32 [B, H / 16, W / 16, C]}."""
    padded = tf.pad(images, [[0, 0], [self.pad, 0], [self.pad, 0], [0, 0]])  # Zero is the input mean.
    features = self.trunk(padded, training=False if self.freeze_batch_norm else training)[self.endpoint]
    expected = [images.shape[1] // STRIDE, images.shape[2] // STRIDE]
    if features.shape[1:3].as_list() != expected:
      raise ValueError(f'{self.kind} {self.endpoint}: a {images.shape[1]}x{images.shape[2]} canvas gave a '
                       f'{features.shape[1]}x{features.shape[2]} grid, the anchors need {expected}')  # fmt: skip
    return {LEVEL: tf.cast(features, tf.float32)}

  def lasso_penalty(self) -> tf.Tensor:
    return tf.constant(0.0)


class FCBoxHead(tf.keras.layers.Layer):
  """Fast R-CNN's per-ROI head: 2x2 max pool of the ROI crops (roi_pool5), fc6, fc7, class and box layers."""

  def __init__(self, num_classes: int, units: int, dropout: float = 0.5, **kwargs):
    """Creates the layers (module docstring: CaffeNet's fc fillers, Fast R-CNN's output layers).

    Args:
      num_classes: object classes, without background.
      units: fc6 / fc7 units.
      dropout: after fc6 and fc7.
      **kwargs: passed to `tf.keras.layers.Layer`.
    """
    kwargs.setdefault('name', 'fc_head')
    super().__init__(**kwargs)

    def fc(name):
      return tf.keras.layers.Dense(
        units, activation='relu', name=name, bias_initializer=tf.keras.initializers.Constant(alexnet.FC_BIAS),
        kernel_initializer=tf.keras.initializers.RandomNormal(stddev=alexnet.FC_STDDEV),
      )  # fmt: skip

    self.fc6, self.fc7 = fc('fc6'), fc('fc7')
    self.dropout = tf.keras.layers.Dropout(dropout)
    self.box_head = instance_heads.DetectionHead(num_classes=num_classes + 1, num_convs=0, num_fcs=0, name='box_head')

  def call(self, roi_features, training=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """[B, N, S, S, C] ROI crops -> class logits [B, N, K + 1], box deltas [B, N, 4 (K + 1)]."""
    _, num_rois, height, width, channels = roi_features.shape.as_list()
    x = tf.reshape(tf.cast(roi_features, tf.float32), [-1, height, width, channels])
    x = tf.nn.max_pool2d(x, 2, 2, 'VALID')  # Each S/2 x S/2 bin keeps its largest sample, as ROI max pooling.
    x = tf.reshape(x, [-1, (height // 2) * (width // 2) * channels])
    x = self.dropout(self.fc6(x), training=training)
    x = self.dropout(self.fc7(x), training=training)
    # DetectionHead flattens [B, N, h, w, C]; a 1x1 "crop" makes that the fc7 vector.
    return self.box_head(tf.reshape(x, [-1, num_rois, 1, 1, x.shape[-1]]), training=training)

  def variable_groups(self) -> Dict[str, List[tf.Variable]]:
    """Trainable variables: fc (fc6, fc7), box_head."""
    return {'fc': self.fc6.trainable_variables + self.fc7.trainable_variables,
            'box_head': list(self.box_head.trainable_variables)}  # fmt: skip


def build_conv_detector(cfg: DetectionEvalConfig, network: Any) -> Tuple[tf.keras.Model, str]:
  """The detector on an AlexNet / VGG16 (variables created) and a description of the network.

  `cfg.proposals` 'rpn' gives the Faster R-CNN (proposals from an RPN on conv5); 'selective_search'
  gives Fast R-CNN on precomputed proposals (`fast_rcnn.FastRCNN`), the same backbone and head.

  Args:
    cfg: the detection config (validated; `check_config` is run here too).
    network: a run's AlexNet / VGG16 trunk (`registry.ConvNetTrunk`) or an AlexNet student.

  Raises:
    ConfigError: a setting the network cannot run, or an unsupported network.
  """
  net, kind, source = detection_network(network)
  check_config(cfg, kind)
  check_canvases(cfg, kind, conv1_padding(net))
  units = alexnet.scaled(cfg.fc_units, net.width)
  parts = dict(
    backbone=ConvDetectionBackbone(net, kind, cfg.freeze_batch_norm),
    detection_head=FCBoxHead(cfg.num_classes, units, cfg.fc_dropout),
  )
  size = max(BUILD_SIZE, min_canvas(kind, conv1_padding(net)))
  if cfg.proposals == 'selective_search':
    model, proposals = fast_rcnn.FastRCNN(cfg, **parts), 'selective-search proposals (Fast R-CNN)'
    fast_rcnn.create_variables(model, size)
  else:
    model, proposals = FasterRCNN(cfg, **parts), 'RPN proposals'
    create_variables(model, size)
  pooled = cfg.roi_crop_size // 2
  description = (f'{source}; {proposals}; ROI-align {cfg.roi_crop_size}x{cfg.roi_crop_size} max-pooled to '
                 f'{pooled}x{pooled} at {ENDPOINTS[kind]}; new fc6/fc7 ({units} units)')  # fmt: skip
  return model, description
