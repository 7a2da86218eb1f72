"""Steps 4 and 5 of knowledge transfer: train a student on pseudo-labels, then probe it.

Training is standard supervised classification of the pseudo-labels (Noroozi et al.
2018, §4): random crops of images resized to `image_size`, random flips, momentum SGD
with a staircase learning rate decay and weight decay on every kernel. Checkpoints
(model and optimizer) go to `student/checkpoints` and a rerun resumes from the last;
TensorBoard scalars are `transfer/<metric>` in `student/`. At the end the student is
exported to `student/saved_model` (signatures `features`: {layer: activations} of the
probed layers, and `serving_default`: logits, on uint8 images at the training crop
size), so `extract` can read it for another round of transfer, and `student.json`
says how to rebuild it (`load_student`). A 'resnet_v2_trunk' student also gets a
`config.yaml` with its trunk, so `mtssl-eval --init=<model_dir>/student` evaluates it.

Both are protocols over the shared fine-tuning engine: `StudentTraining` (a
`ClassifierProtocol`: the classification views and loop) and `StudentProbes`, Noroozi's
Table 4 (after Zhang et al. 2016): the student frozen, each conv layer max-pooled to the
largest square grid under 9216 dimensions (`linear.probe_grid`), one linear classifier
per layer trained on real labels, top-1 per layer; it is `linear`'s `ProbesProtocol`
on the student's layers. `train_student` and `probe_student` run them on given folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import tensorflow as tf
import yaml
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError, override, to_plain, validate_all
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import classification
from mtssl_tf.evaluation.classification import ClassifierProtocol
from mtssl_tf.evaluation.linear import ProbesProtocol, probe_grid
from mtssl_tf.evaluation.protocol import Context, Trainee
from mtssl_tf.export import saved_model
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.transfer.assign import pseudo_label_spec, read_summary
from mtssl_tf.transfer.config import OUTPUTS, PROBE_DIR, ProbeConfig, StudentConfig, TransferConfig, world_sources
from mtssl_tf.transfer.models import LOGITS, build_model
from mtssl_tf.trunk.inputs import preprocess

NAME = 'transfer'
META = 'student.json'


def _to_input(images: tf.Tensor) -> tf.Tensor:
  return preprocess(images, 'rgb')


def model_kwargs(cfg: StudentConfig) -> Dict[str, Any]:
  """The `build_model` arguments the config gives this architecture."""
  if cfg.architecture == 'alexnet':
    return {'width': cfg.width, 'batch_norm': cfg.batch_norm, 'dropout': cfg.dropout}
  if cfg.architecture == 'resnet_v2_trunk':
    return {'trunk': cfg.trunk}
  return {}


def describe_student(architecture: str, num_classes: int, input_size: int, kwargs: Dict[str, Any]) -> Dict[str, Any]:
  """The `student.json` of a student built by `build_model(architecture, num_classes, input_size, **kwargs)`."""
  return {'architecture': architecture, 'num_classes': num_classes, 'input_size': input_size,
          'kwargs': {k: to_plain(v) if isinstance(v, Config) else v for k, v in kwargs.items()}}  # fmt: skip


def load_student(student_dir: str) -> tf.keras.Model:
  """Rebuilds a trained student from `student.json` and restores its latest checkpoint.

  Raises:
    FileNotFoundError: no student (or no checkpoint) in `student_dir`.
    ValueError: the checkpoint does not fit the described student (e.g. an AlexNet of an earlier layout).
  """
  path = os.path.join(student_dir, META)
  latest = tf.train.latest_checkpoint(os.path.join(student_dir, 'checkpoints'))
  if not tf.io.gfile.exists(path) or not latest:
    raise FileNotFoundError(f'no trained student in {student_dir} (run the train step first)')
  with tf.io.gfile.GFile(path) as f:
    meta = json.load(f)
  kwargs = dict(meta['kwargs'])
  if 'trunk' in kwargs:
    kwargs['trunk'] = override(TrunkConfig(), kwargs['trunk'])
  model = build_model(meta['architecture'], meta['num_classes'], meta['input_size'], **kwargs)
  try:
    tf.train.Checkpoint(model=model).read(latest).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
      f'student {student_dir}: checkpoint {latest} does not fit the {meta["architecture"]} its {META} describes '
      "(an 'alexnet' student saved before the CaffeNet layout, without conv groups, must be retrained): "
      f'{str(e).splitlines()[0][:300]}'
    ) from None
  model.input_size = meta['input_size']
  return model


class StudentExport(tf.Module):
  """The exported student: `features` ({probed layer: float32}) and logits, on uint8 images."""

  def __init__(self, model: tf.keras.Model, input_size: int):
    super().__init__(name='student')
    self._held = saved_model.ModelRef(model)  # Saved: the variables the signatures read, not Keras layers.
    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.uint8, name='images')
    self.features = tf.function(self._features, input_signature=[spec])
    self.logits = tf.function(self._logits, input_signature=[spec])
    self.student_variables = saved_model.variables_read([self.features, self.logits])

  @property
  def model(self) -> tf.keras.Model:
    return self._held.model

  def _features(self, images):
    endpoints = self.model(_to_input(images), training=False)
    return {e.replace('/', '_'): tf.cast(endpoints[e], tf.float32) for e in self.model.probe_endpoints}

  def _logits(self, images):
    return {LOGITS: tf.cast(self.model(_to_input(images), training=False)[LOGITS], tf.float32)}


class StudentTraining(ClassifierProtocol):
  """Step 4: the student trained on pseudo-labelled images (or resumed); writes results.json.

  The context's `out_dir` is the `student/` folder: checkpoints, summaries
  `transfer/<metric>`, student.json, saved_model; `train_spec` the pseudo-labelled
  images (`image/class/label` in [0, num_classes)). Results: steps, the mean loss and
  train top-1 of this run's first and last log windows, checkpoint, saved_model.

  Args:
    num_classes: the number of pseudo-classes (k).
    export: write the SavedModel at the end.
  """

  name = 'train'  # The config section, in messages.
  summary = 'the student trained on pseudo-labels (mtssl-transfer train)'
  config_class = StudentConfig
  summary_name = NAME
  # The first / last window's keys when this run trained no step (None: the window is None then).
  window_keys: ClassVar[Optional[Tuple[str, ...]]] = ('loss', 'train_top1')

  def __init__(self, num_classes: int = 0, export: bool = True):
    self.num_classes, self.export = num_classes, export

  def augmentation(self, cfg: StudentConfig):
    return None, cfg.flip

  def build(self, ctx: Context) -> Trainee:
    cfg: StudentConfig = ctx.section
    self.model, kwargs = self.new_student(ctx, cfg.architecture)
    self.write_meta(ctx, describe_student(cfg.architecture, self.num_classes, cfg.crop_size, kwargs))
    if cfg.architecture == 'resnet_v2_trunk':
      with tf.io.gfile.GFile(os.path.join(ctx.out_dir, 'config.yaml'), 'w') as f:
        yaml.safe_dump({'trunk': to_plain(cfg.trunk)}, f, sort_keys=False)
    return Trainee({'model': self.model}, self.model.trainable_variables)

  def new_student(self, ctx: Context, architecture: str) -> Tuple[tf.keras.Model, Dict[str, Any]]:
    """The student network, seeded (and its folder made); with the `build_model` arguments it took.

    Raises:
      ConfigError: `build_model` refuses the architecture or its options (named `<section>.architecture`).
    """
    cfg = ctx.section
    tf.io.gfile.makedirs(ctx.out_dir)
    tf.keras.utils.set_random_seed(cfg.seed)
    self.windows: List[Dict[str, float]] = []
    kwargs = model_kwargs(cfg)
    try:
      return build_model(architecture, self.num_classes, cfg.crop_size, **kwargs), kwargs
    except ValueError as e:
      raise ConfigError(f'{cfg.section}.architecture: {e}') from None

  def write_meta(self, ctx: Context, meta: Dict[str, Any]) -> None:
    """Writes `student.json` (how `load_student` rebuilds the student)."""
    with tf.io.gfile.GFile(os.path.join(ctx.out_dir, META), 'w') as f:
      json.dump(meta, f, indent=2)

  def train_step(self, ctx: Context, trainee: Trainee, optimizer) -> Callable:
    step = self.make_step(ctx, trainee, optimizer)

    def recorded_step(batch):  # Keeps every step's values for the first and last window means.
      total, metrics = step(batch)
      self.windows.append({k: float(v) for k, v in metrics.items()})
      return total, metrics

    return recorded_step

  def make_step(self, ctx: Context, trainee: Trainee, optimizer) -> Callable:
    """The tf.function update: softmax cross-entropy on the pseudo-labels, weight decay on every kernel."""
    model = self.model
    return classification.make_softmax_step(lambda images: model(_to_input(images), training=True)[LOGITS],
                                            model.trainable_variables, optimizer, self.num_classes,
                                            ctx.section.weight_decay, 'pseudo-label')  # fmt: skip

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    """Exports the model (when trained now, or not exported yet) and sums up the training."""
    cfg = ctx.section
    export_dir = os.path.join(ctx.out_dir, 'saved_model')
    if self.export and (stats or not tf.io.gfile.exists(os.path.join(export_dir, 'saved_model.pb'))):
      self.export_model(ctx, export_dir)
    size = max(1, min(cfg.log_every_steps, len(self.windows)))
    results = {
      'steps': tune.step,
      'first_window': self.window_mean(self.windows[:size]),
      'last_window': self.window_mean(self.windows[-size:]),
      'train_source': ctx.train_spec,
      'checkpoint': tune.latest_checkpoint,
      'saved_model': export_dir if self.export else None,
    }
    results.update(self.details(ctx, stats))
    return results

  def export_model(self, ctx: Context, export_dir: str) -> None:
    """Writes the SavedModel: the student's logits and features."""
    module = StudentExport(self.model, ctx.section.crop_size)
    saved_model.save(module, export_dir, {'serving_default': module.logits, 'features': module.features})

  def details(self, ctx: Context, stats: Dict[str, Any]) -> Dict[str, Any]:
    """The results particular to this kind of student."""
    return {'architecture': ctx.section.architecture, 'num_classes': self.num_classes,
            'skipped_train_records': stats.get('num_skipped_train', 0)}  # fmt: skip

  def window_mean(self, rows: List[Dict[str, float]]) -> Optional[Dict[str, Optional[float]]]:
    """Each value's mean over `rows`; without rows, None per `window_keys` (or None when it is None)."""
    if rows:
      return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return dict.fromkeys(self.window_keys) if self.window_keys is not None else None

  def report(self, ctx: Context, results: Dict[str, Any], path: str) -> None:
    if ctx.progress and self.windows:
      logging.info('%s: student trained to step %d, loss %.4g -> %.4g', self.summary_name, results['steps'],
                   results['first_window']['loss'], results['last_window']['loss'])  # fmt: skip


