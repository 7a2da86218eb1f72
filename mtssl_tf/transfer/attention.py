"""Attention transfer into a Jigsaw++ AlexNet (Noroozi et al. 2018, §5 "6) Knowledge distillation", Table 3).

Noroozi et al. compare cluster classification with Zagoruyko & Komodakis 2017 ("Paying
more attention to attention", ICLR; their [37]): "We use the Jigsaw++ network trained on
VGG as the teacher network and minimize eq. (5) of [37] on AlexNet (the student), where L
has been replaced by the Jigsaw++ loss" (Table 3 "[37]+vgg-Jigsaw++": 70.6 VOC07 cls.
mAP, 54.8 / 55.2 det. SS / MS, 38.0 seg.; CC+vgg-Jigsaw++ 72.5, Jigsaw++ on AlexNet 69.8).

* Loss (szagoruyko/attention-transfer, `utils.py` `at` / `at_loss` and `cifar.py` /
  `imagenet.py` at commit 893df54; README: `--beta 1e+3`): the Jigsaw++ loss (`tasks.jigsaw`:
  softmax cross-entropy over the permutations) + `beta` x the sum over layer pairs j of
  mean_{tiles, positions} (Q_S^j / ||Q_S^j||_2 - Q_T^j / ||Q_T^j||_2)^2, where Q = vec(F(A))
  per tile and F(A) = the mean over channels of |A_c|^p, p = 2. The paper writes F as a sum
  over channels (the same after normalisation) and the term as beta/2 times the p-norm of
  the difference with "beta = 10^3 divided by the number of elements in the attention map
  and batch size"; the released code (which its README says reproduces the paper's CIFAR
  numbers exactly) squares the difference, averages it over batch and positions (that is
  the division) and weights it by beta without the 1/2: we follow the code. Normalisation
  divides by max(||Q||_2, 1e-12) (`F.normalize`'s eps).
* Student: Jigsaw++ as `mtssl-train` trains it on AlexNet (`tasks.jigsaw`, `trunk.alexnet`
  variant 'jigsaw': conv1 stride 2 on 64 px tiles, the context-free network of
  train_val_cfn_jps++.prototxt), i.e. a `MultiTaskModel` of that trunk and the Jigsaw head,
  trained by the authors' Jigsaw solver (solver_cfn_jps.prototxt: SGD 0.01, momentum 0.9,
  weight decay 5e-4 on weights only, biases at twice the rate, x0.1 every 100K of 350K
  steps), with the attention term added. The tiles are the unit of attention: each of the
  nine tiles of a puzzle is one image for both networks.
* Teacher: the model `extract` names (`distill.load_teacher`: any trunk kind through
  `backbone.load_trunk`; Noroozi's is a VGG16 Jigsaw++ run), frozen, in inference mode, on
  the student's tiles, rescaled to the teacher run's own `tile_scale` (its tiles are
  normalised per tile like the student's, then multiplied by that scale).
* Layer pairs (`TEACHER_LAYERS`, our choice: neither paper pairs AlexNet with VGG16):
  student conv3, conv4, conv5 (the three 13x13 layers at 227 px, 6x6 on 64 px tiles) with
  the last conv of the teacher's blocks 3-5, VGG16 conv3_3, conv4_3, conv5_3 (§5 takes conv4_3
  as VGG16's "conv4", as `distill.TEACHER_LAYERS`); an AlexNet teacher: conv3-conv5; a
  ResNet-v2 teacher: block1, block2, final. Zagoruyko & Komodakis pair layers of equal
  resolution; these differ (on 64 px tiles: 6x6 student maps, 16x16, 8x8 and 4x4 VGG16
  maps), so each pair's larger attention map F(A) is area-averaged to the smaller one's
  grid before normalisation (`resize`; pooling the larger map to the smaller is
  HobbitLong/RepDistiller's rule for AT across resolutions).
* Output (`<model_dir>/attention/`): a pre-training run of the student, as `mtssl-train`
  writes one: `config.yaml` (its `trunk` and `tasks.jigsaw`), `checkpoints/` holding the
  `MultiTaskModel` as `model` (the trunk at `model/trunk`), `saved_model/` (the trunk,
  `mtssl-export`'s signatures), TensorBoard scalars `attention/<metric>` and results.json.
  Every evaluation reads it as it reads a Jigsaw++ AlexNet run: `mtssl-eval --eval=voc07_cls
  --init=<model_dir>/attention` copies conv1-conv5 into the standard AlexNet on whole
  images (Noroozi §5: "the weights of the convolutional layers of the target AlexNet model
  are copied"; the stride-2 conv1 weights fit the stride-4 conv1), fc layers new. There is
  no student.json: the folder is a trunk run, not a CaffeNet student.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError, save_config, to_plain, validate_all
from mtssl_tf.configs.experiment import LassoConfig, TrunkConfig
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.protocol import Context, Trainee
from mtssl_tf.export import saved_model
from mtssl_tf.tasks.jigsaw import JigsawTask
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.transfer.attention_config import AttentionConfig
from mtssl_tf.transfer.config import OUTPUTS, TransferConfig, world_sources
from mtssl_tf.transfer.distill import load_teacher, paired_teacher_layers, resize_map
from mtssl_tf.transfer.student import StudentTraining
from mtssl_tf.trunk import registry

NAME = 'attention'
TASK = 'jigsaw'
# `F.normalize`'s default eps (szagoruyko/attention-transfer `utils.at`): the norm is max(||Q||_2, eps).
NORM_EPS = 1e-12
# Teacher layers whose attention the student's conv3, conv4, conv5 match, per teacher kind (module docstring).
TEACHER_LAYERS: Dict[str, Tuple[str, ...]] = {
  'vgg16': ('conv3_3', 'conv4_3', 'conv5_3'),
  'alexnet': ('conv3', 'conv4', 'conv5'),
  'resnet_v2': ('block1', 'block2', 'final'),
}


def teacher_layers(cfg: AttentionConfig, kind: str) -> Tuple[str, ...]:
  """`cfg.teacher_endpoints`, or the kind's default (`TEACHER_LAYERS`); errors as `distill.paired_teacher_layers`."""
  return paired_teacher_layers(NAME, cfg.teacher_endpoints, cfg.student_endpoints, TEACHER_LAYERS, kind)


