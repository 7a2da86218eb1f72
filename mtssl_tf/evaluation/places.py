"""Places linear probes of a transfer student (Noroozi et al. 2018, Table 5).

Table 5 is Table 4's protocol on another dataset: "We use the same setting as in Table 4
except that to evaluate generalization across datasets, the model is pre-trained on
ImageNet (with no labels) and then tested with frozen layers on Places (with labels)"
(Noroozi §5.2; Places205, Zhou et al. 2014, as in Zhang et al. 2016/2017's evaluation).
So this protocol runs the student probes of `mtssl-transfer probe`
(`transfer.student.StudentProbes`: the student frozen, each conv layer max-pooled to the
largest square grid under 9216 dimensions, one linear softmax classifier per layer) on a
Places-style source, from `mtssl-eval --eval=places_linear --init=<transfer run>/student`,
with its outputs in `<model_dir>/eval/places_linear/` (the ImageNet probes of Table 4 keep
`student/probe/`). A config is all a new dataset needs.

Table 5's rows that are not students (Jigsaw++, the pretext AlexNet itself; Random) are
probed the same way from `--init=<pre-training run>` with an AlexNet trunk, or
`--init=random` with `trunk.kind=alexnet`: the trunk's conv1..conv5 in the standard
AlexNet (conv1 stride 4 on the crop, whatever the trunk's variant: the Jigsaw tile
network's conv layers are read at full image size, as the paper evaluates them), on the
run's own input convention (`TrunkProbeNet`); a random one is then initialised on the
training crops (`evaluation.random_init`, Krähenbühl et al. 2016; `random_init: fillers`
keeps Caffe's fillers).

Sources. Image TFRecords, folders, image lists or tfds specs are read as labelled images
(Places205 at paper scale as distributed: `list:` sources over its trainvalsplit csv files,
`data.sources`). A `voc:` / `tfds:voc` source (the synthetic
world's multi-object scenes, this protocol's default: they stand for Places at miniature
scale, as `world:scene_images` does for Table 2) is labelled here by its scene's largest
object: the class of the largest non-difficult box (of any box when all are difficult),
the rule the world uses for its classification images (`scenes.Scene.label`: the largest
visible object) read from the annotations, box area standing in for visible area. Those
images are written once as labelled TFRecords to `<out_dir>/scenes/` (class ids are the
VOC indices, so train and test agree) and read like any other source.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data.detection import detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.synthetic.classification import image_example
from mtssl_tf.evaluation import random_init
from mtssl_tf.evaluation.protocol import Column, Context
from mtssl_tf.transfer.config import ProbeConfig
from mtssl_tf.transfer.student import StudentProbes, is_detection_source
from mtssl_tf.trunk import alexnet as caffenet

NAME = 'places_linear'
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')  # Table 5's columns (an AlexNet student's probes).
SCENES = 'scenes'


@dataclasses.dataclass
class PlacesProbeConfig(ProbeConfig):
  """Table 4's student probes (`transfer.config.ProbeConfig`, same defaults and checks) on a Places-style source.

  `train_source` / `validation_source` left empty read the synthetic world's scenes
  ('detection_trainval' / 'detection_test', labelled by their largest object).
  """

  section: ClassVar[str] = NAME


def scene_label(classes: np.ndarray, boxes: np.ndarray, difficult: np.ndarray) -> int:
  """The class of the largest non-difficult box (any box if all are difficult; first on ties); -1 without boxes."""
  if not len(classes):
    return -1
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  area = np.where(difficult, -1.0, area) if not difficult.all() else area
  return int(classes[int(np.argmax(area))])


def labelled_scenes(spec: str, folder: str, name: str, data_dir: str = '') -> Tuple[str, np.ndarray]:
  """Writes a detection source's images with their scene labels to `<folder>/<name>.tfrecord` (once).

  Returns:
    (the `tfrecord:` spec, the labels written). A finished file is reused (its labels
    re-read from `<name>.json`).
  """
  path, index = os.path.join(folder, f'{name}.tfrecord'), os.path.join(folder, f'{name}.json')
  if tf.io.gfile.exists(index):
    with tf.io.gfile.GFile(index) as f:
      return f'tfrecord:{path}', np.asarray(json.load(f)['labels'], np.int64)
  tf.io.gfile.makedirs(folder)
  labels = []
  with tf.io.TFRecordWriter(path + '.tmp') as writer:
    for x in detection_dataset(spec, ReadOptions(data_dir=data_dir or None)).as_numpy_iterator():
      label = scene_label(x['classes'], x['boxes'], x['difficult'])
      if label >= 0:
        writer.write(image_example(tf.io.encode_png(x['image']).numpy(), label).SerializeToString())
        labels.append(label)
  if not labels:
    raise ValueError(f'{NAME}: {spec!r} holds no image with a box to label')
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
  with tf.io.gfile.GFile(index, 'w') as f:  # Written last: its presence marks a finished file.
    json.dump({'source': spec, 'rule': 'class of the largest non-difficult box', 'labels': labels}, f)
  return f'tfrecord:{path}', np.asarray(labels, np.int64)


class TrunkProbeNet(tf.keras.Model):
  """A run's AlexNet trunk as a probed network: its conv1..conv5 in the standard AlexNet (no fc layers).

  Attributes read by `StudentProbes`: `probe_endpoints` (conv1..conv5), `input_size` (the
  probes' crop) and `to_input` (uint8 images -> the run's input convention).
  """

  def __init__(self, trunk_net: caffenet.AlexNet, crop_size: int, to_input):
    super().__init__(name='places_trunk_alexnet')
    self.net = caffenet.standard_from(trunk_net, crop_size, f'{NAME}.crop_size')
    self.probe_endpoints = tuple(c[0] for c in caffenet.CONVS)
    self.input_size, self.to_input = crop_size, to_input

  def call(self, images, training=None) -> Dict[str, tf.Tensor]:
    endpoints = self.net(images, training=training)
    return {layer: endpoints[layer] for layer in self.probe_endpoints}


def trunk_probe_net(ctx: Context, crop_size: int) -> Tuple[TrunkProbeNet, str]:
  """The probed network of a pre-training run or of 'random' (an AlexNet trunk), and its description.

  Raises:
    ConfigError: the run's (or the config's) trunk is not an AlexNet.
  """
  kind = ctx.trunk_config.kind if ctx.trunk_config is not None else None
  if kind != 'alexnet':
    raise ConfigError(f"init: {NAME} (Noroozi Table 5) probes an AlexNet: a transfer student folder "
                      f"(<transfer run>/student), a pre-training run with an AlexNet trunk or 'random' with "
                      f"trunk.kind=alexnet; {ctx.init!r} has trunk.kind {kind!r} (for another trunk run "
                      "--eval=linear with these sources and probe_endpoints)")  # fmt: skip
  net = ctx.trunk().net
  what = 'random AlexNet' if ctx.init == 'random' else f'AlexNet trunk of {ctx.init}'
  return TrunkProbeNet(net, crop_size, ctx.input_fn()), (
    f'{what} ({net.variant} variant, groups {net.groups}): conv1-conv5 in the standard AlexNet'
  )


class PlacesLinearProtocol(StudentProbes):
  """Noroozi et al. 2018 Table 5: the student's per-layer frozen linear probes on Places.

  `StudentProbes` on the configured source, with the student of `init`; results.json
  adds `<layer>_top1` / `<layer>_top5` and, for a detection source, `scene_labels`.
  """

  name = NAME
  summary = "a transfer student's per-layer frozen linear probes on a Places-style source (Noroozi Table 5)"
  config_class = PlacesProbeConfig
  source_fields = ('train_source', 'validation_source')
  world_sources = ('detection_trainval', 'detection_test')
  headline = tuple(f'{layer}_top1' for layer in LAYERS)
  columns = tuple(Column(f'Places {layer} top-1 (%)', f'{layer}_top1', 100.0) for layer in LAYERS)

  def prepare(self, ctx: Context) -> Context:
    from mtssl_tf.evaluation.voc_classification import student_meta

    cfg: PlacesProbeConfig = ctx.section
    cfg.validate()
    self.network_source = f'AlexNet student {ctx.init}' if ctx.init else 'the given network'
    if not ctx.given and not student_meta(ctx.init):
      network, self.network_source = trunk_probe_net(ctx, cfg.crop_size)
      ctx = dataclasses.replace(ctx, network=network)
    self.source, self.scenes = f'{ctx.train_spec} -> {ctx.test_spec}', None
    if is_detection_source(ctx.train_spec) or is_detection_source(ctx.test_spec):
      if not (is_detection_source(ctx.train_spec) and is_detection_source(ctx.test_spec)):
        raise ConfigError(f'{NAME}.train_source / validation_source: both or neither must be detection (voc:) '
                          f'sources, got {ctx.train_spec!r}, {ctx.test_spec!r}')  # fmt: skip
      folder = os.path.join(ctx.out_dir, SCENES)
      train_spec, train_labels = labelled_scenes(ctx.train_spec, folder, 'train', cfg.data_dir)
      test_spec, test_labels = labelled_scenes(ctx.test_spec, folder, 'test', cfg.data_dir)
      cfg = dataclasses.replace(cfg, label_offset=0, num_classes=cfg.num_classes or
                                int(max(train_labels.max(), test_labels.max())) + 1)  # fmt: skip
      self.scenes = {'rule': 'class of the largest non-difficult box of each scene',
                     'train_images': len(train_labels), 'validation_images': len(test_labels),
                     'classes_present': sorted(set(train_labels.tolist()))}  # fmt: skip
      ctx = dataclasses.replace(ctx, section=cfg, train_spec=train_spec, test_spec=test_spec)
    ctx = super().prepare(ctx)
    if isinstance(ctx.network, TrunkProbeNet):  # A random one is initialised on the training crops.
      note = random_init.initialise(ctx, ctx.network.net, lambda: self.train_data(ctx, 0), ctx.network.to_input)
      self.network_source += f'; {note}' if note else ''
    return ctx

  def score(self, ctx: Context, tune, stats: Dict[str, Any]) -> Dict[str, Any]:
    results = super().score(ctx, tune, stats)
    for layer, scores in results['probes'].items():
      results[f'{layer}_top1'], results[f'{layer}_top5'] = scores['top1'], scores['top5']
    results['protocol'].update(source=self.source, init_source=ctx.init, network=self.network_source)
    if self.scenes:
      results['scene_labels'] = self.scenes
    return results