def train_student(
  cfg: StudentConfig, out_dir: str, train_spec: str, num_classes: int, progress: bool = True, export: bool = True
) -> Dict[str, Any]:
  """`StudentTraining` into the `student/` folder `out_dir`, on `train_spec`'s `num_classes` pseudo-labels.

  Raises:
    ConfigError: a bad config value (named), or an unknown architecture.
    ValueError: a checkpoint that does not fit the config.
    FloatingPointError: a non-finite loss, naming the step.
  """
  ctx = Context(StudentTraining.name, cfg, out_dir, out_dir, train_spec, '', progress=progress)
  return StudentTraining(num_classes, export).run(ctx)


def _probe_layout(
  cfg: ProbeConfig, student: tf.keras.Model, section: str = 'probe'
) -> Tuple[Dict[str, str], Dict[str, int], Dict[str, int]]:
  """Classifier key -> layer, grid and dims, from one forward pass at crop size."""
  shapes = {k: v.shape for k, v in student(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False).items()}
  layers = tuple(cfg.endpoints) or tuple(student.probe_endpoints)
  missing = [e for e in layers if e not in shapes or e == LOGITS]
  if missing:
    raise ConfigError(f'{section}.endpoints: the student has no layer {missing} (it has '
                      f'{sorted(set(shapes) - {LOGITS})})')  # fmt: skip
  sources, grids, dims = {}, {}, {}
  for layer in layers:
    shape = shapes[layer]
    key = layer.replace('/', '_')
    sources[key] = layer
    # A dense layer's output is a 1x1 map.
    grids[key] = probe_grid(int(shape[-1]), cfg.max_dims, min(shape[1], shape[2])) if len(shape) == 4 else 1
    dims[key] = grids[key] * grids[key] * int(shape[-1])
  return sources, grids, dims


