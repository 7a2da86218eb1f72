"""What an evaluation protocol is: a class the registry lists, and the context it runs in.

A protocol (frozen linear probes, detection, depth, ...) is one module with one
`Protocol` subclass, registered by one line in `protocols.py`, the way a pretext task
is one module and one line in `tasks/__init__.py`. The class declares its config
section (a `Config` dataclass: `EvalConfig.<name>`, the `<name>:` block of an eval
YAML file), where its data comes from when the config leaves the sources empty (the
synthetic world's entries), the result keys `mtssl-eval` prints and the columns the
results tables show. `run(ctx)` does the work; trainable protocols drive the shared
fine-tuning loop (`mtssl_tf.train.finetune`). Everything else (flags, the grid,
`tools/results_table.py`) reads the registry, so adding a protocol edits nothing else.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type

import tensorflow as tf

from mtssl_tf.configs.base import Config


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

  Attributes:
    name: the protocol's registry name.
    section: its config section (`EvalConfig.<name>`), validated.
    config: the whole eval config (trunk shape, precision, world).
    model_dir: the evaluated run's folder; results go to `out_dir`.
    out_dir: `<model_dir>/eval/<name>`: summaries, checkpoints, results.json.
    train_spec: the training source spec (config, else the synthetic world's).
    test_spec: the test / validation source spec.
    preprocessing: the trunk's input, 'rgb' or 'harmonized' (resolved).
    precision: the Keras dtype policy in force.
    progress: log progress lines.
  """

  name: str
  section: Config
  config: Any
  model_dir: str
  out_dir: str
  train_spec: str
  test_spec: str
  preprocessing: str
  precision: str = 'float32'
  progress: bool = True
  _trunk: Any = dataclasses.field(default=None, repr=False)

  @property
  def init(self) -> str:
    """Where the trunk comes from ('random', checkpoint, run folder or SavedModel)."""
    return self.config.init

  def trunk(self):
    """The trunk from `init`, built and loaded once (`backbone.load_trunk`)."""
    if self._trunk is None:
      from mtssl_tf.evaluation import backbone

      self._trunk = backbone.load_trunk(self.config.init, self.config.trunk, self.precision)
    return self._trunk

  def input_fn(self) -> Callable[[tf.Tensor], tf.Tensor]:
    """uint8 images -> the trunk's input (`preprocessing`)."""
    from mtssl_tf.evaluation import backbone

    return backbone.input_fn(self.preprocessing)

  def write_results(self, results: Dict[str, Any]) -> str:
    """Writes `<out_dir>/results.json` atomically; returns its path."""
    from mtssl_tf.evaluation import backbone

    return backbone.write_results(self.model_dir, self.name, results)


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
