"""Runs a grid of pre-trainings and evaluations and writes the paper's tables beside ours.

A grid file (configs/grid/paper.yaml, configs/grid/mini.yaml) lists cells. Each cell is
one pre-trained network (or a control) and the evaluations run on it:

    name: mini
    train_configs: [configs/grid/tiny_base.yaml]   # before every cell's row files
    train_overrides: []                            # after them, for every cell
    export: false                                  # SavedModel after pre-training
    checkpoint: latest                             # or tick:7 (first tick at >= 7 x cost_tick)
    tick_limit: 0                                  # evaluate only the last N ticks (0: all)
    evaluations:                                   # per evaluation kind: configs + overrides
      linear: {configs: [configs/eval/linear_tiny.yaml], overrides: []}
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

Layout under `output_dir`: `<cell>/` is the cell's pre-training model_dir
(`mtssl-train` output) and holds `eval/<kind>/results.json`; tick evaluations go to
`<cell>/tick_evals/<tick>/eval/<kind>/`; logs of every subprocess to `<cell>/grid_logs/`;
tables to `tables/`, figures to `figures/`.

Every stage runs as a subprocess (`python -m mtssl_tf.bin.train|evaluate`): each gets a
fresh TensorFlow (global dtype policies, Keras name scopes, the local cluster's
servers), and a crash stays inside its cell. A stage whose output exists is skipped
(`train_result.json`, `results.json`), and both binaries resume from their own
checkpoints, so rerunning a grid continues where it stopped. A failing cell is reported
and the grid goes on; `GridReport.failures` lists what failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from mtssl_tf.grid import paper

EVALUATIONS = ('linear', 'detection', 'depth', 'supervised')
RESULTS = 'results.json'
TRAIN_RESULT = 'train_result.json'
_LOG_TAIL_LINES = 15


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

  @property
  def pretrains(self) -> bool:
    """Whether this cell runs its own self-supervised pre-training."""
    return not (self.pretrained or self.supervised or self.init)


@dataclasses.dataclass
class Grid:
  """A parsed grid file."""

  name: str
  cells: List[Cell]
  train_configs: List[str] = dataclasses.field(default_factory=list)
  train_overrides: List[str] = dataclasses.field(default_factory=list)
  evaluations: Dict[str, Tuple[List[str], List[str]]] = dataclasses.field(default_factory=dict)
  export: bool = False
  checkpoint: str = 'latest'
  tick_limit: int = 0

  def cell(self, name: str) -> Cell:
    """The cell called `name`."""
    for c in self.cells:
      if c.name == name:
        return c
    raise KeyError(f'grid {self.name!r} has no cell {name!r}')


@dataclasses.dataclass
class Failure:
  """A stage that failed: which cell, which stage, why, and where its log is."""

  cell: str
  stage: str
  message: str
  log: str = ''


@dataclasses.dataclass
class GridReport:
  """What `run_grid` did: stages run, stages skipped as finished, failures, tables written."""

  ran: List[str] = dataclasses.field(default_factory=list)
  skipped: List[str] = dataclasses.field(default_factory=list)
  failures: List[Failure] = dataclasses.field(default_factory=list)
  tables: Dict[str, str] = dataclasses.field(default_factory=dict)
  figures: List[str] = dataclasses.field(default_factory=list)


def _strings(value, where: str) -> List[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise GridError(f'{where}: expected a list of strings, got {value!r}')
  return list(value)


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
_GRID_KEYS = {'name', 'cells', 'train_configs', 'train_overrides', 'evaluations', 'export', 'checkpoint', 'tick_limit'}


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
  evaluations = {}
  for kind, spec in (data.get('evaluations') or {}).items():
    if kind not in EVALUATIONS:
      raise GridError(f'evaluations.{kind}: unknown evaluation; choose from {EVALUATIONS}')
    spec = spec or {}
    configs = [_resolve(p, base_dir) for p in _strings(spec.get('configs'), f'evaluations.{kind}.configs')]
    evaluations[kind] = (configs, _strings(spec.get('overrides'), f'evaluations.{kind}.overrides'))
  checkpoint = str(data.get('checkpoint', 'latest'))
  if checkpoint != 'latest' and not (checkpoint.startswith('tick:') and checkpoint[5:].isdigit()):
    raise GridError(f"checkpoint: 'latest' or 'tick:<k>', got {checkpoint!r}")
  grid = Grid(
    name=str(data.get('name', name)),
    cells=[],
    train_configs=[_resolve(p, base_dir) for p in _strings(data.get('train_configs'), 'train_configs')],
    train_overrides=_strings(data.get('train_overrides'), 'train_overrides'),
    evaluations=evaluations,
    export=bool(data.get('export', False)),
    checkpoint=checkpoint,
    tick_limit=int(data.get('tick_limit', 0)),
  )
  for i, raw in enumerate(data.get('cells') or []):
    if not isinstance(raw, dict) or 'name' not in raw:
      raise GridError(f'cells[{i}]: a mapping with a name')
    where = f'cell {raw["name"]!r}'
    unknown = set(raw) - _CELL_KEYS
    if unknown:
      raise GridError(f'{where}: unknown keys {sorted(unknown)}; known: {sorted(_CELL_KEYS)}')
    rows = raw.get('rows') or {}
    for table in rows:
      if table not in paper.TABLES:
        raise GridError(f'{where}: rows.{table}: unknown table; choose from {sorted(paper.TABLES)}')
    cell = Cell(
      name=str(raw['name']),
      rows={str(k): str(v) for k, v in rows.items()},
      train=[_resolve(p, base_dir) for p in _strings(raw.get('train'), f'{where}: train')],
      train_overrides=_strings(raw.get('train_overrides'), f'{where}: train_overrides'),
      evaluate=_strings(raw.get('evaluate'), f'{where}: evaluate'),
      eval_overrides=_strings(raw.get('eval_overrides'), f'{where}: eval_overrides'),
      ticks=_strings(raw.get('ticks'), f'{where}: ticks'),
      pretrained=str(raw.get('pretrained') or ''),
      supervised=bool(raw.get('supervised', False)),
      init=str(raw.get('init') or ''),
    )
    for kind in cell.evaluate + cell.ticks:
      if kind not in EVALUATIONS or kind == 'supervised':
        raise GridError(f'{where}: evaluation {kind!r}: choose from linear, detection, depth')
    if not set(cell.ticks) <= set(cell.evaluate):
      raise GridError(f'{where}: ticks {cell.ticks} must also be in evaluate {cell.evaluate}')
    if cell.pretrains and not cell.train:
      raise GridError(f'{where}: give train (row config files), or pretrained / supervised / init')
    if cell.ticks and not cell.pretrains:
      raise GridError(f'{where}: ticks need a pre-training of its own')
    grid.cells.append(cell)
  names = [c.name for c in grid.cells]
  if len(set(names)) != len(names):
    raise GridError(f'duplicate cell names in {names}')
  for c in grid.cells:
    if c.pretrained and c.pretrained not in names:
      raise GridError(f'cell {c.name!r}: pretrained: no cell {c.pretrained!r}')
    if c.pretrained and not grid.cell(c.pretrained).pretrains:
      raise GridError(f'cell {c.name!r}: pretrained: cell {c.pretrained!r} has no pre-training of its own')
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


# ----- checkpoints and compute -----


def _run_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, 'config.yaml')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return yaml.safe_load(f) or {}


def checkpoint_compute(prefix: str, run_config: dict) -> float:
  """Pre-training compute at a checkpoint: sum over tasks of its steps x cost_per_step.

  The step counters are the `CostTracker` variables in the checkpoint; the costs come
  from the run's config.yaml, so the unit is the config's (GPU-hours at paper scale).
  """
  import tensorflow as tf

  reader = tf.train.load_checkpoint(prefix)
  tasks = run_config.get('tasks') or {}
  total = 0.0
  for key in reader.get_variable_to_shape_map():
    if key.startswith('cost/steps/') and key.endswith('/.ATTRIBUTES/VARIABLE_VALUE'):
      task = key[len('cost/steps/') : -len('/.ATTRIBUTES/VARIABLE_VALUE')]
      total += float(reader.get_tensor(key)) * float((tasks.get(task) or {}).get('cost_per_step', 1.0))
  return total


def tick_checkpoints(run_dir: str) -> List[Tuple[str, float]]:
  """[(checkpoint prefix, compute)] of a run's compute-tick checkpoints, by compute."""
  import tensorflow as tf

  state = tf.train.get_checkpoint_state(os.path.join(run_dir, 'ticks'))
  if not state:
    return []
  config = _run_config(run_dir)
  ticks = [(p, checkpoint_compute(p, config)) for p in state.all_model_checkpoint_paths]
  return sorted(ticks, key=lambda t: t[1])


