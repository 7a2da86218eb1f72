"""What an evaluation protocol is: a class the registry lists, the context it runs in, and the trained kind.

A protocol (frozen linear probes, detection, depth, ...) is one module with one
`Protocol` subclass, registered by one line in `protocols.py`, the way a pretext task
is one module and one line in `tasks/__init__.py`. The class declares its config
section (a `Config` dataclass: `EvalConfig.<name>`, the `<name>:` block of an eval
YAML file), where its data comes from when the config leaves the sources empty (the
synthetic world's entries), the result keys `mtssl-eval` prints and the columns the
results tables show. Everything else (flags, the grid, `tools/results_table.py`) reads
the registry, so adding a protocol edits nothing else.

A protocol that only reads features (kNN, SVMs, figures) implements `run(ctx)`. One
that trains subclasses `FineTuneProtocol`, whose `run` is the same for all of them
(prepare, build, restore, train through `mtssl_tf.train.finetune.FineTune`, score,
results.json) and calls the protocol's hooks: its data, its model, its step and its
scores. The transfer student's training and probes are `FineTuneProtocol`s too.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError, validate_all
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation import random_init as random_init_choices
from mtssl_tf.train.finetune import FineTune


@dataclasses.dataclass(frozen=True)
class Column:
  """A results-table column: `results[key]` of this protocol, times `scale`.

  Attributes:
    header: the column title.
    key: a results.json key; '/'-free keys are looked up at the top level, then under
      'metrics'.
    scale: multiplies the value (100 for percentages).
    paper_index: which number of the paper's reference row this column sits beside
      (`grid.paper`), or None.
  """

  header: str
  key: str
  scale: float = 100.0
  paper_index: Optional[int] = None


@dataclasses.dataclass
class Context:
  """Everything a protocol's `run` gets: its config, data sources, trunk source and output folder.

  `runner.context` makes it for `mtssl-eval`; `Protocol.direct_context` for a run on a
  given section and network (scripts, tests, the transfer steps).

  Attributes:
    name: the protocol's registry name.
    section: its config section (`EvalConfig.<name>`), validated.
    model_dir: the evaluated run's folder.
    out_dir: where summaries, checkpoints and results.json go (`<model_dir>/eval/<name>`).
    train_spec: the training source spec (config, else the synthetic world's).
    test_spec: the test / validation source spec ('' for a protocol without one).
    preprocessing: the trunk's input, 'rgb' or 'harmonized' (resolved).
    init: where the trunk comes from ('random', checkpoint, run folder, SavedModel or
      student folder); '' when the caller gives the network.
    trunk_config: the trunk's shape (`EvalConfig.trunk`), if any.
    config: the whole eval config under `mtssl-eval` (None for a direct run).
    precision: the Keras dtype policy in force.
    random_init: how a random AlexNet is drawn (`evaluation.random_init`; `EvalConfig.random_init`).
    random_init_images: images its data-dependent initialisation reads.
    progress: log progress lines.
    network: a network the caller built; None makes `trunk()` load one from `init`.
  """

  name: str
  section: Config
  model_dir: str
  out_dir: str
  train_spec: str
  test_spec: str
  preprocessing: str = 'rgb'
  init: str = ''
  trunk_config: Any = None
  config: Any = None
  precision: str = 'float32'
  random_init: str = random_init_choices.DATA_DEPENDENT
  random_init_images: int = random_init_choices.IMAGES
  progress: bool = True
  network: Any = dataclasses.field(default=None, repr=False)

  @property
  def given(self) -> bool:
    """Whether the network is at hand: given by the caller (a direct run) or already loaded by `trunk()`.

    Checks that read `init` for the network (a student folder?) run while it is False.
    """
    return self.network is not None

  def trunk(self):
    """The given network, or the trunk from `init`, built and loaded once (`backbone.load_trunk`)."""
    if self.network is None:
      self.network = backbone.load_trunk(self.init, self.trunk_config, self.precision)
    return self.network

  def trunk_kind(self) -> str:
    """The trunk's kind, without loading it when the caller gave none."""
    return self.network.kind if self.given else self.trunk_config.kind

  def input_fn(self) -> Callable[[tf.Tensor], tf.Tensor]:
    """uint8 images -> the trunk's input (`preprocessing`)."""
    return backbone.input_fn(self.preprocessing)

  def inputs(self) -> Dict[str, str]:
    """What the run read, for its results: preprocessing, train_source, test_source and (when known) init."""
    read = {'preprocessing': self.preprocessing, 'train_source': self.train_spec, 'test_source': self.test_spec}
    return dict(read, init=self.init) if self.init else read

  def write_results(self, results: Dict[str, Any]) -> str:
    """Writes `<out_dir>/results.json` atomically; returns its path."""
    return backbone.write_json(os.path.join(self.out_dir, 'results.json'), results)


class Protocol(abc.ABC):
  """Base class of evaluation protocols; subclass, set the class attributes, implement `run`.

  Class attributes:
    name: registry name (`mtssl-eval --eval=<name>`, the config section, `eval/<name>/`).
    summary: one line for `mtssl-eval --help` and the docs.
    config_class: the section's `Config` dataclass.
    source_fields: the section's (train, test) source fields.
    world_sources: the synthetic world's source keys used for empty source fields.
    headline: result keys `mtssl-eval` prints.
    columns: results-table columns (`Column`).
    uses_init: False for protocols that train their own trunk (the supervised
      baseline): the grid runs them as a row of their own, not on a row's trunk.
  """

  name: ClassVar[str] = ''
  summary: ClassVar[str] = ''
  config_class: ClassVar[Type[Config]] = Config
  source_fields: ClassVar[Tuple[str, str]] = ('train_source', 'test_source')
  world_sources: ClassVar[Tuple[str, str]] = ('images_train', 'images_validation')
  headline: ClassVar[Tuple[str, ...]] = ()
  columns: ClassVar[Tuple[Column, ...]] = ()
  uses_init: ClassVar[bool] = True

  @abc.abstractmethod
  def run(self, ctx: Context) -> Dict[str, Any]:
    """Runs the protocol and returns its results (also written to results.json)."""

  @classmethod
  def direct_context(
    cls, section: Config, model_dir: str, train_spec: str = '', test_spec: str = '', *, out_dir: str = '', **fields
  ) -> Context:
    """The context of a run outside `mtssl-eval`, on a given section (and network, `network=`).

    Args:
      section: the protocol's config.
      model_dir: the run folder; results go to `out_dir`, by default `<model_dir>/eval/<name>`.
      train_spec: the training source; '' reads the section's `source_fields[0]`.
      test_spec: the test source; '' reads `source_fields[1]`.
      out_dir: see `model_dir`.
      **fields: the other `Context` fields (network, preprocessing, init, trunk_config, precision, progress).

    Raises:
      ConfigError: a source neither given nor configured (`<name>.<field>`), before any folder is made.
    """
    specs = [spec or getattr(section, key) for spec, key in zip((train_spec, test_spec), cls.source_fields)]
    for spec, key in zip(specs, cls.source_fields):
      if not spec:
        raise ConfigError(f'{cls.name}.{key}: no data source given (config or argument)')
    if fields.get('trunk_config') is None:
      fields['trunk_config'] = getattr(fields.get('network'), 'config', None)
    out_dir = out_dir or backbone.eval_dir(model_dir, cls.name)
    return Context(cls.name, section, model_dir, out_dir, specs[0], specs[1], **fields)


@dataclasses.dataclass
class Trainee:
  """What a `FineTuneProtocol` trains, from its `build` hook.

  Attributes:
    objects: the checkpointed trackables by name (`model=`, `probes=`, ...): a resumed run restores them.
    variables: the variables the optimizer updates; its slots are made for them before a
      restore, so a resumed momentum is restored rather than re-created as zeros.
    summaries: more scalars per logging window (e.g. a lasso mix's alpha), or None.
  """

  objects: Dict[str, Any]
  variables: Sequence[tf.Variable]
  summaries: Optional[Callable[[], Dict[str, float]]] = None


class FineTuneProtocol(Protocol):
  """A protocol that trains through the fine-tuning engine; `run` is shared, a subclass defines the hooks.

  `run(ctx)`: `prepare` (checks; may return another context), `build` the model, make the
  `schedule` and `optimizer`, restore the last checkpoint of `<out_dir>/checkpoints`,
  train the remaining steps on `train_data` with `train_step` (`FineTune.fit`: NaN check,
  progress, summaries, checkpoints), `score` (final scalars too), write results.json and
  `report` it. A protocol with several trainings (nonlinear's columns) calls
  `train_and_score` once per training.

  Class attributes (besides `Protocol`'s):
    log_keys: the step values named in progress lines.
    max_to_keep: checkpoints kept.
    summary_name: the engine's name (summary prefix, log name); '' = the context's name.
    empty_message: the error when the training data ends early.
  """

  log_keys: ClassVar[Tuple[str, ...]] = ('loss',)
  max_to_keep: ClassVar[int] = 2
  summary_name: ClassVar[str] = ''
  empty_message: ClassVar[str] = 'the training source yields no batch (fewer images than batch_size?)'

  def run(self, ctx: Context) -> Dict[str, Any]:
    ctx = self.prepare(ctx)
    results = self.train_and_score(ctx)
    path = ctx.write_results(results)
    self.report(ctx, results, path)
    return results

  def train_and_score(self, ctx: Context, name: str = '', out_dir: str = '') -> Dict[str, Any]:
    """Builds, restores, trains the remaining steps and scores one training.

    Args:
      ctx: the context.
      name: the engine's name; '' = `summary_name`, else the context's.
      out_dir: the training's folder (summaries, checkpoints); '' = `ctx.out_dir`.
    """
    trainee = self.build(ctx)
    schedule = self.schedule(ctx)
    optimizer = self.optimizer(ctx, schedule)
    tune = FineTune(name or self.summary_name or ctx.name, out_dir or ctx.out_dir, progress=ctx.progress,
                    max_to_keep=self.max_to_keep, **self.loop(ctx.section))  # fmt: skip
    start = tune.restore(optimizer, trainee.variables, **trainee.objects)
    stats: Dict[str, Any] = {}
    if start < tune.steps:
      stats = tune.fit(self.train_step(ctx, trainee, optimizer), self.train_data(ctx, start), schedule=schedule,
                       log_keys=self.log_keys, extra_summaries=trainee.summaries,
                       empty_message=self.empty_message)  # fmt: skip
    return self.score(ctx, tune, stats)

  # ----------------------------------------------------------------------------- hooks

  def prepare(self, ctx: Context) -> Context:
    """Checks the section (and whatever else can fail before anything is built); returns the context to run."""
    validate_all(ctx.section)
    return ctx

  @abc.abstractmethod
  def build(self, ctx: Context) -> Trainee:
    """Builds (and seeds) the model to train, its variables created; keeps on `self` what later hooks need."""

  def loop(self, cfg: Config) -> Dict[str, int]:
    """The engine's step counts: a `LoopConfig`'s fields (steps, log_every_steps, checkpoint_every_steps)."""
    return {'steps': cfg.steps, 'log_every_steps': cfg.log_every_steps,
            'checkpoint_every_steps': cfg.checkpoint_every_steps}  # fmt: skip

  def schedule(self, ctx: Context) -> Any:
    """The learning rate the optimizer runs and the summaries log: an `SGDConfig`'s staircase decay.

    learning_rate x lr_decay_factor every `lr_decay_steps` (None: the logged rate is read from the optimizer).
    """
    cfg = ctx.section
    return tf.keras.optimizers.schedules.ExponentialDecay(
      cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_factor, staircase=True
    )

  def optimizer(self, ctx: Context, schedule: Any) -> tf.keras.optimizers.Optimizer:
    """Momentum SGD (`SGDConfig.momentum`) on `schedule`; weight decay, where any, is in the step."""
    return tf.keras.optimizers.SGD(learning_rate=schedule, momentum=ctx.section.momentum)

  @abc.abstractmethod
  def train_step(self, ctx: Context, trainee: Trainee, optimizer: tf.keras.optimizers.Optimizer) -> Callable:
    """batch -> (total loss, {tag: value}) or {tag: value} with 'loss': one update (a tf.function)."""

  @abc.abstractmethod
  def train_data(self, ctx: Context, start: int) -> Iterable:
    """Training batches from step `start` on (a resumed run does not replay the first run's batches)."""

  @abc.abstractmethod
  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    """Tests the trained model and returns the results; writes final scalars with `tune.scalars`.

    Args:
      ctx: the context.
      tune: the engine, at the last step (`tune.step`).
      stats: `FineTune.fit`'s timing and skip counts, {} when nothing was left to train.
    """

  def report(self, ctx: Context, results: Dict[str, Any], path: str) -> None:
    """Logs the headline results and where they went."""
    if ctx.progress:
      shown = ', '.join(f'{k} {results[k]:.4f}' for k in self.headline if isinstance(results.get(k), float))
      logging.info('%s: %s -> %s', ctx.name, shown, path)


class NetworkFineTuneProtocol(FineTuneProtocol):
  """A whole network fine-tuned by a Caffe-style solver: `voc07_cls` and `voc12_seg`.

  `build` seeds and builds the subclass's `network(ctx)` (the model and where its layers
  came from) and trains all its variables but `frozen_variables`; the step and the
  training data are the subclass module's `make_step(model, optimizer, cfg, variables)`
  and `dataset(spec, cfg, start_step)`. One checkpoint is kept.
  """

  max_to_keep = 1
  make_step: ClassVar[Callable]
  dataset: ClassVar[Callable]

  @abc.abstractmethod
  def network(self, ctx: Context) -> Tuple[tf.keras.Model, str]:
    """The network to fine-tune and a description of where its layers came from."""

  def frozen_variables(self, ctx: Context) -> List[tf.Variable]:
    """Variables kept fixed (none by default)."""
    return []

  def build(self, ctx: Context) -> Trainee:
    tf.keras.utils.set_random_seed(ctx.section.seed)
    self.model, self.source = self.network(ctx)
    frozen = {id(v) for v in self.frozen_variables(ctx)}
    return Trainee({'model': self.model}, [v for v in self.model.trainable_variables if id(v) not in frozen])

  def train_step(self, ctx: Context, trainee: Trainee, optimizer):
    return self.make_step(self.model, optimizer, ctx.section, trainee.variables)

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    return self.dataset(ctx.train_spec, ctx.section, start)
