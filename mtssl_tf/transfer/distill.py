"""The distillation baseline of knowledge transfer (Noroozi et al. 2018, §5 "6) Knowledge distillation", Table 3).

Noroozi et al. compare cluster classification with distillation: "we train a student
network to regress conv4-5 layers of the teacher network (both AlexNet)", after Ba &
Caruana 2014 ("Do deep nets really need to be deep?", their [2]), and report 58.5 VOC07
classification mAP for it (Table 3; the Jigsaw++ teacher itself: 69.8, cluster
classification: 69.9). The paper gives the layers and the loss family, nothing else;
everything below that is not from it is a named config choice (`config.DistillConfig`).

* Student: `models.AlexNet`, the cluster classifier's network (`StudentConfig`'s
  width / batch_norm / crops / SGD / loop fields), saved exactly as `student.py` saves a
  student: `<model_dir>/distill/` holds `student.json`, `checkpoints/` (the student at
  `model`), `saved_model/`, TensorBoard scalars `distill/<metric>` and results.json.
  So `load_student`, the probes, `mtssl-eval --eval=voc07_cls --init=<model_dir>/distill`
  and every other reader of a student read it unchanged. Its fc6-fc8 are not regressed
  and stay at their initialisation (the evaluations draw new fc layers by default).
* Teacher: the model `extract` names (`extract.init`, `.trunk`, `.preprocessing`,
  `.precision`), i.e. the pre-training run clustering would read, restored through
  `backbone.load_trunk` (any kind of `trunk.registry`), run in inference mode, frozen.
  It sees the student's crop (in its own input convention).
* Layers (`TEACHER_LAYERS`, our choice where the paper has no AlexNet): AlexNet teacher
  conv4 -> student conv4 and conv5 -> conv5 (the paper); VGG16 conv4_3 -> conv4 and conv5_3
  -> conv5 (the last conv of blocks 4 and 5; §5 takes conv4_3 as VGG16's "conv4"); ResNet-v2
  (blocks 1-3) block2 -> conv4 and final (block 3 after BN-ReLU, what the task heads read)
  -> conv5: the top two stages in depth order, both at stride 16 at the default output
  stride, as AlexNet's conv4-5 are (227 px -> 13x13).
* Shapes (`DistillConfig.resize` / `adapter`): a teacher map of another size than the
  student's (VGG16, ResNet, a Jigsaw AlexNet's stride-2 conv1 on whole images) is
  area-averaged to the student's grid; where channel counts differ the student layer
  regresses through a learned 1x1 convolution (FitNets' regressor, Romero et al. 2015),
  trained with the student and checkpointed beside it (`regressors`), not part of it.
* Loss: the sum over layer pairs of the mean squared error (over batch, positions and
  channels); weight decay on the regressed layers' kernels and the adapters'. Logged per
  layer: 'mse_<layer>' and 'fvu_<layer>', the fraction of the target's variance left
  unexplained (scale-free: the MSE over the mean per-channel variance in the batch, so
  1 = predicting each channel's batch mean).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError, to_plain, validate_all
from mtssl_tf.data import decode
from mtssl_tf.data.images import ReadOptions, image_dataset
from mtssl_tf.evaluation import backbone, classification
from mtssl_tf.evaluation.protocol import Context, Trainee
from mtssl_tf.transfer.config import OUTPUTS, DistillConfig, TransferConfig, world_sources
from mtssl_tf.transfer.models import AlexNet
from mtssl_tf.transfer.student import StudentTraining, describe_student
from mtssl_tf.trunk.inputs import preprocess
from mtssl_tf.trunk.teacher_features import adaptive_max_pool

NAME = 'distill'
# Teacher layers regressed by the student's conv4 and conv5, per trunk kind (module docstring).
TEACHER_LAYERS: Dict[str, Tuple[str, str]] = {
  'alexnet': ('conv4', 'conv5'),  # Noroozi et al. 2018, §5: "regress conv4-5 layers of the teacher".
  'vgg16': ('conv4_3', 'conv5_3'),
  'resnet_v2': ('block2', 'final'),
}


def paired_teacher_layers(
  section: str,
  teacher_endpoints: Sequence[str],
  student_endpoints: Sequence[str],
  defaults: Dict[str, Tuple[str, ...]],
  kind: str,
) -> Tuple[str, ...]:
  """The teacher layers a transfer step pairs with its student layers (distillation, attention).

  Args:
    section: the config section, for errors ('distill', 'attention').
    teacher_endpoints: the section's `teacher_endpoints` (empty: the kind's default).
    student_endpoints: the section's `student_endpoints`.
    defaults: trunk kind -> default teacher layers, one per student layer.
    kind: the teacher's trunk kind.

  Raises:
    ConfigError: no default for this kind, or the default does not pair with `student_endpoints`.
  """
  if teacher_endpoints:
    return tuple(teacher_endpoints)
  if kind not in defaults:
    raise ConfigError(f'{section}.teacher_endpoints: no default for a {kind!r} teacher; name its layers')
  if len(student_endpoints) != len(defaults[kind]):
    raise ConfigError(f'{section}.teacher_endpoints: the {kind} default {list(defaults[kind])} pairs with '
                      f'{len(defaults[kind])} student layers, got {list(student_endpoints)}; name the teacher '
                      'layers')  # fmt: skip
  return tuple(defaults[kind])


def teacher_layers(cfg: DistillConfig, kind: str) -> Tuple[str, ...]:
  """`cfg.teacher_endpoints`, or the kind's default pair (`TEACHER_LAYERS`); errors as `paired_teacher_layers`."""
  return paired_teacher_layers(NAME, cfg.teacher_endpoints, cfg.student_endpoints, TEACHER_LAYERS, kind)