class StudentProbes(ProbesProtocol):
  """Step 5 (Noroozi Table 4, after Zhang et al. 2016): a linear classifier on each frozen student layer.

  The student (the context's network, else the student folder `init`) is frozen and
  never modified; each layer is max-pooled to the largest square grid under `max_dims`
  dimensions (`linear.probe_grid`) and gets one linear classifier trained on real labels.
  `out_dir` gets checkpoints (resumed), summaries `transfer/probe/<layer>/<metric>` and
  results.json: `probes` {layer: {top1, top5, grid, dims}}, `protocol`, `counts`.
  """

  name = 'probe'  # The config section, in messages.
  summary = 'per-layer frozen linear probes of a transfer student (mtssl-transfer probe)'
  config_class = ProbeConfig
  source_fields = ('train_source', 'validation_source')
  summary_name = f'{NAME}/probe'

  def prepare(self, ctx: Context) -> Context:
    validate_all(ctx.section)
    student = ctx.network if ctx.given else load_student(ctx.init)
    input_size = getattr(student, 'input_size', None)
    if input_size and input_size != ctx.section.crop_size:
      raise ConfigError(f"{self.name}.crop_size: must be the student's input size {input_size}, got "
                        f'{ctx.section.crop_size}')  # fmt: skip
    return dataclasses.replace(ctx, network=student)

  def augmentation(self, cfg: ProbeConfig):
    return None, True

  def layout(self, ctx: Context):
    return _probe_layout(ctx.section, ctx.network, self.name)

  def frozen_features(self, ctx: Context) -> Callable:
    student, sources = ctx.network, self.sources
    # A student reads RGB; a network that carries its own input convention (a pre-training run's trunk,
    # `evaluation.places.TrunkProbeNet`) says so in `to_input`.
    to_input = getattr(student, 'to_input', None) or _to_input

    def frozen(images):
      # Inference mode (BatchNorm's moving statistics, no dropout) and no gradient path.
      endpoints = student(to_input(images), training=False)
      out = {}
      for layer in sources.values():
        x = tf.stop_gradient(endpoints[layer])
        out[layer] = x if x.shape.rank == 4 else x[:, None, None, :]
      return out, ()

    return frozen

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: ProbeConfig = ctx.section
    scores, counts = self.probe_scores(ctx, tune, stats)
    return {
      'probes': self.probe_results(scores),
      'protocol': {
        'student': 'frozen: inference mode (BatchNorm moving statistics, no dropout), no gradients',
        'probe_grid_rule': self.grid_rule(cfg.max_dims),
        'feature_norm': cfg.feature_norm,
        'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}, horizontal flip',
        'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
      },
      'counts': counts,
    }

  def report(self, ctx: Context, results: Dict[str, Any], path: str) -> None:
    if ctx.progress:
      shown = ', '.join(f'{k} {v["top1"]:.3f}' for k, v in results['probes'].items())
      logging.info('%s: %s -> %s', self.summary_name, shown, path)