def attention_map(x: tf.Tensor, p: float = 2.0) -> tf.Tensor:
  """F(A): [B, H, W, C] activations -> [B, H, W, 1], the mean over channels of |A_c|^p, in float32."""
  x = tf.abs(tf.cast(x, tf.float32))
  return tf.reduce_mean(x * x if p == 2.0 else tf.pow(x, p), axis=-1, keepdims=True)


def normalized(q: tf.Tensor) -> tf.Tensor:
  """[B, H, W, 1] maps -> [B, H*W], each row divided by max(its L2 norm, `NORM_EPS`)."""
  flat = tf.reshape(q, [-1, q.shape[1] * q.shape[2]])
  norm = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1, keepdims=True))
  return flat / tf.maximum(norm, NORM_EPS)


def common_grid(student: Tuple[int, int], teacher: Tuple[int, int]) -> Tuple[int, int]:
  """The smaller grid of a pair, per axis (the larger map is pooled to it)."""
  return min(student[0], teacher[0]), min(student[1], teacher[1])


def at_loss(student: tf.Tensor, teacher: tf.Tensor, p: float = 2.0, resize: str = 'area') -> tf.Tensor:
  """One pair's attention-transfer term: mean over images and positions of the squared normalised-map difference.

  Args:
    student: [B, H, W, C] student activations.
    teacher: [B, H', W', C'] teacher activations of the same images.
    p: F's exponent.
    resize: how the larger map reaches the common grid (`distill.resize_map`'s methods).
  """
  qs, qt = attention_map(student, p), attention_map(teacher, p)
  grid = common_grid(tuple(qs.shape[1:3]), tuple(qt.shape[1:3]))
  qs, qt = resize_map(qs, grid, resize), resize_map(qt, grid, resize)
  return tf.reduce_mean(tf.square(normalized(qs) - normalized(qt)))