def load_teacher(cfg: TransferConfig) -> Tuple[tf.keras.Model, str, Dict[str, Any]]:
  """The frozen teacher of the `extract` section: (trunk, input convention, description).

  Raises:
    ConfigError: HOG features asked for (no network to regress).
    FileNotFoundError, ValueError: as `backbone.load_trunk`.
  """
  e = cfg.extract
  if e.features != 'network':
    raise ConfigError(f"extract.features: distillation regresses a network's layers, not {e.features!r} features")
  kind, path = backbone.resolve_source(e.init)
  if kind == backbone.RANDOM:
    tf.keras.utils.set_random_seed(e.seed)  # The random-network control's teacher, as extract draws it.
  trunk = backbone.load_trunk(e.init, e.trunk, e.precision)
  trunk.trainable = False
  mode = backbone.run_input_convention(e.preprocessing, e.init)
  info = {'init': e.init, 'source_kind': kind, 'path': path, 'trunk': to_plain(e.trunk), 'preprocessing': mode,
          'precision': e.precision}  # fmt: skip
  return trunk, mode, info


def resize_map(x: tf.Tensor, size: Tuple[int, int], method: str) -> tf.Tensor:
  """A teacher map [B, H, W, C] brought to the student's [size] grid ('area', 'bilinear' or adaptive 'max')."""
  x = tf.cast(x, tf.float32)
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  if method == 'max':
    if size[0] != size[1] or min(x.shape[1], x.shape[2]) < size[0]:
      raise ConfigError(f'distill.resize: max pooling needs a square student grid no larger than the teacher map; '
                        f'{tuple(x.shape[1:3])} -> {tuple(size)}')  # fmt: skip
    return adaptive_max_pool(x, size[0])
  return tf.image.resize(x, size, method=method)


