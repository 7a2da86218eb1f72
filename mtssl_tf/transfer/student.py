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

`probe_student` is Noroozi's Table 4 (after Zhang et al. 2016): the student frozen,
each conv layer max-pooled to the largest square grid under 9216 dimensions
(`linear.probe_grid`), one linear classifier per layer trained on real labels, top-1
per layer. It reuses the linear evaluation's heads, data, loop and metrics.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
import yaml
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError, override, to_plain, validate_all
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.evaluation import classification
from mtssl_tf.evaluation.linear import LinearProbes, make_probe_step, probe_grid
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


def train_student(
  cfg: StudentConfig, out_dir: str, train_spec: str, num_classes: int, progress: bool = True, export: bool = True
) -> Dict[str, Any]:
  """Trains (or resumes training) a student on pseudo-labelled images; writes results.json.

  Args:
    cfg: architecture and schedule.
    out_dir: `student/` folder: checkpoints, summaries, student.json, saved_model.
    train_spec: pseudo-labelled images (`image/class/label` in [0, num_classes)).
    num_classes: number of pseudo-classes (k).
    progress: log progress lines.
    export: write the SavedModel at the end.

  Returns:
    The results: steps, mean loss and train top-1 of this run's first and last log windows,
    checkpoint, saved_model.

  Raises:
    ConfigError: a bad config value (named).
    ValueError: unknown architecture, or a checkpoint that does not fit the config.
    FloatingPointError: a non-finite loss, naming the step.
  """
  validate_all(cfg)
  tf.io.gfile.makedirs(out_dir)
  tf.keras.utils.set_random_seed(cfg.seed)
  kwargs = model_kwargs(cfg)
  try:
    model = build_model(cfg.architecture, num_classes, cfg.crop_size, **kwargs)
  except ValueError as e:
    raise ConfigError(f'train.architecture: {e}') from None
  meta = describe_student(cfg.architecture, num_classes, cfg.crop_size, kwargs)
  with tf.io.gfile.GFile(os.path.join(out_dir, META), 'w') as f:
    json.dump(meta, f, indent=2)
  if cfg.architecture == 'resnet_v2_trunk':
    with tf.io.gfile.GFile(os.path.join(out_dir, 'config.yaml'), 'w') as f:
      yaml.safe_dump({'trunk': to_plain(cfg.trunk)}, f, sort_keys=False)

  schedule = tf.keras.optimizers.schedules.ExponentialDecay(
    cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_factor, staircase=True
  )
  optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)
  kernels = [v for v in model.trainable_variables if 'kernel' in v.name]
  tune = FineTune(NAME, out_dir, steps=cfg.steps, log_every_steps=cfg.log_every_steps,
                  checkpoint_every_steps=cfg.checkpoint_every_steps, progress=progress)  # fmt: skip
  start = tune.restore(optimizer, model.trainable_variables, model=model)

  @tf.function
  def train_step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message='pseudo-label >= num_classes')
    with tf.GradientTape() as tape:
      logits = model(_to_input(batch['image']), training=True)[LOGITS]
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      total = loss + cfg.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
    grads = tape.gradient(total, model.trainable_variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
    top1 = tf.reduce_mean(tf.cast(classification.correct_at_k(logits, labels, 1), tf.float32))
    return total, {'loss': loss, 'train_top1': top1}

  windows = []

  def recorded_step(batch):
    total, metrics = train_step(batch)
    windows.append((float(metrics['loss']), float(metrics['train_top1'])))
    return total, metrics

  skipped = 0
  if start < cfg.steps:
    data = classification.classification_dataset(
      train_spec, image_size=cfg.image_size, crop_size=cfg.crop_size, batch_size=cfg.batch_size, training=True,
      seed=cfg.seed, flip=cfg.flip, shuffle_buffer=cfg.shuffle_buffer, start=start * cfg.batch_size,
    )  # fmt: skip
    stats = tune.fit(recorded_step, data, schedule=schedule, log_keys=('loss', 'train_top1'))
    skipped = stats['num_skipped_train']
  export_dir = os.path.join(out_dir, 'saved_model')
  if export and (start < cfg.steps or not tf.io.gfile.exists(os.path.join(export_dir, 'saved_model.pb'))):
    module = StudentExport(model, cfg.crop_size)
    saved_model.save(module, export_dir, {'serving_default': module.logits, 'features': module.features})
  window = max(1, min(cfg.log_every_steps, len(windows)))

  def mean(rows, i):
    return sum(r[i] for r in rows) / len(rows) if rows else None

  results = {
    'steps': int(optimizer.iterations.numpy()),
    'architecture': cfg.architecture,
    'num_classes': num_classes,
    'first_window': {'loss': mean(windows[:window], 0), 'train_top1': mean(windows[:window], 1)},
    'last_window': {'loss': mean(windows[-window:], 0), 'train_top1': mean(windows[-window:], 1)},
    'train_source': train_spec,
    'checkpoint': tune.latest_checkpoint,
    'saved_model': export_dir if export else None,
    'skipped_train_records': skipped,
  }
  with tf.io.gfile.GFile(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  if progress and windows:
    logging.info('transfer: student trained to step %d, loss %.4f -> %.4f', results['steps'],
                 results['first_window']['loss'], results['last_window']['loss'])  # fmt: skip
  return results


def _probe_layout(cfg: ProbeConfig, student: tf.keras.Model) -> Tuple[Dict[str, str], Dict[str, int], Dict[str, int]]:
  """Classifier key -> layer, grid and dims, from one forward pass at crop size."""
  shapes = {k: v.shape for k, v in student(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False).items()}
  layers = tuple(cfg.endpoints) or tuple(student.probe_endpoints)
  missing = [e for e in layers if e not in shapes or e == LOGITS]
  if missing:
    raise ConfigError(f'probe.endpoints: the student has no layer {missing} (it has {sorted(set(shapes) - {LOGITS})})')
  sources, grids, dims = {}, {}, {}
  for layer in layers:
    shape = shapes[layer]
    key = layer.replace('/', '_')
    sources[key] = layer
    # A dense layer's output is a 1x1 map.
    grids[key] = probe_grid(int(shape[-1]), cfg.max_dims, min(shape[1], shape[2])) if len(shape) == 4 else 1
    dims[key] = grids[key] * grids[key] * int(shape[-1])
  return sources, grids, dims


def probe_student(
  cfg: ProbeConfig,
  student: tf.keras.Model,
  out_dir: str,
  train_spec: str = '',
  validation_spec: str = '',
  progress: bool = True,
) -> Dict[str, Any]:
  """Trains a linear classifier on each frozen student layer with real labels; top-1/top-5 per layer.

  Args:
    cfg: the protocol.
    student: a built (trained) student; never modified.
    out_dir: checkpoints (resumed), summaries `transfer/probe/<layer>/<metric>`, results.json.
    train_spec: labelled training images (overrides `cfg.train_source`).
    validation_spec: labelled validation images (overrides `cfg.validation_source`).
    progress: log progress lines.

  Returns:
    The results: `probes` {layer: {top1, top5, grid, dims}}, `protocol`, `counts`.

  Raises:
    ConfigError: a bad config value or a layer the student lacks (named).
    FloatingPointError: a non-finite loss.
  """
  validate_all(cfg)
  train_spec, validation_spec = classification.resolve_sources(cfg, train_spec, validation_spec, 'probe')
  tf.io.gfile.makedirs(out_dir)
  input_size = getattr(student, 'input_size', None)
  if input_size and input_size != cfg.crop_size:
    raise ConfigError(f"probe.crop_size: must be the student's input size {input_size}, got {cfg.crop_size}")
  num_classes, train_count = cfg.num_classes, None
  if not num_classes:
    train_count, num_classes = classification.count_labels(train_spec, cfg.label_offset, cfg.data_dir)
  sources, grids, dims = _probe_layout(cfg, student)
  probes = LinearProbes(sources, grids, num_classes, cfg.feature_norm)
  schedule = tf.keras.optimizers.schedules.ExponentialDecay(
    cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_factor, staircase=True
  )
  optimizer = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)

  def frozen(images):
    # Inference mode (BatchNorm's moving statistics, no dropout) and no gradient path.
    endpoints = student(_to_input(images), training=False)
    out = {}
    for layer in sources.values():
      x = tf.stop_gradient(endpoints[layer])
      out[layer] = x if x.shape.rank == 4 else x[:, None, None, :]
    return out, ()

  probes(*frozen(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8)), training=False)
  name = f'{NAME}/probe'
  tune = FineTune(name, out_dir, steps=cfg.steps, log_every_steps=cfg.log_every_steps,
                  checkpoint_every_steps=cfg.checkpoint_every_steps, progress=progress)  # fmt: skip
  tune.restore(optimizer, probes.trainable_variables, probes=probes)
  train_step = make_probe_step(probes, frozen, optimizer, num_classes, cfg.weight_decay)

  @tf.function(reduce_retracing=True)
  def predict(images):
    return probes(*frozen(images), training=False)[0]

  writer = tune.writer
  scores, validation_count, train_skipped, validation_skipped = classification.train_and_evaluate(
    tune, cfg, train_step, predict, num_classes, train_spec, validation_spec, schedule=schedule, flip=True,
  )  # fmt: skip
  step = int(optimizer.iterations.numpy())
  with writer.as_default(step=step):
    for key, metrics in scores.items():
      for metric, value in metrics.items():
        tf.summary.scalar(f'{name}/{sources[key]}/{metric}', value)
  writer.flush()
  results = {
    'probes': {sources[k]: dict(scores[k], grid=grids[k], dims=dims[k]) for k in sources},
    'protocol': {
      'student': 'frozen: inference mode (BatchNorm moving statistics, no dropout), no gradients',
      'probe_grid_rule': f'largest square grid g with g*g*channels <= {cfg.max_dims}, not above the map size',
      'feature_norm': cfg.feature_norm,
      'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}, horizontal flip',
      'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
    },
    'counts': {
      'steps': step,
      'batch_size': cfg.batch_size,
      'num_classes': num_classes,
      'train_examples': train_count,
      'validation_examples': validation_count,
      'skipped_train_records': train_skipped,
      'skipped_validation_records': validation_skipped,
    },
  }
  with tf.io.gfile.GFile(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2, default=float)
  if progress:
    logging.info('transfer probes: %s', ', '.join(f'{k} {v["top1"]:.3f}' for k, v in results['probes'].items()))
  return results


def run_train(cfg: TransferConfig, model_dir: str, progress: bool = True) -> Dict[str, Any]:
  """The `train` step: the student on `pseudo_labels/` (or `train.source`) into `student/`.

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
  num_classes = num_classes or cfg.cluster.num_clusters
  return train_student(cfg.train, os.path.join(model_dir, OUTPUTS['train']), spec, num_classes, progress)


def run_probe(cfg: TransferConfig, model_dir: str, student: Optional[tf.keras.Model] = None, progress: bool = True):
  """The `probe` step: per-layer linear probes of the trained student, into `student/probe/`."""
  world_sources(cfg)
  student = student or load_student(os.path.join(model_dir, OUTPUTS['train']))
  return probe_student(cfg.probe, student, os.path.join(model_dir, PROBE_DIR), progress=progress)