def teacher_tile_scale(cfg: TransferConfig) -> float:
  """What the teacher's normalised tiles are multiplied by: `attention.teacher_tile_scale`, else its run's own.

  Raises:
    ConfigError: the teacher run saw harmonized tiles and the student's do not (or the reverse).
  """
  a = cfg.attention
  jigsaw = {}
  if backbone.resolve_source(cfg.extract.init)[0] != backbone.RANDOM:
    jigsaw = backbone.run_config_section(cfg.extract.init, 'tasks').get('jigsaw') or {}
  harmonized = bool(jigsaw.get('harmonize', False))
  if harmonized != a.jigsaw.harmonize:
    raise ConfigError(f'attention.jigsaw.harmonize: {a.jigsaw.harmonize}, but the teacher {cfg.extract.init} was '
                      f'trained with harmonize {harmonized}: both must see the same tiles')  # fmt: skip
  return a.teacher_tile_scale or float(jigsaw.get('tile_scale', 1.0))


def student_trunk_config(cfg: AttentionConfig) -> TrunkConfig:
  """The student's trunk section: an AlexNet of `cfg.student`."""
  trunk = TrunkConfig()
  trunk.kind, trunk.alexnet = 'alexnet', cfg.student
  return trunk


class AttentionTransfer(StudentTraining):
  """A Jigsaw++ AlexNet trained with attention transfer from a frozen teacher (module docstring).

  The context's network is the teacher (a built trunk returning named endpoints), its
  `out_dir` the student run (`<model_dir>/attention`), its `train_spec` the images the
  puzzles are cut from. Results: steps, first and last log window means (loss, jigsaw_loss,
  accuracy, at, at_<layer>), the pairs and shapes, teacher, checkpoint, saved_model.

  Args:
    data_dir: tensorflow-datasets directory of the images.
    teacher_info: what the teacher is, recorded in results.json.
    teacher_scale: the teacher's tile scale (`teacher_tile_scale`).
    export: write the SavedModel at the end.
  """

  name = NAME
  summary = 'a Jigsaw++ AlexNet with attention transfer from a teacher (mtssl-transfer attention)'
  config_class = AttentionConfig
  summary_name = NAME
  window_keys = None
  log_keys = ('loss', 'jigsaw_loss', 'accuracy', 'at')
  empty_message = 'the image source yields no batch (fewer images than jigsaw.batch_size?)'

  def __init__(self, data_dir: str = '', teacher_info: Optional[Dict[str, Any]] = None, teacher_scale: float = 1.0,
               export: bool = True):  # fmt: skip
    super().__init__(export=export)
    self.data_dir, self.teacher_info, self.teacher_scale = data_dir, teacher_info or {}, teacher_scale

  def build(self, ctx: Context) -> Trainee:
    cfg: AttentionConfig = ctx.section
    tf.io.gfile.makedirs(ctx.out_dir)
    tf.keras.utils.set_random_seed(cfg.seed)
    self.windows = []
    trunk_config = student_trunk_config(cfg)
    problem = JigsawTask.trunk_problem(cfg.jigsaw, trunk_config)
    if problem:
      raise ConfigError(f'attention.jigsaw: the student AlexNet cannot solve these puzzles: {problem}')
    self.task = JigsawTask(cfg.jigsaw, registry.fixed_stride(trunk_config), trunk_config)
    self.model = MultiTaskModel(trunk_config, {TASK: self.task}, LassoConfig(), 'float32')
    t = cfg.jigsaw.tile_size
    blank = {'tiles': tf.zeros([1, 9, t, t, 3]), 'label': tf.zeros([1], tf.int32)}
    self.model.build_all({TASK: blank})
    tiles = self.task.trunk_images(blank)
    student_maps = self.model.trunk(tiles, training=False)
    teacher, kind = ctx.trunk(), getattr(ctx.trunk(), 'kind', 'resnet_v2')
    teacher_maps = teacher(tiles, training=False)
    self.pairs = dict(zip(cfg.student_endpoints, teacher_layers(cfg, kind)))
    for source in self.pairs.values():
      if source not in teacher_maps or teacher_maps[source].shape.rank != 4:
        raise ConfigError(f'attention.teacher_endpoints: the {kind} teacher has no feature map {source!r} '
                          f'({sorted(k for k, v in teacher_maps.items() if v.shape.rank == 4)})')  # fmt: skip
    self.shapes = {}
    for layer, source in self.pairs.items():
      s, te = student_maps[layer].shape.as_list()[1:], teacher_maps[source].shape.as_list()[1:]
      self.shapes[layer] = {'student': s, 'teacher': te, 'grid': list(common_grid(tuple(s[:2]), tuple(te[:2])))}
    # The run's config.yaml, as mtssl-train writes it: every reader of a pre-training run finds its trunk and task.
    run = ExperimentConfig()
    run.trunk = trunk_config
    run.tasks.jigsaw = dataclasses.replace(cfg.jigsaw, enabled=True)
    save_config(run, ctx.out_dir)
    return Trainee({'model': self.model}, self.model.task_variables(TASK))

  def make_step(self, ctx: Context, trainee: Trainee, optimizer) -> Callable:
    """The tf.function update: Jigsaw++ loss + beta x the summed AT terms; Caffe's weight decay and bias rate."""
    cfg: AttentionConfig = ctx.section
    model, task, teacher, pairs = self.model, self.task, ctx.trunk(), self.pairs
    head = model.heads[TASK]
    variables = list(trainee.variables)
    kernels = [v for v in variables if 'kernel' in v.name]
    # Caffe's lr_mult 2 on biases: with momentum SGD, scaling a gradient scales its step (v = m v + lr g).
    mults = [cfg.bias_lr_mult if v.name.split('/')[-1].startswith('bias') else 1.0 for v in variables]
    ratio = self.teacher_scale / cfg.jigsaw.tile_scale

    @tf.function
    def train_step(batch):
      tiles = task.trunk_images(batch)
      taught = teacher(tiles * ratio if ratio != 1.0 else tiles, training=False)
      taught = {s: tf.stop_gradient(taught[s]) for s in pairs.values()}
      with tf.GradientTape() as tape:
        endpoints = model.trunk(tiles, training=True)
        logits = head(endpoints['final'], training=True)
        jigsaw_loss = task.loss(logits, batch)
        terms = {k: at_loss(endpoints[k], taught[s], cfg.p, cfg.resize) for k, s in pairs.items()}
        at = cfg.beta * tf.add_n(list(terms.values()))
        loss = jigsaw_loss + at
        total = loss + cfg.weight_decay * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
      grads = tape.gradient(total, variables)
      optimizer.apply_gradients([(g * m if m != 1.0 else g, v) for g, m, v in zip(grads, mults, variables)])
      metrics = {'loss': loss, 'jigsaw_loss': jigsaw_loss, 'at': at}
      metrics.update(task.batch_metrics(logits, batch))
      metrics.update({f'at_{k}': term for k, term in terms.items()})
      return total, metrics

    return train_step

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    cfg: AttentionConfig = ctx.section
    # A resumed run reshuffles differently rather than replaying the first run's order (as distill's images).
    options = ReadOptions(shuffle_files=True, seed=cfg.seed + start, data_dir=self.data_dir or None)
    return self.task.dataset(options, ctx.train_spec, seed=cfg.seed + start, repeat=True)

  def export_model(self, ctx: Context, export_dir: str) -> None:
    """Writes the trunk's SavedModel, `mtssl-export`'s signatures."""
    saved_model.export(self.model, export_dir, 'rgb', image_size=ctx.section.export_image_size)

  def details(self, ctx: Context, stats: Dict[str, Any]) -> Dict[str, Any]:
    """Layer pairs and shapes, the loss's constants, both networks and the run's statistics."""
    cfg: AttentionConfig = ctx.section
    return {
      'pairs': self.pairs,
      'shapes': self.shapes,
      'beta': cfg.beta,
      'p': cfg.p,
      'resize': cfg.resize,
      'tile_scale': {'student': cfg.jigsaw.tile_scale, 'teacher': self.teacher_scale},
      'student': to_plain(student_trunk_config(cfg)),
      'teacher': self.teacher_info,
      'train': stats,
    }


def run_attention(cfg: TransferConfig, model_dir: str, progress: bool = True, export: bool = True) -> Dict[str, Any]:
  """The `attention` step: a Jigsaw++ AlexNet with attention transfer from the `extract` teacher, into `attention/`."""
  world_sources(cfg)
  validate_all(cfg.attention)
  scale = teacher_tile_scale(cfg)
  teacher, mode, info = load_teacher(cfg)
  spec = cfg.attention.source or cfg.extract.source
  out_dir = os.path.join(model_dir, OUTPUTS[NAME])
  ctx = Context(NAME, cfg.attention, out_dir, out_dir, spec, '', preprocessing=mode, progress=progress, network=teacher)
  return AttentionTransfer(cfg.extract.data_dir, info, scale, export).run(ctx)