def probe_student(
  cfg: ProbeConfig,
  student: tf.keras.Model,
  out_dir: str,
  train_spec: str = '',
  validation_spec: str = '',
  progress: bool = True,
) -> Dict[str, Any]:
  """`StudentProbes` of a built student into `out_dir`; sources default to the section's.

  Raises:
    ConfigError: a bad config value, a missing source or a layer the student lacks (named).
    FloatingPointError: a non-finite loss.
  """
  ctx = StudentProbes.direct_context(cfg, out_dir, train_spec, validation_spec, out_dir=out_dir, network=student,
                                     progress=progress)  # fmt: skip
  return StudentProbes().run(ctx)


def run_train(cfg: TransferConfig, model_dir: str, progress: bool = True) -> Dict[str, Any]:
  """The `train` step: the student on `pseudo_labels/` (or `train.source`) into `student/`.

  A detection `train.source` (`voc:`) is read as scene-labelled images (`scene_source`).

  Raises:
    FileNotFoundError: no pseudo-labels (run assign first) and no `train.source`.
  """
  labels_dir = os.path.join(model_dir, OUTPUTS['assign'])
  spec, num_classes = cfg.train.source, cfg.train.num_classes
  if not spec:
    summary = read_summary(labels_dir)
    if not summary or not summary.get('complete'):
      raise FileNotFoundError(f'no pseudo-labels in {labels_dir} (run the assign step first)')
    spec, num_classes = pseudo_label_spec(labels_dir), num_classes or summary['num_clusters']
  elif is_detection_source(spec):
    spec, num_classes = scene_source(spec, model_dir, num_classes)
  num_classes = num_classes or cfg.cluster.num_clusters
  return train_student(cfg.train, os.path.join(model_dir, OUTPUTS['train']), spec, num_classes, progress)


def is_detection_source(spec: str) -> bool:
  """Whether `spec` is a detection source (VOCdevkit or tfds VOC), whose images have boxes, not labels."""
  return spec.startswith('voc:') or spec.startswith('tfds:voc')


def scene_source(spec: str, model_dir: str, num_classes: int) -> Tuple[str, int]:
  """A detection source as scene-labelled images (`places.labelled_scenes`) in `<model_dir>/scenes/`, and its classes.

  How a student learns "Places labels" (Noroozi Table 5's last row) in the miniature: the
  synthetic world's scenes stand in for Places, each labelled by its largest object, as
  `places_linear` labels them.

  Raises:
    ConfigError: `train.num_classes` smaller than the labels need.
  """
  from mtssl_tf.evaluation.places import labelled_scenes  # Lazy: places builds on this module.

  scenes, labels = labelled_scenes(spec, os.path.join(model_dir, 'scenes'), 'train')
  needed = int(labels.max()) + 1
  if num_classes and num_classes < needed:
    raise ConfigError(f'train.num_classes: {num_classes} is too few for the scene labels of {spec} (0..{needed - 1})')
  return scenes, num_classes or needed


def run_probe(cfg: TransferConfig, model_dir: str, student: Optional[tf.keras.Model] = None, progress: bool = True):
  """The `probe` step: per-layer linear probes of the trained student, into `student/probe/`."""
  world_sources(cfg)
  student = student or load_student(os.path.join(model_dir, OUTPUTS['train']))
  return probe_student(cfg.probe, student, os.path.join(model_dir, PROBE_DIR), progress=progress)