class Regressors(tf.keras.Model):
  """Per student layer: identity, or a learned 1x1 convolution to the teacher's channels (FitNets' regressor)."""

  def __init__(self, channels: Dict[str, Tuple[int, int]], adapter: str, name: str = 'regressors'):
    """Creates the adapters.

    Args:
      channels: student layer -> (its channels, the teacher layer's channels).
      adapter: 'auto' (where they differ), 'always' or 'none'.
      name: model name.

    Raises:
      ConfigError: differing channels with adapter 'none'.
    """
    super().__init__(name=name)
    self.adapters = {}
    for layer, (student, teacher) in channels.items():
      if adapter == 'always' or (adapter == 'auto' and student != teacher):
        self.adapters[layer] = tf.keras.layers.Conv2D(teacher, 1, name=f'{layer}_adapter')
      elif student != teacher:
        raise ConfigError(f'distill.adapter: student {layer} has {student} channels, its teacher layer {teacher}; '
                          "use adapter 'auto' or match the widths")  # fmt: skip

  def call(self, maps: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return {k: self.adapters[k](v) if k in self.adapters else v for k, v in maps.items()}


def regressed_variables(student: AlexNet, layers: Sequence[str]) -> List[tf.Variable]:
  """The student's conv layers (and BatchNorms) up to the deepest regressed one: what the loss reaches."""
  names = [c[0] for c in student.CONVS]
  last = max(names.index(layer) for layer in layers)
  variables = []
  for conv in names[: last + 1]:
    variables += student.convs[conv].trainable_variables
    if conv in student.norms:
      variables += student.norms[conv].trainable_variables
  return variables


def image_batches(spec: str, cfg: DistillConfig, data_dir: str = '', start: int = 0) -> tf.data.Dataset:
  """Endless batches {'image': uint8 random crops (flipped)} of a source, labelled or not, seeded and resumable."""
  options = ReadOptions(shuffle_files=True, seed=cfg.seed + start, data_dir=data_dir or None)

  def process(record):
    return {'image': classification.resize_shorter_side(decode.decode_rgb(record['encoded']), cfg.image_size)}

  ds = image_dataset(spec, options, process)
  # A resumed run reshuffles differently rather than replaying the first run's order (as classification_dataset).
  ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed + start, reshuffle_each_iteration=True).repeat().enumerate(start)

  def view(index, x):
    seed = tf.stack([tf.constant(cfg.seed, tf.int64), index])
    return dict(x, image=classification.augment(x['image'], seed, cfg.crop_size, None, cfg.flip))

  return ds.map(view, num_parallel_calls=tf.data.AUTOTUNE).batch(cfg.batch_size, drop_remainder=True).prefetch(2)


