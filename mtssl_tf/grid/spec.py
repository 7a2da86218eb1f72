"""The grid file: which networks to pre-train, how to evaluate them, which paper rows they fill.

A grid file (configs/grid/paper.yaml, mini.yaml, noroozi_paper.yaml, noroozi_mini.yaml) lists cells. Each cell is
one pre-trained network (or a control) and the evaluations run on it:

    name: mini
    train_configs: [configs/grid/tiny_base.yaml]   # before every cell's row files
    train_overrides: []                            # after them, for every cell
    transfer_configs: [configs/transfer/tiny.yaml] # before every transfer cell's files
    export: false                                  # SavedModel after pre-training
    checkpoint: latest                             # or tick:7 (first tick at >= 7 x cost_tick)
    tick_limit: 0                                  # evaluate only the last N ticks (0: all)
    evaluations:                                   # per evaluation kind: configs + overrides
      linear: {configs: [configs/eval/linear_tiny.yaml], overrides: []}
      voc07_cls: {configs: [...], seeds: [1, 2, 3, 4]}   # more runs at these `<kind>.seed`s (below)
    cells:
      - name: rp                                   # folder <output_dir>/rp
        rows: {table2: RP, table3: RP}             # paper rows this cell reproduces
        train: [configs/grid/rp.yaml]              # row files (after train_configs)
        train_overrides: [train.total_steps=600]
        evaluate: [linear]
        eval_overrides: []                         # applied to each evaluation of the cell
        ticks: [linear]                            # also evaluated at every tick (Figure 3)
      - {name: rp_eval_lasso, pretrained: rp, evaluate: [linear], eval_overrides: [linear.use_lasso=true]}
      - {name: labels, supervised: true, evaluate: [linear]}   # trunk = the supervised baseline's
      - {name: random, init: random, evaluate: [linear]}       # the paper's random-init control
      # Knowledge transfer (Noroozi et al. 2018): `mtssl-transfer all` with the teacher
      # cell's network as extract.init; the student's per-layer probes fill the CC tables.
      - {name: cc_k20, rows: {cc_table1: '2000'}, teacher: rp, transfer: [],
         transfer_overrides: [cluster.num_clusters=20]}
      - {name: cc_hog, rows: {cc_table4: CC+HOG}, transfer: [], transfer_overrides: [extract.features=hog]}

In any override, `{output_dir}` stands for the grid's output folder (absolute), for a
file the cells share, e.g. `detection.proposal_cache_dir={output_dir}/proposals`.

An evaluation's `seeds` runs it again on every cell that evaluates it, once per seed, with
`<kind>.seed=<seed>` as the last override (training order, views and new layers; the
protocol's config must have a `seed`), into `<cell>/seeds/<seed>` (`SEEDS_DIR`). The tables
then show the mean and sample standard deviation over the cell's own run and these, with
their count: a short fine-tuning's result moves by points with the seed (docs/mini).

A transfer cell is one with a `transfer` key (its files come after `transfer_configs`);
without a `teacher` it keeps the transfer config's own `extract.init` (random network,
HOG features). Its `evaluate` list runs on the trained student (`--init=<cell>/student`),
e.g. Noroozi Table 3's VOC07 classification, detection and VOC12 segmentation.
`transfer_step` picks the `mtssl-transfer` step (`TRANSFER_STEPS`): `all` (cluster
classification, the default), `distill` (Table 3's distillation baseline) or `attention`
(Table 3's "[37]+vgg-Jigsaw++"); the latter two train `<cell>/distill` or `<cell>/attention`,
which the cell's evaluations then read, and have no per-layer probes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import yaml

from mtssl_tf.evaluation import protocols
from mtssl_tf.grid import paper

# `mtssl-transfer` steps a transfer cell can run -> the folder its evaluations read (transfer/config.py OUTPUTS).
TRANSFER_STEPS = {'all': 'student', 'distill': 'distill', 'attention': 'attention'}
# The one placeholder an override may name (the runner replaces it); any other `{word}` is a typo.
OUTPUT_DIR = '{output_dir}'
# A cell's evaluations at an evaluation's extra `seeds` run in <cell>/SEEDS_DIR/<seed>.
SEEDS_DIR = 'seeds'
_PLACEHOLDER = re.compile(r'\{[A-Za-z_]\w*\}')


class GridError(ValueError):
  """A malformed grid file (the message names the cell and the key)."""


@dataclasses.dataclass
class Cell:
  """One network of the grid and its evaluations (see the module docstring)."""

  name: str
  rows: Dict[str, str] = dataclasses.field(default_factory=dict)
  train: List[str] = dataclasses.field(default_factory=list)
  train_overrides: List[str] = dataclasses.field(default_factory=list)
  evaluate: List[str] = dataclasses.field(default_factory=list)
  eval_overrides: List[str] = dataclasses.field(default_factory=list)
  ticks: List[str] = dataclasses.field(default_factory=list)
  pretrained: str = ''
  supervised: bool = False
  init: str = ''
  transfer: Optional[List[str]] = None
  transfer_overrides: List[str] = dataclasses.field(default_factory=list)
  transfer_step: str = 'all'
  teacher: str = ''

  @property
  def transfers(self) -> bool:
    """Whether this cell is a knowledge-transfer (cluster classification) run."""
    return self.transfer is not None

  @property
  def pretrains(self) -> bool:
    """Whether this cell runs its own self-supervised pre-training."""
    return not (self.pretrained or self.supervised or self.init or self.transfers)


@dataclasses.dataclass
class Grid:
  """A parsed grid file."""

  name: str
  cells: List[Cell]
  train_configs: List[str] = dataclasses.field(default_factory=list)
  train_overrides: List[str] = dataclasses.field(default_factory=list)
  transfer_configs: List[str] = dataclasses.field(default_factory=list)
  transfer_overrides: List[str] = dataclasses.field(default_factory=list)
  evaluations: Dict[str, Tuple[List[str], List[str]]] = dataclasses.field(default_factory=dict)
  eval_seeds: Dict[str, List[int]] = dataclasses.field(default_factory=dict)  # Kind -> its extra seeds.
  export: bool = False
  checkpoint: str = 'latest'
  tick_limit: int = 0

  def cell(self, name: str) -> Cell:
    """The cell called `name`."""
    for c in self.cells:
      if c.name == name:
        return c
    raise KeyError(f'grid {self.name!r} has no cell {name!r}')


def _strings(value, where: str) -> List[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise GridError(f'{where}: expected a list of strings, got {value!r}')
  return list(value)


def _overrides(value, where: str) -> List[str]:
  overrides = _strings(value, where)
  for o in overrides:
    unknown = sorted(set(_PLACEHOLDER.findall(o)) - {OUTPUT_DIR})
    if unknown:
      # Caught here, before any stage runs: unreplaced, it would reach the config loader as a literal path.
      raise GridError(f'{where}: {o!r} names {", ".join(unknown)}; the only placeholder is {OUTPUT_DIR}')
  return overrides


def _resolve(path: str, base_dir: str) -> str:
  # Grid files name configs relative to the project root (as every other config and the
  # Makefile do); a path next to the grid file also works for grids kept elsewhere.
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  beside = os.path.join(base_dir, path)
  if os.path.exists(beside):
    return os.path.abspath(beside)
  raise GridError(f'config file {path!r} not found (relative to {os.getcwd()} or {base_dir})')


_CELL_KEYS = {f.name for f in dataclasses.fields(Cell)}
_GRID_KEYS = {'name', 'cells', 'train_configs', 'train_overrides', 'transfer_configs', 'transfer_overrides',
              'evaluations', 'export', 'checkpoint', 'tick_limit'}  # fmt: skip


_EVALUATION_KEYS = {'configs', 'overrides', 'seeds'}


def _seeds(value, kind: str) -> List[int]:
  where = f'evaluations.{kind}.seeds'
  seeds = [] if value is None else value
  if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
    raise GridError(f'{where}: expected a list of seeds (integers >= 0), got {value!r}')
  if len(set(seeds)) != len(seeds):
    raise GridError(f'{where}: {seeds} repeats a seed')
  fields = {f.name for f in dataclasses.fields(protocols.protocol_class(kind).config_class)}
  if seeds and 'seed' not in fields:
    raise GridError(f'{where}: the {kind} evaluation has no {kind}.seed to vary')
  return seeds


def _parse_evaluations(
  data: dict, base_dir: str
) -> Tuple[Dict[str, Tuple[List[str], List[str]]], Dict[str, List[int]]]:
  evaluations, seeds = {}, {}
  for kind, spec in (data.get('evaluations') or {}).items():
    if kind not in protocols.names():
      raise GridError(f'evaluations.{kind}: unknown evaluation; choose from {protocols.names()}')
    spec = spec or {}
    unknown = set(spec) - _EVALUATION_KEYS
    if unknown:
      raise GridError(f'evaluations.{kind}: unknown keys {sorted(unknown)}; known: {sorted(_EVALUATION_KEYS)}')
    configs = [_resolve(p, base_dir) for p in _strings(spec.get('configs'), f'evaluations.{kind}.configs')]
    evaluations[kind] = (configs, _overrides(spec.get('overrides'), f'evaluations.{kind}.overrides'))
    seeds[kind] = _seeds(spec.get('seeds'), kind)
  return evaluations, {kind: s for kind, s in seeds.items() if s}


def _parse_cell(i: int, raw, base_dir: str) -> Cell:
  if not isinstance(raw, dict) or 'name' not in raw:
    raise GridError(f'cells[{i}]: a mapping with a name')
  where = f'cell {raw["name"]!r}'
  unknown = set(raw) - _CELL_KEYS
  if unknown:
    raise GridError(f'{where}: unknown keys {sorted(unknown)}; known: {sorted(_CELL_KEYS)}')
  rows = raw.get('rows') or {}
  for table in rows:
    if table not in paper.ALL_TABLES:
      raise GridError(f'{where}: rows.{table}: unknown table; choose from {sorted(paper.ALL_TABLES)}')
  transfer = raw.get('transfer')
  cell = Cell(
    name=str(raw['name']),
    rows={str(k): str(v) for k, v in rows.items()},
    train=[_resolve(p, base_dir) for p in _strings(raw.get('train'), f'{where}: train')],
    train_overrides=_overrides(raw.get('train_overrides'), f'{where}: train_overrides'),
    evaluate=_strings(raw.get('evaluate'), f'{where}: evaluate'),
    eval_overrides=_overrides(raw.get('eval_overrides'), f'{where}: eval_overrides'),
    ticks=_strings(raw.get('ticks'), f'{where}: ticks'),
    pretrained=str(raw.get('pretrained') or ''),
    supervised=bool(raw.get('supervised', False)),
    init=str(raw.get('init') or ''),
    transfer=None if transfer is None else [_resolve(p, base_dir) for p in _strings(transfer, f'{where}: transfer')],
    transfer_overrides=_overrides(raw.get('transfer_overrides'), f'{where}: transfer_overrides'),
    transfer_step=str(raw.get('transfer_step') or 'all'),
    teacher=str(raw.get('teacher') or ''),
  )
  for kind in cell.evaluate + cell.ticks:
    if kind not in protocols.with_init():
      raise GridError(f'{where}: evaluation {kind!r}: choose from {", ".join(protocols.with_init())}')
  if not set(cell.ticks) <= set(cell.evaluate):
    raise GridError(f'{where}: ticks {cell.ticks} must also be in evaluate {cell.evaluate}')
  if cell.transfers:
    # A transfer cell's own evaluation is the student's probes; `evaluate` adds protocols run on
    # its student folder (<cell>/student: voc07_cls, voc12_seg, detection, nonlinear read one).
    clash = [k for k in ('train', 'pretrained', 'supervised', 'init') if raw.get(k)]
    if clash:
      raise GridError(f'{where}: a transfer cell takes teacher and transfer_overrides, not {clash}')
    if cell.transfer_step not in TRANSFER_STEPS:
      raise GridError(f'{where}: transfer_step {cell.transfer_step!r}: choose from {", ".join(TRANSFER_STEPS)}')
  elif cell.teacher or cell.transfer_overrides or 'transfer_step' in raw:
    raise GridError(
      f'{where}: teacher / transfer_overrides / transfer_step need a transfer key (transfer: [] for the defaults)'
    )
  if cell.pretrains and not cell.train:
    raise GridError(f'{where}: give train (row config files), or pretrained / supervised / init / transfer')
  if cell.ticks and not cell.pretrains:
    raise GridError(f'{where}: ticks need a pre-training of its own')
  return cell


def parse_grid(data: dict, base_dir: str = '.', name: str = 'grid') -> Grid:
  """Builds a `Grid` from the parsed YAML of a grid file.

  Args:
    data: the YAML mapping.
    base_dir: folder of the grid file (config paths may be relative to it).
    name: the grid's name when the file does not give one.

  Raises:
    GridError: unknown keys, unknown evaluations, duplicate or dangling cell names,
      missing config files (each message names the cell and key).
  """
  if not isinstance(data, dict):
    raise GridError('a grid file must be a YAML mapping')
  unknown = set(data) - _GRID_KEYS
  if unknown:
    raise GridError(f'unknown grid keys {sorted(unknown)}; known: {sorted(_GRID_KEYS)}')
  evaluations, eval_seeds = _parse_evaluations(data, base_dir)
  checkpoint = str(data.get('checkpoint', 'latest'))
  if checkpoint != 'latest' and not (checkpoint.startswith('tick:') and checkpoint[5:].isdigit()):
    raise GridError(f"checkpoint: 'latest' or 'tick:<k>', got {checkpoint!r}")
  grid = Grid(
    name=str(data.get('name', name)),
    cells=[_parse_cell(i, raw, base_dir) for i, raw in enumerate(data.get('cells') or [])],
    train_configs=[_resolve(p, base_dir) for p in _strings(data.get('train_configs'), 'train_configs')],
    train_overrides=_overrides(data.get('train_overrides'), 'train_overrides'),
    transfer_configs=[_resolve(p, base_dir) for p in _strings(data.get('transfer_configs'), 'transfer_configs')],
    transfer_overrides=_overrides(data.get('transfer_overrides'), 'transfer_overrides'),
    evaluations=evaluations,
    eval_seeds=eval_seeds,
    export=bool(data.get('export', False)),
    checkpoint=checkpoint,
    tick_limit=int(data.get('tick_limit', 0)),
  )
  names = [c.name for c in grid.cells]
  if len(set(names)) != len(names):
    raise GridError(f'duplicate cell names in {names}')
  for c in grid.cells:
    for key in ('pretrained', 'teacher'):
      source = getattr(c, key)
      if source and source not in names:
        raise GridError(f'cell {c.name!r}: {key}: no cell {source!r}')
      if source and not grid.cell(source).pretrains:
        raise GridError(f'cell {c.name!r}: {key}: cell {source!r} has no pre-training of its own')
    if c.transfers and not (c.transfer or grid.transfer_configs):
      raise GridError(f"cell {c.name!r}: transfer: no config files here or in the grid's transfer_configs")
  return grid


def load_grid(path: str) -> Grid:
  """Reads and checks a grid file (see the module docstring).

  Raises:
    GridError: a malformed grid (named), or a missing file.
  """
  if not os.path.exists(path):
    raise GridError(f'grid file {path!r} not found')
  with open(path, encoding='utf-8') as f:
    data = yaml.safe_load(f) or {}
  return parse_grid(data, os.path.dirname(os.path.abspath(path)), os.path.splitext(os.path.basename(path))[0])
