"""The config of `mtssl-transfer`: knowledge transfer by clustering (Noroozi et al. 2018, §4).

One `TransferConfig` drives the whole chain, one section per step:

* `extract`: which model (or HOG) makes the features of which images, and how they
  are pooled and sharded;
* `cluster`: k-means on those features (`KMeansConfig`, k=2000 in the paper);
* `assign`: which images get pseudo-labels (the nearest centre), possibly another
  dataset than the clustered one;
* `train`: the target architecture trained to predict the pseudo-labels;
* `probe`: per-layer frozen linear probes of that student on real labels (Table 4);
* `distill`: the distillation baseline (Table 3), a student regressing the teacher's
  conv4-5 (`distill.py`; its own step, not part of `all`).
* `attention`: the attention-transfer baseline (Table 3 "[37]+vgg-Jigsaw++"), a Jigsaw++
  AlexNet matching the teacher's attention maps (`attention.py`; its own step too).

Outputs go under one model_dir: `features/`, `clusters/`, `pseudo_labels/`, `student/`,
`distill/`, `attention/` (see `OUTPUTS`). Data sources left empty read the synthetic world, as `mtssl-eval` does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Iterable, Tuple

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.configs.experiment import PRECISIONS, TrunkConfig
from mtssl_tf.evaluation.backbone import DEFAULT_EVAL_INPUT, EVAL_INPUTS
from mtssl_tf.evaluation.classification import ClassifierTrainingConfig, check_training_fields
from mtssl_tf.train.finetune import LoopConfig, SGDConfig
from mtssl_tf.transfer.attention_config import AttentionConfig
from mtssl_tf.transfer.kmeans import KMeansConfig

FEATURES = ('network', 'hog')
# How HOG becomes one vector per image (`ExtractConfig.hog_encoding`).
HOG_ENCODINGS = ('bag_of_words', 'grid')
POOLINGS = ('max', 'avg')
# What an AlexNet / VGG16 teacher's features are (`ExtractConfig.teacher_features`).
TEACHER_FEATURES = ('section5', 'endpoint')
DTYPES = ('float32', 'float16')
PREPROCESSINGS = EVAL_INPUTS  # As mtssl-eval: colour by default (Doersch §3.3), see evaluation/backbone.py.
# Step -> its folder under model_dir.
OUTPUTS = {'extract': 'features', 'cluster': 'clusters', 'assign': 'pseudo_labels', 'train': 'student',
           'distill': 'distill', 'attention': 'attention'}  # fmt: skip
PROBE_DIR = os.path.join('student', 'probe')
# models.AlexNet's smallest input: conv1, conv2 and conv5 maps must each hold a 3x3 pool window.
ALEXNET_MIN_CROP = 55
# How the distillation baseline brings a teacher map to the student's grid, and where it adds 1x1 adapters.
DISTILL_RESIZES = ('area', 'bilinear', 'max')
DISTILL_ADAPTERS = ('auto', 'always', 'none')


@dataclasses.dataclass
class ExtractConfig(Config):
  """Features of the images to cluster.

  Attributes:
    source: image source spec (`tfrecord:`, `folder:`, `list:`, `tfds:`); '' = the synthetic
      world's training images.
    data_dir: tensorflow-datasets data directory for `tfds:` sources.
    label_offset: subtracted from labels (kept for diagnostics only; 1 for Model Garden ImageNet).
    num_images: images expected, for the progress ETA (0: unknown).
    features: 'network' (a model's activations) or 'hog' (the CC+HOG control).
    init: the model: 'random' (the random-network control, seeded by `seed`), a
      checkpoint, a pre-training run's folder, or a SavedModel folder.
    trunk: shape of the trunk read from a checkpoint or built at random. A run folder's
      own `trunk` section is the default (`load_transfer_config`).
    endpoint: trunk endpoint ('stem', 'block1', 'block2', 'block3', 'block3/unit_NN',
      'final'; an AlexNet / VGG16 trunk's conv endpoints). A SavedModel of ours serves
      'final' and 'block3/unit_NN'. Used for every ResNet-v2 teacher, and for AlexNet /
      VGG16 teachers with `teacher_features: endpoint`.
    teacher_features: the features of an AlexNet or VGG16 teacher (the kind is the run's
      `trunk.kind`): 'section5' (default) is Noroozi et al. 2018 §5, conv4 (AlexNet) /
      conv4_3 (VGG16) max-pooled to 5x5x384 / 4x4x512 (`trunk/teacher_features.py`;
      `endpoint`, `pooling` and `grid` are not used); 'endpoint' pools `endpoint` by
      `pooling` and `grid` instead. ResNet-v2 teachers always use `endpoint` (the
      paper defines no ResNet features; ours: 'final' max-pooled to 4x4).
    signature: SavedModel signature; '' derives it from `endpoint` ('final', 'block3_units').
    output_key: output of that signature; '' derives it from `endpoint`.
    preprocessing: trunk input: 'rgb' colour (default, as the paper evaluates every trunk),
      'harmonized' grey (L replicated), or 'as_trained' (the pre-training run's input).
      A SavedModel of ours preprocesses its uint8 images itself as it was exported, which
      must be this input (else a clear error); a foreign one taking floats gets this.
    precision: Keras dtype policy of a trunk read from a checkpoint.
    pooling: 'max' adaptive max pooling to `grid` x `grid` (the paper's 4x4), or 'avg'
      global average pooling (`grid` ignored). Network features and `hog_encoding: grid`.
    grid: side of the max-pooling grid (1: global max pooling).
    image_size: images are resized to this shorter side...
    crop_size: ...then centre-cropped to this square (deterministic: no augmentation).
    batch_size: images per forward pass.
    shard_size: feature rows per shard file (a shard is the unit of restart).
    dtype: stored feature type; 'float16' halves the disk (ImageNet at 16K dims: 42 GB).
    hog_cell_size: HOG cell side in pixels.
    hog_block_cells: HOG block side in cells (blocks stride by one cell).
    hog_bins: HOG orientation bins (unsigned, 0-180 degrees).
    hog_encoding: 'bag_of_words' (default): Noroozi et al. 2018 cluster "bag of words of
      HOG" (Table 3 caption, §5): every HOG block of a crop is a local descriptor, a
      vocabulary of `hog_words` visual words is fitted by k-means on the descriptors of
      `hog_vocabulary_images` images, and an image is its normalised word histogram
      (`hog.HogBagOfWords`). 'grid' pools the HOG block grid like a network's map
      (`pooling`, `grid`): a named alternative that keeps the spatial layout.
    hog_words: vocabulary size (the paper does not give one; 1000 is a common
      bag-of-words size and keeps ~256 descriptors per word in the k-means sample).
    hog_vocabulary_images: images whose descriptors fit the vocabulary, spread over the
      source when `num_images` is known (every num_images / this-th image), else the first ones.
    seed: initialisation of a random network.
  """

  source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  num_images: int = 0
  features: str = 'network'
  init: str = 'random'
  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  endpoint: str = 'final'
  teacher_features: str = 'section5'
  signature: str = ''
  output_key: str = ''
  preprocessing: str = DEFAULT_EVAL_INPUT
  precision: str = 'float32'
  pooling: str = 'max'
  grid: int = 4
  image_size: int = 256
  crop_size: int = 224
  batch_size: int = 64
  shard_size: int = 10_000
  dtype: str = 'float32'
  hog_cell_size: int = 8
  hog_block_cells: int = 2
  hog_bins: int = 9
  hog_encoding: str = 'bag_of_words'
  hog_words: int = 1000
  hog_vocabulary_images: int = 10_000
  seed: int = 0

  def validate(self) -> None:
    for key, allowed in (('features', FEATURES), ('pooling', POOLINGS), ('dtype', DTYPES),
                         ('preprocessing', PREPROCESSINGS), ('precision', PRECISIONS),
                         ('hog_encoding', HOG_ENCODINGS), ('teacher_features', TEACHER_FEATURES)):  # fmt: skip
      if getattr(self, key) not in allowed:
        raise ConfigError(f'extract.{key}: must be one of {allowed}, got {getattr(self, key)!r}')
    for key in ('grid', 'image_size', 'crop_size', 'batch_size', 'shard_size', 'hog_cell_size', 'hog_block_cells',
                'hog_bins', 'hog_vocabulary_images'):  # fmt: skip
      if getattr(self, key) < 1:
        raise ConfigError(f'extract.{key}: must be positive, got {getattr(self, key)}')
    if self.num_images < 0 or self.label_offset < 0:
      raise ConfigError(f'extract.{"num_images" if self.num_images < 0 else "label_offset"}: must be >= 0')
    if self.image_size < self.crop_size:
      raise ConfigError(f'extract.image_size: must be >= crop_size ({self.crop_size}), got {self.image_size}')
    if self.hog_words < 2:
      raise ConfigError(f'extract.hog_words: need at least 2 visual words, got {self.hog_words}')
    if self.features == 'hog' and self.crop_size < self.hog_cell_size * self.hog_block_cells:
      raise ConfigError(
        f'extract.crop_size: {self.crop_size} px is smaller than one HOG block '
        f'({self.hog_block_cells} x {self.hog_cell_size} px)'
      )
    if not self.init:
      raise ConfigError("extract.init: empty; use 'random' or a checkpoint, run folder or SavedModel")


@dataclasses.dataclass
class AssignConfig(Config):
  """Which images get pseudo-labels, and how they are written.

  Attributes:
    source: image source spec; '' = the clustered images (`extract.source`), whose
      feature shards are reused. Another source is first run through the same
      extractor into `pseudo_labels/features/`.
    data_dir: tensorflow-datasets data directory.
    label_offset: subtracted from the original labels (kept under `image/original_label`).
    reencode_size: 0 writes each image's original bytes; > 0 resizes the shorter side
      to this and re-encodes as JPEG (a smaller copy of a large dataset).
    jpeg_quality: quality of that re-encoding.
  """

  source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  reencode_size: int = 0
  jpeg_quality: int = 90

  def validate(self) -> None:
    if self.reencode_size < 0 or self.label_offset < 0:
      raise ConfigError(f'assign.{"reencode_size" if self.reencode_size < 0 else "label_offset"}: must be >= 0')
    if not 1 <= self.jpeg_quality <= 100:
      raise ConfigError(f'assign.jpeg_quality: must be in [1, 100], got {self.jpeg_quality}')


@dataclasses.dataclass
class StudentConfig(SGDConfig, LoopConfig):
  """The target network trained on the pseudo-labels (SGD and loop fields: `SGDConfig`, `LoopConfig`).

  Attributes:
    architecture: a `models.build_model` name: 'alexnet', 'resnet_v2_trunk', or a
      `tf.keras.applications` class ('ResNet50', 'keras:MobileNetV2', ...; weights=None).
    width: channel and fc-unit multiplier of 'alexnet' (1.0 = CaffeNet's 96-256-384-384-256, 4096).
    batch_norm: 'alexnet' with BatchNorm after every conv and fc layer (our small-world option);
      False is the paper's network (CaffeNet's LRN, `models.AlexNet`).
    dropout: 'alexnet' dropout rate on fc6 and fc7.
    trunk: shape of the 'resnet_v2_trunk' student.
    source: pseudo-labelled images; '' = this run's `pseudo_labels/`.
    num_classes: 0 = the number of clusters.
    image_size: images are resized to this shorter side (256: Caffe's ImageNet images)...
    crop_size: ...then randomly cropped (and flipped) to this square (227: CaffeNet's input).
    flip: random horizontal flips.
    steps: training steps (bvlc_alexnet's solver: 450K at batch 256, ~90 epochs; learning
      rate 0.01 divided by 10 every 100K, weight decay 5e-4 on every kernel).
    batch_size: training batch.
    lr_decay_steps: staircase decay interval.
    shuffle_buffer: decoded images in the shuffle buffer.
    seed: initialisation, data order and crops.
  """

  section: ClassVar[str] = 'train'  # The config key in error messages.
  architecture: str = 'alexnet'
  width: float = 1.0
  batch_norm: bool = False
  dropout: float = 0.5
  trunk: TrunkConfig = dataclasses.field(default_factory=TrunkConfig)
  source: str = ''
  num_classes: int = 0
  image_size: int = 256
  crop_size: int = 227
  flip: bool = True
  steps: int = 450_000
  batch_size: int = 256
  lr_decay_steps: int = 100_000
  shuffle_buffer: int = 1000
  seed: int = 0

  def validate(self) -> None:
    if not self.architecture:
      raise ConfigError(f'{self.section}.architecture: empty; e.g. alexnet, resnet_v2_trunk or ResNet50')
    self.check_loop(self.section)
    self.check_sgd(self.section)
    for key in ('batch_size', 'lr_decay_steps', 'shuffle_buffer'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{self.section}.{key}: must be positive, got {getattr(self, key)}')
    if self.width <= 0:
      raise ConfigError(f'{self.section}.width: must be positive, got {self.width}')
    if not 0 <= self.dropout < 1:
      raise ConfigError(f'{self.section}.dropout: must be in [0, 1), got {self.dropout}')
    if self.num_classes < 0:
      raise ConfigError(f'{self.section}.num_classes: must be >= 0 (0: the number of clusters), got {self.num_classes}')
    if self.crop_size < (ALEXNET_MIN_CROP if self.architecture == 'alexnet' else 32):
      raise ConfigError(f'{self.section}.crop_size: too small for {self.architecture} ({self.crop_size} px)')
    if self.image_size < self.crop_size:
      raise ConfigError(f'{self.section}.image_size: must be >= crop_size ({self.crop_size}), got {self.image_size}')


@dataclasses.dataclass
class ProbeConfig(ClassifierTrainingConfig):
  """Frozen per-layer linear probes of the student on real labels (Noroozi Table 4).

  The labelled-image, SGD and loop fields come from `ClassifierTrainingConfig` (sources
  left empty read the synthetic world).

  Attributes:
    endpoints: student layers to probe; empty = its conv layers (conv1-conv5 for AlexNet).
    max_dims: each layer is max-pooled to the largest square grid under this many
      dimensions (9216, as `linear.probe_grid`).
    feature_norm: non-affine BatchNorm on the pooled features (as `linear`).
    steps: training steps.
    lr_decay_steps: staircase decay interval.
  """

  section: ClassVar[str] = 'probe'  # The config key in error messages.
  endpoints: Tuple[str, ...] = ()
  max_dims: int = 9216
  feature_norm: bool = True
  steps: int = 140_000
  lr_decay_steps: int = 50_000

  def validate(self) -> None:
    check_training_fields(self, self.section)
    for key in ('max_dims', 'lr_decay_steps'):
      if getattr(self, key) < 1:
        raise ConfigError(f'{self.section}.{key}: must be positive, got {getattr(self, key)}')
    if len(set(self.endpoints)) != len(self.endpoints):
      raise ConfigError(f'{self.section}.endpoints: listed twice in {list(self.endpoints)}')


@dataclasses.dataclass
class DistillConfig(StudentConfig):
  """The distillation baseline (Noroozi et al. 2018, §5 "6) Knowledge distillation", Table 3; `distill.py`).

  A student AlexNet (the cluster classifier's class and fields, `StudentConfig`) trained
  to regress the teacher's activations with an L2 loss. The teacher is the model the
  `extract` section names (`extract.init`, `extract.trunk`, `extract.preprocessing`,
  `extract.precision`): the same pre-training run clustering would read.

  Attributes:
    source: images to regress on; '' = `extract.source` (read with `extract.data_dir`).
    num_classes: outputs of the student's fc8, which distillation leaves untrained (0 = 1).
    teacher_endpoints: teacher layers, in `student_endpoints`' order; empty = the kind's
      default (`distill.TEACHER_LAYERS`: AlexNet conv4, conv5 as Noroozi; VGG16 conv4_3,
      conv5_3; ResNet-v2 block2, final).
    student_endpoints: the student layers that regress them (Noroozi: conv4, conv5).
    resize: a teacher map of another spatial size than the student's (a Jigsaw AlexNet's
      stride-2 conv1, VGG16, ResNet-v2) is brought to the student's grid by 'area'
      averaging (our default), 'bilinear' resampling or adaptive 'max' pooling.
    adapter: 'auto' regresses through a learned 1x1 convolution (the "regressor" of
      FitNets, Romero et al. 2015) where the student layer has another channel count
      than the teacher's; 'always' on every layer; 'none' makes differing channels an error.
  """

  section: ClassVar[str] = 'distill'
  teacher_endpoints: Tuple[str, ...] = ()
  student_endpoints: Tuple[str, ...] = ('conv4', 'conv5')
  resize: str = 'area'
  adapter: str = 'auto'

  def validate(self) -> None:
    if self.architecture != 'alexnet':
      raise ConfigError(f"distill.architecture: the distillation student is an 'alexnet', got {self.architecture!r}")
    super().validate()
    for key, allowed in (('resize', DISTILL_RESIZES), ('adapter', DISTILL_ADAPTERS)):
      if getattr(self, key) not in allowed:
        raise ConfigError(f'distill.{key}: must be one of {allowed}, got {getattr(self, key)!r}')
    if not self.student_endpoints or len(set(self.student_endpoints)) != len(self.student_endpoints):
      raise ConfigError(f'distill.student_endpoints: need distinct layers, got {list(self.student_endpoints)}')
    if self.teacher_endpoints and len(self.teacher_endpoints) != len(self.student_endpoints):
      raise ConfigError(f'distill.teacher_endpoints: {list(self.teacher_endpoints)} must pair one to one with '
                        f'student_endpoints {list(self.student_endpoints)}')  # fmt: skip


@dataclasses.dataclass
class TransferConfig(Config):
  """Root config of `mtssl-transfer` (see the module docstring).

  Attributes:
    world_preset: synthetic world read by sources left empty.
    world_dir: where that world lives (empty: ~/.cache/mtssl_tf/world_<preset>).
    extract: the features to cluster.
    cluster: k-means.
    assign: the pseudo-labelled images.
    train: the student.
    probe: the student's evaluation.
    distill: the distillation baseline's student.
    attention: the attention-transfer baseline's Jigsaw++ student (`attention_config.py`).
  """

  world_preset: str = 'small'
  world_dir: str = ''
  extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)
  cluster: KMeansConfig = dataclasses.field(default_factory=KMeansConfig)
  assign: AssignConfig = dataclasses.field(default_factory=AssignConfig)
  train: StudentConfig = dataclasses.field(default_factory=StudentConfig)
  probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
  distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
  attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)


def load_transfer_config(files: Iterable[str] = (), overrides: Iterable[str] = ()) -> TransferConfig:
  """Defaults, then the init run's trunk section (as `extract.trunk`), then YAML files, then overrides.

  Args:
    files: YAML files applied in order.
    overrides: `key.path=value` strings.

  Raises:
    ConfigError: a bad key, type or value (named), or an `extract.init` that does not exist.
  """
  from mtssl_tf.evaluation import backbone

  return backbone.load_layered(TransferConfig(), files, overrides, 'extract.init')


WORLD_PREFIX = 'world:'


def world_sources(cfg: TransferConfig) -> TransferConfig:
  """Fills the synthetic world's sources (generated on first use); returns `cfg`.

  Empty image sources read the world's classification images; a source written
  `world:<name>` reads the world's source `<name>` (e.g. `world:scene_images`, its
  multi-object scenes: the second domain of Noroozi's Table 2 at miniature scale;
  `train.source=world:images_train` trains the student on the real labels instead).

  Raises:
    ConfigError: a `world:` name the world does not have (the message lists them).
  """
  keys = ('extract.source', 'assign.source', 'train.source', 'probe.train_source', 'probe.validation_source',
          'distill.source', 'attention.source')  # fmt: skip
  values = {k: getattr(getattr(cfg, k.split('.')[0]), k.split('.')[1]) for k in keys}
  needs_world = any(v.startswith(WORLD_PREFIX) for v in values.values()) or not (
    values['extract.source'] and values['probe.train_source'] and values['probe.validation_source']
  )
  if not needs_world:
    return cfg
  from absl import logging

  from mtssl_tf.data.synthetic.world import default_world_dir, make_world

  world_dir = cfg.world_dir or default_world_dir(cfg.world_preset)
  logging.info('transfer: world sources read the synthetic world in %s', world_dir)
  sources = make_world(world_dir, cfg.world_preset)['sources']
  for key, value in values.items():
    if value.startswith(WORLD_PREFIX):
      name = value[len(WORLD_PREFIX) :]
      if name not in sources:
        raise ConfigError(f'{key}: the synthetic world has no source {name!r}; it has {sorted(sources)}')
      section, field = key.split('.')
      setattr(getattr(cfg, section), field, sources[name])
  cfg.extract.source = cfg.extract.source or sources['images_train']
  cfg.probe.train_source = cfg.probe.train_source or sources['images_train']
  cfg.probe.validation_source = cfg.probe.validation_source or sources['images_validation']
  return cfg