class Distillation(StudentTraining):
  """A student AlexNet regressing the teacher's layers (module docstring), trained through the fine-tuning engine.

  The context's network is the teacher (frozen, a built trunk returning named
  endpoints, read through `ctx.input_fn()`), its `out_dir` the student folder
  (`<model_dir>/distill`: student.json, checkpoints, summaries, saved_model,
  results.json), its `train_spec` the images to regress on (labels unused). Results:
  steps, first and last log window means (loss, mse_<layer>, fvu_<layer>), the layer
  pairs and shapes, checkpoint, saved_model.

  Args:
    data_dir: tensorflow-datasets directory of the images.
    teacher_info: what the teacher is, recorded in student.json and results.json.
    export: write the SavedModel at the end.
  """

  name = NAME
  summary = "a student AlexNet regressing a teacher's layers (mtssl-transfer distill)"
  config_class = DistillConfig
  summary_name = NAME
  window_keys = None
  empty_message = 'the image source yields no batch (fewer images than batch_size?)'

  def __init__(self, data_dir: str = '', teacher_info: Optional[Dict[str, Any]] = None, export: bool = True):
    super().__init__(export=export)
    self.data_dir, self.teacher_info = data_dir, teacher_info or {}

  def build(self, ctx: Context) -> Trainee:
    cfg: DistillConfig = ctx.section
    self.num_classes = cfg.num_classes or 1
    self.model, kwargs = self.new_student(ctx, 'alexnet')
    student, teacher = self.model, ctx.trunk()
    zeros = tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8)
    student_maps = student(preprocess(zeros, 'rgb'), training=False)
    teacher_maps = teacher(ctx.input_fn()(zeros), training=False)
    kind = getattr(teacher, 'kind', 'resnet_v2')
    self.pairs = dict(zip(cfg.student_endpoints, teacher_layers(cfg, kind)))
    for layer, source in self.pairs.items():
      if layer not in student.probe_endpoints:
        raise ConfigError(f'distill.student_endpoints: the student has no conv layer {layer!r} '
                          f'({list(student.probe_endpoints)})')  # fmt: skip
      if source not in teacher_maps or teacher_maps[source].shape.rank != 4:
        raise ConfigError(f'distill.teacher_endpoints: the {kind} teacher has no feature map {source!r} '
                          f'({sorted(k for k, v in teacher_maps.items() if v.shape.rank == 4)})')  # fmt: skip
    self.shapes = {}
    for layer, source in self.pairs.items():
      self.shapes[layer] = {
        'student': student_maps[layer].shape.as_list()[1:],
        'teacher': teacher_maps[source].shape.as_list()[1:],
      }
    self.regressors = Regressors({k: (v['student'][-1], v['teacher'][-1]) for k, v in self.shapes.items()}, cfg.adapter)
    self.regressors({k: student_maps[k] for k in self.pairs})
    meta = describe_student('alexnet', self.num_classes, cfg.crop_size, kwargs)
    meta['distillation'] = {'pairs': self.pairs, 'teacher': self.teacher_info, 'resize': cfg.resize,
                            'adapters': sorted(self.regressors.adapters)}  # fmt: skip
    self.write_meta(ctx, meta)
    self.log_keys = ('loss',) + tuple(f'fvu_{k}' for k in self.pairs)
    variables = regressed_variables(student, list(self.pairs)) + self.regressors.trainable_variables
    return Trainee({'model': student, 'regressors': self.regressors}, variables)

  def make_step(self, ctx: Context, trainee: Trainee, optimizer) -> Callable:
    """The tf.function update: the summed per-layer MSE to the teacher's resized maps, weight decay on kernels."""
    cfg: DistillConfig = ctx.section
    student, teacher, teacher_input, regressors = self.model, ctx.trunk(), ctx.input_fn(), self.regressors
    pairs, shapes, variables = self.pairs, self.shapes, list(trainee.variables)
    kernels = [v for v in variables if 'kernel' in v.name]

    @tf.function
    def train_step(batch):
      images = batch['image']
      taught = teacher(teacher_input(images), training=False)
      targets = {
        k: tf.stop_gradient(resize_map(taught[s], shapes[k]['student'][:2], cfg.resize)) for k, s in pairs.items()
      }
      with tf.GradientTape() as tape:
        endpoints = student(preprocess(images, 'rgb'), training=True)
        predicted = regressors({k: endpoints[k] for k in pairs})
        errors = {k: tf.reduce_mean(tf.square(tf.cast(predicted[k], tf.float32) - targets[k])) for k in pairs}
        loss = tf.add_n(list(errors.values()))
        total = loss + cfg.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
      grads = tape.gradient(total, variables)
      optimizer.apply_gradients(zip(grads, variables))
      metrics = {'loss': loss}
      for k, error in errors.items():
        metrics[f'mse_{k}'] = error
        # Against each channel's own batch mean (a constant per channel is what an adapter's bias gives for free).
        spread = tf.reduce_mean(tf.math.reduce_variance(targets[k], axis=[0, 1, 2]))
        metrics[f'fvu_{k}'] = error / tf.maximum(spread, 1e-12)
      return total, metrics

    return train_step

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    return image_batches(ctx.train_spec, ctx.section, self.data_dir, start * ctx.section.batch_size)

  def details(self, ctx: Context, stats: Dict[str, Any]) -> Dict[str, Any]:
    return {'pairs': self.pairs, 'shapes': self.shapes, 'adapters': sorted(self.regressors.adapters),
            'resize': ctx.section.resize, 'teacher': self.teacher_info, 'train': stats}  # fmt: skip


def run_distill(cfg: TransferConfig, model_dir: str, progress: bool = True, export: bool = True) -> Dict[str, Any]:
  """The `distill` step: a student regressing the `extract` teacher's layers on `distill.source`, into `distill/`."""
  world_sources(cfg)
  validate_all(cfg.distill)
  teacher, mode, info = load_teacher(cfg)
  spec = cfg.distill.source or cfg.extract.source
  out_dir = os.path.join(model_dir, OUTPUTS['distill'])
  ctx = Context(NAME, cfg.distill, out_dir, out_dir, spec, '', preprocessing=mode, progress=progress, network=teacher)
  return Distillation(cfg.extract.data_dir, info, export).run(ctx)