def select_checkpoint(run_dir: str, which: str) -> str:
  """The checkpoint a cell is evaluated at: the run dir itself ('latest') or a tick's prefix.

  'tick:<k>' is the first tick checkpoint whose compute reaches k x train.cost_tick
  (the paper evaluates tick 7 = 16.8K GPU-hours).

  Raises:
    FileNotFoundError: the run has no such tick (it stopped earlier).
  """
  if which == 'latest':
    return run_dir
  k = int(which.split(':', 1)[1])
  tick = float((_run_config(run_dir).get('train') or {}).get('cost_tick', 1.0))
  for prefix, compute in tick_checkpoints(run_dir):
    if compute >= k * tick - 1e-9:
      return prefix
  raise FileNotFoundError(f'{run_dir}: no tick checkpoint at compute >= {k} x {tick:g}; the run stopped earlier')


# ----- running -----


def _tail(path: str, lines: int = _LOG_TAIL_LINES) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return ''


class _Runner:
  """Runs the stages of one grid, recording what ran, what was skipped and what failed."""

  def __init__(self, grid: Grid, output_dir: str, log: Callable[[str], None], python: str, env: Dict[str, str]):
    self.grid = grid
    self.output_dir = os.path.abspath(output_dir)
    self.log = log
    self.python = python
    self.env = env
    self.report = GridReport()

  def cell_dir(self, cell: Cell) -> str:
    return os.path.join(self.output_dir, cell.name)

  def _subprocess(self, cell: Cell, stage: str, argv: List[str]) -> bool:
    logs = os.path.join(self.cell_dir(cell), 'grid_logs')
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, stage.replace('/', '_').replace(':', '_') + '.log')
    self.log(f'[{self.grid.name}] {cell.name}: {stage} ... (log: {log_path})')
    start = time.time()
    with open(log_path, 'ab') as out:
      out.write(('$ ' + ' '.join(argv) + '\n').encode())
      out.flush()
      code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
    seconds = time.time() - start
    if code:
      self.report.failures.append(Failure(cell.name, stage, f'exit code {code}', log_path))
      self.log(f'[{self.grid.name}] {cell.name}: {stage} FAILED (exit {code}, {seconds:.0f} s); last lines:\n'
               f'{_tail(log_path)}')  # fmt: skip
      return False
    self.report.ran.append(f'{cell.name}/{stage}')
    self.log(f'[{self.grid.name}] {cell.name}: {stage} done in {seconds:.0f} s')
    return True

  def _skip(self, cell: Cell, stage: str, why: str) -> None:
    self.report.skipped.append(f'{cell.name}/{stage}')
    self.log(f'[{self.grid.name}] {cell.name}: {stage} skipped ({why})')

  def pretrain(self, cell: Cell) -> bool:
    run_dir = self.cell_dir(cell)
    if os.path.exists(os.path.join(run_dir, TRAIN_RESULT)):
      self._skip(cell, 'pretrain', f'{TRAIN_RESULT} exists')
      return True
    argv = [
      self.python,
      '-m',
      'mtssl_tf.bin.train',
      f'--model_dir={run_dir}',
      f'--export={str(self.grid.export).lower()}',
    ]
    argv += [f'--config={c}' for c in self.grid.train_configs + cell.train]
    argv += [f'--override={o}' for o in self.grid.train_overrides + cell.train_overrides]
    return self._subprocess(cell, 'pretrain', argv)

  def supervised(self, cell: Cell) -> bool:
    run_dir = self.cell_dir(cell)
    if os.path.exists(os.path.join(run_dir, 'eval', 'supervised', RESULTS)):
      self._skip(cell, 'supervised', f'eval/supervised/{RESULTS} exists')
      return True
    return self._evaluate(cell, 'supervised', 'supervised', '', run_dir)

  def _evaluate(self, cell: Cell, stage: str, kind: str, init: str, model_dir: str) -> bool:
    configs, overrides = self.grid.evaluations.get(kind, ([], []))
    argv = [self.python, '-m', 'mtssl_tf.bin.evaluate', f'--eval={kind}', f'--model_dir={model_dir}']
    if init:
      argv.append(f'--init={init}')
    argv += [f'--config={c}' for c in configs]
    argv += [f'--override={o}' for o in overrides + cell.eval_overrides]
    return self._subprocess(cell, stage, argv)

  def evaluate(self, cell: Cell, kind: str, init: str, model_dir: str, stage: str) -> bool:
    if os.path.exists(os.path.join(model_dir, 'eval', kind, RESULTS)):
      self._skip(cell, stage, f'{RESULTS} exists')
      return True
    return self._evaluate(cell, stage, kind, init, model_dir)

  def init_source(self, cell: Cell) -> str:
    """What the cell's evaluations start from."""
    if cell.init:
      return cell.init
    if cell.supervised:
      return os.path.join(self.cell_dir(cell), 'eval', 'supervised')
    source = self.grid.cell(cell.pretrained) if cell.pretrained else cell
    return select_checkpoint(self.cell_dir(source), self.grid.checkpoint)

  def run_cell(self, cell: Cell, failed: set) -> bool:
    if cell.pretrained in failed:
      self.report.failures.append(Failure(cell.name, 'pretrain', f'its pre-training cell {cell.pretrained!r} failed'))
      self.log(f'[{self.grid.name}] {cell.name}: skipped, cell {cell.pretrained!r} failed')
      return False
    if cell.pretrains and not self.pretrain(cell):
      return False
    if cell.supervised and not self.supervised(cell):
      return False
    try:
      init = self.init_source(cell)
    except (FileNotFoundError, ValueError) as e:
      self.report.failures.append(Failure(cell.name, 'checkpoint', str(e)))
      self.log(f'[{self.grid.name}] {cell.name}: FAILED: {e}')
      return False
    ok = True
    for kind in cell.evaluate:
      ok &= self.evaluate(cell, kind, init, self.cell_dir(cell), f'eval_{kind}')
    if cell.ticks:
      ticks = tick_checkpoints(self.cell_dir(cell))
      if self.grid.tick_limit:
        ticks = ticks[-self.grid.tick_limit :]
      for prefix, _ in ticks:
        tick = os.path.basename(prefix)
        for kind in cell.ticks:
          model_dir = os.path.join(self.cell_dir(cell), 'tick_evals', tick)
          ok &= self.evaluate(cell, kind, prefix, model_dir, f'{tick}_eval_{kind}')
    return ok


