"""The interface every self-supervised task implements, and its shared config.

A task owns everything that is specific to it (Doersch & Zisserman 2017, §3):
its tf.data preprocessing (pure TF, so it runs on ParameterServerStrategy workers),
how its examples become a trunk batch, its subclassed Keras head, its loss, its
metrics and its TensorBoard images. The multi-task model and the trainers only call
this interface, so adding a task is one module, its test and an entry in
`mtssl_tf.tasks.TASKS` (its `TasksConfig` field follows from `config_class`): never a
trainer change.

Randomness in preprocessing is stateless and seeded per example (`seed` is an
int32 [2] tensor), so the same example gets the same augmentation eagerly and inside
tf.data, and a run is reproducible.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, Dict, List, Optional, Type

import tensorflow as tf

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.data import images, pipeline
from mtssl_tf.trunk import registry


@dataclasses.dataclass
class DataConfig(Config):
  """Where a task reads its examples.

  Attributes:
    source: a source spec (`tfrecord:<glob>`, `folder:<dir>`, `list:<file>@<root>`, `tfds:<name>:<split>`);
      empty means the synthetic world's default for the task.
    data_dir: tensorflow-datasets directory (nothing is downloaded).
    label_offset: subtracted from stored labels (1 for Model Garden ImageNet).
    shuffle_buffer: examples in the shuffle buffer; 0 disables shuffling.
  """

  source: str = ''
  data_dir: str = ''
  label_offset: int = 0
  shuffle_buffer: int = 256

  def validate(self) -> None:
    if self.shuffle_buffer < 0:
      raise ConfigError(f'data.shuffle_buffer: must be >= 0, got {self.shuffle_buffer}')


@dataclasses.dataclass
class TaskConfig(Config):
  """Fields every task has. Task configs subclass this and add their own.

  Attributes:
    enabled: train this task.
    batch_size: examples per step for one worker (a relative-position example is a
      pair of patches, a jigsaw example nine tiles).
    harmonize: feed the trunk colorization's input (Lab, a and b dropped, L
      replicated to three channels; Doersch §3.3) instead of the task's own colour
      handling.
    data: the task's input source.
    workers: size of this task's worker pool in distributed training.
    aggregate_steps: K_t, worker steps whose gradients are averaged into one update
      of this task (the paper's hybrid scheme; 1 = asynchronous).
    cost_per_step: compute cost of one step (e.g. GPU-hours), for compute accounting.
  """

  enabled: bool = False
  batch_size: int = 16
  harmonize: bool = False
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  workers: int = 1
  aggregate_steps: int = 1
  cost_per_step: float = 1.0

  def validate(self) -> None:
    if self.batch_size < 1:
      raise ConfigError(f'batch_size: must be positive, got {self.batch_size}')
    if self.workers < 1:
      raise ConfigError(f'workers: an enabled task needs at least one worker, got {self.workers}')
    if self.aggregate_steps < 1:
      raise ConfigError(f'aggregate_steps: must be >= 1, got {self.aggregate_steps}')
    if self.cost_per_step < 0:
      raise ConfigError(f'cost_per_step: must be >= 0, got {self.cost_per_step}')


class Task(abc.ABC):
  """A self-supervised task. Subclasses set `name` and `config_class` (its field in `TasksConfig`)."""

  name: ClassVar[str]
  config_class: ClassVar[Type[TaskConfig]]
  # The task feeds the trunk colorization's input whatever `harmonize` says (colorization).
  ALWAYS_HARMONIZED: ClassVar[bool] = False
  # The synthetic world's source (a key of `make_world(...)['sources']`) the task reads when
  # its `data.source` is empty: still images by default, video clips for motion segmentation.
  WORLD_SOURCE: ClassVar[str] = 'images_train'
  # The head predicts a map aligned with the input at `output_stride` (one label cell per
  # feature cell): on a trunk of fixed stride the final map must then be exactly input / stride.
  DENSE_OUTPUT: ClassVar[bool] = False

  def __init__(self, config: TaskConfig, trunk_output_stride: int = 16, trunk: Optional[TrunkConfig] = None):
    """Creates the task.

    Args:
      config: the task's config (an instance of `config_class`).
      trunk_output_stride: the trunk's output stride (a fixed-stride trunk's own, `build_tasks`).
      trunk: the trunk the task's head sits on (heads follow its kind); None: the default ResNet-v2.
    """
    self.config = config
    self.trunk_output_stride = trunk_output_stride
    self.trunk_config = trunk if trunk is not None else TrunkConfig()

  @classmethod
  @abc.abstractmethod
  def trunk_input_size(cls, config: TaskConfig) -> int:
    """Side of the square images this task sends through the trunk (static, e.g. a tile or a crop)."""

  @classmethod
  def trunk_problem(cls, config: TaskConfig, trunk: TrunkConfig) -> Optional[str]:
    """Why this task cannot train on `trunk`, or None when it can (checked by `tasks.check_trunk`).

    Every task needs its input to reach the trunk's final endpoint; a dense task on a trunk of
    fixed stride (AlexNet / VGG16) also needs that stride to be its own `output_stride` and the
    final map to be exactly input / stride (VGG16's padded convs give that, AlexNet's unpadded
    ones do not).
    """
    size = cls.trunk_input_size(config)
    try:
      final = registry.final_size(trunk, size)
    except ValueError as e:
      return f'its {size} px inputs are too small: {e}'
    stride = registry.fixed_stride(trunk)
    if not cls.DENSE_OUTPUT or stride is None:
      return None
    wanted = getattr(config, 'output_stride', stride)
    if stride != wanted:
      return f"its output_stride is {wanted} but the trunk's final endpoint has a fixed stride of {stride}"
    if final * stride != size:
      return f'the trunk maps its {size} px inputs to {final} px, not the {size // stride} px its labels need'
    return None

  @property
  def trunk_kind(self) -> str:
    """The kind of trunk the head sits on (`TrunkConfig.kind`)."""
    return self.trunk_config.kind

  @property
  def output_stride(self) -> int:
    """The output stride this task runs the shared trunk at (colorization: 8)."""
    return self.trunk_output_stride

  @property
  def harmonized_input(self) -> bool:
    """The trunk sees colorization's input (Lab L replicated) rather than RGB."""
    return self.ALWAYS_HARMONIZED or self.config.harmonize

  @classmethod
  def world_source(cls, world_sources: Dict[str, str]) -> str:
    """This task's default source in a synthetic world's `sources` (`WORLD_SOURCE`).

    Raises:
      KeyError: the world has no such source (the message names the task and the key).
    """
    if cls.WORLD_SOURCE not in world_sources:
      raise KeyError(
        f'{cls.name}: the synthetic world has no {cls.WORLD_SOURCE!r} source (has {sorted(world_sources)})'
      )
    return world_sources[cls.WORLD_SOURCE]

  # ----- input pipeline (workers) -----

  def read(self, read_options: images.ReadOptions, default_source: str) -> tf.data.Dataset:
    """Raw examples for this task. Default: decoded images from `config.data.source`."""
    return images.image_dataset(self.config.data.source or default_source, read_options)

  @abc.abstractmethod
  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """One raw example -> one training example (fixed shapes, ready to batch).

    Args:
      example: a reader's dict (e.g. {'image': uint8 [H, W, 3], 'label': int64}).
      seed: int32 [2] stateless seed for this example.

    Returns:
      Dict of tensors with static shapes.
    """

  def dataset(
    self, read_options: images.ReadOptions, default_source: str = '', seed: int = 0, repeat: bool = True
  ) -> tf.data.Dataset:
    """The batched training dataset of this task (pure TF; safe on PSS workers).

    Args:
      read_options: sharding and reader options.
      default_source: source used when the config leaves `data.source` empty.
      seed: base seed; example i is preprocessed with seed (seed, i).
      repeat: repeat forever (training) or read one epoch.

    Returns:
      Batches of `preprocess` outputs plus `num_skipped`, `config.batch_size` each.
    """
    ds = self.read(read_options, default_source)
    if repeat:
      ds = ds.repeat()
    if self.config.data.shuffle_buffer:
      ds = ds.shuffle(self.config.data.shuffle_buffer, seed=seed)
    ds = self.combine(ds)

    def prepare(index, example):
      out = self.prepare(example, tf.stack([tf.constant(seed, tf.int64), index]))
      out[pipeline.SKIPPED_KEY] = example[pipeline.SKIPPED_KEY]
      out[pipeline.SKIPPED_SOURCES_KEY] = example[pipeline.SKIPPED_SOURCES_KEY]
      return out

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=read_options.deterministic)
    ds = ds.batch(self.config.batch_size, drop_remainder=True)
    if type(self).finish_batch is not Task.finish_batch:
      ds = ds.map(self.finish_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=read_options.deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)

  def prepare(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The per-example part of `preprocess`, which `dataset` maps before batching. Default: all of it.

    A task that overrides it also overrides `finish_batch`, and its `preprocess` must equal
    `finish_batch` of a batch of one `prepare` output.
    """
    return self.preprocess(example, seed)

  def finish_batch(self, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The rest of `preprocess`, over a batch of `prepare` outputs at once (fewer, larger ops). Default: none."""
    return batch

  def combine(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Hook between shuffling and `preprocess`, for tasks whose example needs several images.

    Default: unchanged. Jigsaw++ pairs each image with the previous one (its occluders).
    """
    return ds

  # ----- model side (trainers call these) -----

  def trunk_images(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The images this batch sends through the trunk, [N, H, W, 3] float."""
    return batch['image']

  @abc.abstractmethod
  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    """The task's head: a Keras layer mapping trunk features [N, h, w, C] to outputs.

    Args:
      dtype: Keras dtype policy name ('mixed_bfloat16' for mixed precision); the head
        passes it to its sub-layers.
    """

  @abc.abstractmethod
  def loss(self, outputs, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Scalar float32 loss of a batch (mean over examples)."""

  def metrics(self) -> Dict[str, tf.keras.metrics.Metric]:
    """Fresh metric objects, keyed by the name after `<task>/` in TensorBoard."""
    return {'loss': tf.keras.metrics.Mean()}

  def update_metrics(self, metrics: Dict[str, tf.keras.metrics.Metric], outputs, batch, loss) -> None:
    """Accumulates a batch into `metrics` (from `metrics()`)."""
    metrics['loss'].update_state(loss)

  def batch_metrics(self, outputs, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Stateless float32 scalars of one batch (e.g. accuracy), keyed like `metrics()`.

    The distributed trainer computes these on the workers (where stateful Keras metrics
    cannot live) and averages them per logging window on the coordinator.
    """
    del outputs, batch
    return {}

  def image_summaries(self, outputs, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """uint8 [N, H, W, 3] images to show in TensorBoard under `<task>/<name>`."""
    del outputs, batch
    return {}


def stateless_seeds(seed: tf.Tensor, count: int) -> List[tf.Tensor]:
  """`count` independent [2] seeds derived from one, as a list (one per random draw)."""
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count), num=count)


def batch_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Top-1 accuracy of integer labels against logits (any leading shape), float32."""
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
  return tf.reduce_mean(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32))


def accuracy_metric() -> tf.keras.metrics.Metric:
  """Top-1 accuracy over integer labels and logits."""
  return tf.keras.metrics.SparseCategoricalAccuracy()


def cast_logits(logits: tf.Tensor) -> tf.Tensor:
  """Logits in float32: losses and softmax stay in full precision under mixed precision."""
  return tf.cast(logits, tf.float32)
