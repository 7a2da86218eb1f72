"""The config of the attention-transfer baseline (Noroozi et al. 2018, Table 3 "[37]+vgg-Jigsaw++"; `attention.py`).

Its own module so `transfer/config.py` only names it (`TransferConfig.attention`); every
constant's source is in `attention.py`'s docstring.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Tuple

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.configs.experiment import AlexNetConfig
from mtssl_tf.tasks.jigsaw import JigsawConfig
from mtssl_tf.train.finetune import LoopConfig, SGDConfig

# How an attention map of one grid is brought to the pair's common grid (`distill.resize_map`'s methods).
ATTENTION_RESIZES = ('area', 'bilinear', 'max')


def _jigsaw_student() -> AlexNetConfig:
  # The AlexNet tile network Jigsaw++ trains on (JigsawPuzzleSolver's train_val_cfn_jps++.prototxt).
  return AlexNetConfig(variant='jigsaw')


@dataclasses.dataclass
class AttentionConfig(SGDConfig, LoopConfig):
  """A Jigsaw++ AlexNet trained with attention transfer from the `extract` teacher (`attention.py`).

  The student solves Jigsaw++ (the task's puzzles, head and loss: `jigsaw`) and matches the
  teacher's normalised activation-based attention maps on the same tiles (Zagoruyko &
  Komodakis 2017). The teacher is the model `extract` names (`extract.init`, `.trunk`,
  `.precision`), frozen. SGD and loop fields: `SGDConfig`, `LoopConfig`.

  Attributes:
    source: images the puzzles are cut from; '' = `extract.source` (read with `extract.data_dir`).
    jigsaw: the student's Jigsaw++ task (crop, tiles, permutations, head, `batch_size` puzzles
      per step); its `data` section is not read (`source` is), so `jigsaw.data.source` must stay empty.
    student: the student's AlexNet ('jigsaw' variant: stride-2 conv1 on the tiles, the network
      Noroozi train Jigsaw++ on; `width` / `batch_norm` are our small-world options).
    student_endpoints: student layers whose attention maps are transferred.
    teacher_endpoints: teacher layers, in `student_endpoints`' order; empty = the teacher
      kind's default (`attention.TEACHER_LAYERS`).
    beta: weight of the attention term (szagoruyko/attention-transfer's `--beta 1e+3`).
    p: exponent of the attention map F(A) = sum_c |A_c|^p (the paper's experiments: 2).
    resize: how the larger map of a pair is brought to the smaller one's grid: 'area'
      averaging (default), 'bilinear' or adaptive 'max' pooling.
    teacher_tile_scale: what the teacher's tiles are multiplied by after per-tile
      normalisation; 0 = the teacher run's own `tasks.jigsaw.tile_scale` (its config.yaml;
      1 without one). The student's tiles use `jigsaw.tile_scale`.
    bias_lr_mult: learning-rate multiplier of biases (train_val_cfn_jps++.prototxt: lr_mult 2;
      biases are never decayed: decay_mult 0).
    steps: training steps (solver_cfn_jps.prototxt: max_iter 350K at 256 puzzles).
    lr_decay_steps: staircase decay interval (stepsize 100K, gamma = `lr_decay_factor`).
    export_image_size: side of the images the exported SavedModel takes (0: the tile
      network's own 64 px, as `mtssl-export`).
    seed: initialisation, data order and puzzles.
  """

  section: ClassVar[str] = 'attention'
  source: str = ''
  jigsaw: JigsawConfig = dataclasses.field(default_factory=JigsawConfig)
  student: AlexNetConfig = dataclasses.field(default_factory=_jigsaw_student)
  student_endpoints: Tuple[str, ...] = ('conv3', 'conv4', 'conv5')
  teacher_endpoints: Tuple[str, ...] = ()
  beta: float = 1000.0
  p: float = 2.0
  resize: str = 'area'
  teacher_tile_scale: float = 0.0
  bias_lr_mult: float = 2.0
  steps: int = 350_000
  lr_decay_steps: int = 100_000
  export_image_size: int = 0
  seed: int = 0

  def validate(self) -> None:
    s = self.section
    self.check_loop(s)
    self.check_sgd(s)
    if self.lr_decay_steps < 1:
      raise ConfigError(f'{s}.lr_decay_steps: must be positive, got {self.lr_decay_steps}')
    if self.resize not in ATTENTION_RESIZES:
      raise ConfigError(f'{s}.resize: must be one of {ATTENTION_RESIZES}, got {self.resize!r}')
    if self.beta < 0 or self.p <= 0:
      raise ConfigError(f'{s}.{"beta" if self.beta < 0 else "p"}: need beta >= 0 and p > 0, got {self.beta}, {self.p}')
    for key, bad in (('teacher_tile_scale', self.teacher_tile_scale < 0), ('bias_lr_mult', self.bias_lr_mult <= 0),
                     ('export_image_size', self.export_image_size < 0)):  # fmt: skip
      if bad:
        raise ConfigError(f'{s}.{key}: must be {"> 0" if key == "bias_lr_mult" else ">= 0"}, got {getattr(self, key)}')
    if self.jigsaw.data.source:
      raise ConfigError(f'{s}.jigsaw.data.source: not read; name the images in {s}.source')
    if not self.student_endpoints or len(set(self.student_endpoints)) != len(self.student_endpoints):
      raise ConfigError(f'{s}.student_endpoints: need distinct layers, got {list(self.student_endpoints)}')
    unknown = [e for e in self.student_endpoints if e not in self.student.endpoints()]
    if unknown:
      raise ConfigError(f'{s}.student_endpoints: AlexNet has no {unknown} (has {list(self.student.endpoints())})')
    if self.teacher_endpoints and len(self.teacher_endpoints) != len(self.student_endpoints):
      raise ConfigError(f'{s}.teacher_endpoints: {list(self.teacher_endpoints)} must pair one to one with '
                        f'student_endpoints {list(self.student_endpoints)}')  # fmt: skip