def run_grid(
  grid: Grid,
  output_dir: str,
  cells: Optional[Sequence[str]] = None,
  log: Callable[[str], None] = print,
  python: str = sys.executable,
  figures: bool = True,
) -> GridReport:
  """Runs (or resumes) every cell of `grid` under `output_dir`, then writes tables and figures.

  Args:
    grid: the parsed grid.
    output_dir: root folder of the cells' runs, tables and figures.
    cells: only these cells (their `pretrained` sources must have run or be listed).
    log: progress lines go here.
    python: interpreter for the `mtssl_tf.bin` subprocesses.
    figures: also draw Figure 3 (cells with tick evaluations) and Figure 4 (lasso runs).

  Returns:
    The report; `report.failures` is empty when every stage succeeded.

  Raises:
    KeyError: a name in `cells` is not a cell of the grid.
  """
  selected = [grid.cell(n) for n in cells] if cells else list(grid.cells)
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  runner = _Runner(grid, output_dir, log, python, env)
  os.makedirs(runner.output_dir, exist_ok=True)
  failed = set()
  for i, cell in enumerate(selected):
    log(f'[{grid.name}] cell {i + 1}/{len(selected)}: {cell.name}')
    if not runner.run_cell(cell, failed):
      failed.add(cell.name)
  report = runner.report
  report.tables = write_tables(grid, runner.output_dir)
  for path in report.tables.values():
    log(f'[{grid.name}] table: {path}')
  if figures:
    report.figures = write_figures(grid, runner.output_dir, log)
  if report.failures:
    log(f'[{grid.name}] {len(report.failures)} stage(s) failed:')
    for f in report.failures:
      log(f'  {f.cell}: {f.stage}: {f.message}' + (f' (log: {f.log})' if f.log else ''))
  else:
    log(f'[{grid.name}] all {len(selected)} cell(s) done: {len(report.ran)} stage(s) run, '
        f'{len(report.skipped)} skipped as finished')  # fmt: skip
  return report


# ----- tables -----


def _columns(table: str) -> List[Tuple[str, str, str, float, Optional[int]]]:
  """results_table.COLUMNS with the paper's triple mapped to this table's ImageNet metric."""
  from mtssl_tf.evaluation import results_table

  columns = []
  for title, evaluation, key, scale, index in results_table.COLUMNS:
    if evaluation == 'linear' and key in ('top1', 'top5'):
      index = 0 if key == paper.IMAGENET_METRIC[table] else None
    columns.append((title, evaluation, key, scale, index))
  if paper.IMAGENET_METRIC[table] == 'top1':  # Table 1 leads with top-1, as the paper.
    columns[0], columns[1] = columns[1], columns[0]
  return columns


def table_rows(grid: Grid, output_dir: str, table: str) -> Tuple[List[str], List[List[str]]]:
  """Header and rows of one paper table: our numbers, the paper's in [brackets].

  Rows follow the grid's cell order; a missing evaluation leaves its cell empty (or
  just the paper's number).
  """
  from mtssl_tf.evaluation import results_table

  columns = _columns(table)
  header = ['Pre-training', 'Cell'] + [c[0] for c in columns]
  rows = []
  for cell in grid.cells:
    label = cell.rows.get(table)
    if label is None:
      continue
    found = results_table.read_run(os.path.join(output_dir, cell.name))
    reference = paper.paper_row(table, label)
    triple = (reference.imagenet, reference.pascal, reference.nyu) if reference else None
    row = [label, cell.name]
    for _, evaluation, key, scale, index in columns:
      value = results_table.lookup(found.get(evaluation, {}), key)
      text = '' if value is None else f'{value * scale:.2f}'
      if triple is not None and index is not None:
        text = f'{text} [{triple[index]:.2f}]'.strip()
      row.append(text)
    rows.append(row)
  return header, rows


def table_markdown(table: str, header: List[str], rows: List[List[str]]) -> str:
  """A markdown table under the paper table's title, with a note on the bracketed numbers."""
  lines = [f'## {paper.TITLES[table]}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  number = table.replace('table', '')
  note = f"\n[brackets]: the paper's number (Doersch & Zisserman 2017, Table {number})."
  if table == 'table1' and not paper.TABLE1_VERIFIED:
    note += ' Table 1 was transcribed from the PDF and is not yet checked against the paper text.'
  return '\n'.join(lines) + '\n' + note + '\n'


def write_tables(grid: Grid, output_dir: str) -> Dict[str, str]:
  """Writes `tables/<table>.md` and `.csv` for each paper table the grid has rows for, and `tables/all.md`.

  Returns:
    {table name or 'all': markdown path}.
  """
  from mtssl_tf.evaluation import results_table

  folder = os.path.join(output_dir, 'tables')
  os.makedirs(folder, exist_ok=True)
  written, parts = {}, []
  for table in paper.TABLES:
    if not any(table in c.rows for c in grid.cells):
      continue
    header, rows = table_rows(grid, output_dir, table)
    markdown = table_markdown(table, header, rows)
    parts.append(markdown)
    path = os.path.join(folder, f'{table}.md')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(markdown)
    with open(os.path.join(folder, f'{table}.csv'), 'w', encoding='utf-8', newline='') as f:
      f.write(results_table.to_csv(header, rows))
    written[table] = path
  path = os.path.join(folder, 'all.md')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'# Grid {grid.name}\n\n' + '\n'.join(parts))
  written['all'] = path
  return written


# ----- figures -----

# Figure 3's panels: (evaluation, result key, scale, title), as the paper's three columns.
FIGURE3_METRICS = (
  ('linear', 'top5', 100.0, 'ImageNet top-5 (%)'),
  ('detection', 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point', 100.0, 'VOC07 mAP (%)'),
  ('depth', 'delta1', 100.0, 'NYU % < 1.25'),
)


def collect_ticks(grid: Grid, output_dir: str) -> Dict[str, Dict[str, List[Tuple[float, float]]]]:
  """Figure 3's data: {panel title: {cell: [(compute, metric), ...]}} from the tick evaluations."""
  import glob

  from mtssl_tf.evaluation import results_table

  series: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
  for cell in grid.cells:
    run_dir = os.path.join(output_dir, cell.name)
    if not cell.ticks or not os.path.isdir(os.path.join(run_dir, 'ticks')):
      continue
    config = _run_config(run_dir)
    for tick_dir in sorted(glob.glob(os.path.join(run_dir, 'tick_evals', '*'))):
      prefix = os.path.join(run_dir, 'ticks', os.path.basename(tick_dir))
      found = results_table.read_run(tick_dir)
      if not found or not os.path.exists(prefix + '.index'):
        continue
      compute = checkpoint_compute(prefix, config)
      for evaluation, key, scale, title in FIGURE3_METRICS:
        value = results_table.lookup(found.get(evaluation, {}), key)
        if value is not None:
          series.setdefault(title, {}).setdefault(cell.name, []).append((compute, value * scale))
  for panel in series.values():
    for points in panel.values():
      points.sort()
  return series


def collect_baselines(grid: Grid, output_dir: str) -> Dict[str, Dict[str, float]]:
  """Final numbers of cells without pre-training (random init, labels) for Figure 3's dashed lines."""
  from mtssl_tf.evaluation import results_table

  baselines: Dict[str, Dict[str, float]] = {}
  for cell in grid.cells:
    if cell.pretrains or cell.pretrained:
      continue
    found = results_table.read_run(os.path.join(output_dir, cell.name))
    for evaluation, key, scale, title in FIGURE3_METRICS:
      value = results_table.lookup(found.get(evaluation, {}), key)
      if value is not None:
        baselines.setdefault(title, {})[cell.name] = value * scale
  return baselines


def write_figures(grid: Grid, output_dir: str, log: Callable[[str], None] = print) -> List[str]:
  """Figure 3 (if any tick evaluations) and Figure 4 (per lasso pre-training) as PNG + TensorBoard.

  Figures are a by-product: a failure to draw one is logged, never fatal.
  """
  from mtssl_tf.grid import figures

  folder = os.path.join(output_dir, 'figures')
  written = []
  try:
    series = collect_ticks(grid, output_dir)
    if series:
      path = os.path.join(folder, 'figure3.png')
      written.append(figures.figure3(series, path, collect_baselines(grid, output_dir)))
    for cell in grid.cells:
      run_dir = os.path.join(output_dir, cell.name)
      if cell.pretrains and (_run_config(run_dir).get('lasso') or {}).get('enabled'):
        alpha, names = figures.alpha_from_checkpoint(run_dir)
        written.append(figures.figure4(alpha, names, os.path.join(folder, f'figure4_{cell.name}.png')))
    if written:
      figures.write_tensorboard(written, os.path.join(folder, 'tensorboard'))
  except Exception as e:  # noqa: BLE001 - see the docstring: figures never fail a grid.
    log(f'[{grid.name}] figures: not drawn: {type(e).__name__}: {e}')
  for path in written:
    log(f'[{grid.name}] figure: {path}')
  return written


def report_json(report: GridReport) -> str:
  """The report as JSON (tools/run_grid.py writes it to <output_dir>/grid_report.json)."""
  return json.dumps(dataclasses.asdict(report), indent=2)
