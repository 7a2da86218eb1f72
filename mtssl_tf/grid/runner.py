"""Runs a grid (see `spec` for the file format) and writes the paper's tables beside ours.

Layout under `output_dir`: `<cell>/` is the cell's pre-training model_dir
(`mtssl-train` output) and holds `eval/<kind>/results.json`; tick evaluations go to
`<cell>/tick_evals/<tick>/eval/<kind>/`; a transfer cell's `<cell>/` is its
`mtssl-transfer` model_dir (`features/`, `clusters/`, `pseudo_labels/`, `student/`);
logs of every subprocess to `<cell>/grid_logs/`; tables to `tables/`, figures to
`figures/` (`outputs`).

Every stage runs as a subprocess (`python -m mtssl_tf.bin.train|evaluate|transfer`):
each gets a fresh TensorFlow (global dtype policies, Keras name scopes, the local
cluster's servers), and a crash stays inside its cell. A stage whose output exists is
skipped (`train_result.json`, `results.json`), and the binaries resume from their own
checkpoints, so rerunning a grid continues where it stopped. A failing cell is reported
and the grid goes on; `GridReport.failures` lists what failed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from mtssl_tf.grid.outputs import (
  PROBE_RESULTS,
  run_config,
  select_checkpoint,
  tick_checkpoints,
  write_figures,
  write_tables,
)
from mtssl_tf.grid.spec import OUTPUT_DIR, SEEDS_DIR, TRANSFER_STEPS, Cell, Grid

RESULTS = 'results.json'
TRAIN_RESULT = 'train_result.json'
_LOG_TAIL_LINES = 15


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
  # Seconds per stage run (`ran`'s names) and of the whole call: a grid's header quotes these as its expected time.
  stage_seconds: Dict[str, float] = dataclasses.field(default_factory=dict)
  wall_seconds: float = 0.0
  skipped: List[str] = dataclasses.field(default_factory=list)
  failures: List[Failure] = dataclasses.field(default_factory=list)
  tables: Dict[str, str] = dataclasses.field(default_factory=dict)
  figures: List[str] = dataclasses.field(default_factory=list)


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

  def _overrides(self, overrides: Sequence[str]) -> List[str]:
    """`--override=` flags, `{output_dir}` replaced by the grid's output folder (e.g. a cache the cells share)."""
    return [f'--override={o.replace(OUTPUT_DIR, self.output_dir)}' for o in overrides]

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
    self.report.stage_seconds[f'{cell.name}/{stage}'] = round(seconds, 1)
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
    argv += self._overrides(self.grid.train_overrides + cell.train_overrides)
    return self._subprocess(cell, 'pretrain', argv)

  def supervised(self, cell: Cell) -> bool:
    run_dir = self.cell_dir(cell)
    if os.path.exists(os.path.join(run_dir, 'eval', 'supervised', RESULTS)):
      self._skip(cell, 'supervised', f'eval/supervised/{RESULTS} exists')
      return True
    return self._evaluate(cell, 'supervised', 'supervised', '', run_dir)

  def _evaluate(self, cell: Cell, stage: str, kind: str, init: str, model_dir: str, last: Sequence[str] = ()) -> bool:
    configs, overrides = self.grid.evaluations.get(kind, ([], []))
    argv = [self.python, '-m', 'mtssl_tf.bin.evaluate', f'--eval={kind}', f'--model_dir={model_dir}']
    if init:
      argv.append(f'--init={init}')
    argv += [f'--config={c}' for c in configs]
    argv += self._overrides(overrides + cell.eval_overrides + list(last))
    return self._subprocess(cell, stage, argv)

  def evaluate(self, cell: Cell, kind: str, init: str, model_dir: str, stage: str, last: Sequence[str] = ()) -> bool:
    """Runs evaluation `kind` of `init` into `model_dir`/eval/`kind` unless its results exist; `last`: overrides."""
    if os.path.exists(os.path.join(model_dir, 'eval', kind, RESULTS)):
      self._skip(cell, stage, f'{RESULTS} exists')
      return True
    return self._evaluate(cell, stage, kind, init, model_dir, last)

  def transfer(self, cell: Cell) -> bool:
    """Knowledge transfer: `mtssl-transfer <transfer_step>`, the teacher cell's network as `extract.init`."""
    run_dir = self.cell_dir(cell)
    # `all` ends with the student's probes; distill and attention write their folder's results.json last.
    done = PROBE_RESULTS if cell.transfer_step == 'all' else os.path.join(TRANSFER_STEPS[cell.transfer_step], RESULTS)
    if os.path.exists(os.path.join(run_dir, done)):
      self._skip(cell, 'transfer', f'{done} exists')
      return True
    argv = [self.python, '-m', 'mtssl_tf.bin.transfer', cell.transfer_step, f'--model_dir={run_dir}']
    argv += [f'--config={c}' for c in self.grid.transfer_configs + (cell.transfer or [])]
    overrides = list(self.grid.transfer_overrides)
    if cell.teacher:
      teacher_dir = self.cell_dir(self.grid.cell(cell.teacher))
      overrides.append(f'extract.init={select_checkpoint(teacher_dir, self.grid.checkpoint)}')
      # The teacher's own trunk shape, over any extract.trunk of the transfer YAML (which
      # `load_transfer_config` applies after the init run's): the checkpoint must fit it.
      trunk = run_config(teacher_dir).get('trunk') or {}
      overrides += [f'extract.trunk.{key}={json.dumps(value)}' for key, value in sorted(trunk.items())]
    argv += self._overrides(overrides + cell.transfer_overrides)
    return self._subprocess(cell, 'transfer', argv)

  def init_source(self, cell: Cell) -> str:
    """What the cell's evaluations start from."""
    if cell.transfers:  # The network the transfer trained (a folder every evaluation of a student reads).
      return os.path.join(self.cell_dir(cell), TRANSFER_STEPS[cell.transfer_step])
    if cell.init:
      return cell.init
    if cell.supervised:
      return os.path.join(self.cell_dir(cell), 'eval', 'supervised')
    source = self.grid.cell(cell.pretrained) if cell.pretrained else cell
    return select_checkpoint(self.cell_dir(source), self.grid.checkpoint)

  def run_cell(self, cell: Cell, failed: set) -> bool:
    source = cell.pretrained or cell.teacher
    if source in failed:
      self.report.failures.append(Failure(cell.name, 'pretrain', f'its pre-training cell {source!r} failed'))
      self.log(f'[{self.grid.name}] {cell.name}: skipped, cell {source!r} failed')
      return False
    try:
      if cell.transfers and not self.transfer(cell):
        return False
      if cell.pretrains and not self.pretrain(cell):
        return False
      if cell.supervised and not self.supervised(cell):
        return False
      init = self.init_source(cell)
    except (FileNotFoundError, ValueError) as e:  # The source run lacks the checkpoint the grid asks for.
      self.report.failures.append(Failure(cell.name, 'checkpoint', str(e)))
      self.log(f'[{self.grid.name}] {cell.name}: FAILED: {e}')
      return False
    ok = True
    for kind in cell.evaluate:
      ok &= self.evaluate(cell, kind, init, self.cell_dir(cell), f'eval_{kind}')
      for seed in self.grid.eval_seeds.get(kind, []):  # Last, so no cell override can undo the seed.
        model_dir = os.path.join(self.cell_dir(cell), SEEDS_DIR, str(seed))
        ok &= self.evaluate(cell, kind, init, model_dir, f'eval_{kind}_seed{seed}', [f'{kind}.seed={seed}'])
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


def _dependencies_first(cells: List[Cell]) -> List[Cell]:
  """`cells` in grid order, except that a cell's pretrained/teacher source comes before it."""
  by_name = {c.name: c for c in cells}
  ordered: List[Cell] = []
  placed: set = set()

  def place(cell: Cell) -> None:
    if cell.name in placed:
      return
    placed.add(cell.name)
    source = by_name.get(cell.pretrained or cell.teacher)
    if source is not None:
      place(source)
    ordered.append(cell)

  for cell in cells:
    place(cell)
  return ordered


def run_grid(
  grid: Grid,
  output_dir: str,
  cells: Optional[Sequence[str]] = None,
  log: Callable[[str], None] = print,
  python: str = sys.executable,
  figures: bool = True,
  parallel: int = 1,
) -> GridReport:
  """Runs (or resumes) every cell of `grid` under `output_dir`, then writes tables and figures.

  Args:
    grid: the parsed grid.
    output_dir: root folder of the cells' runs, tables and figures.
    cells: only these cells (their `pretrained` sources must have run or be listed).
    log: progress lines go here.
    python: interpreter for the `mtssl_tf.bin` subprocesses.
    figures: also draw Figure 3 (cells with tick evaluations), Figure 4 (lasso runs) and
      Figure 5 (transfer cells).
    parallel: cells run at once. Each stage is still one subprocess; on a 2-core machine
      two small cells at once finish about 1.3x sooner than one after the other (measured
      with the miniature's linear evaluation), as one tiny-model process does not keep
      both cores busy. A cell that reuses another's network waits for it.

  Returns:
    The report; `report.failures` is empty when every stage succeeded.

  Raises:
    KeyError: a name in `cells` is not a cell of the grid.
    ValueError: parallel < 1.
  """
  selected = _dependencies_first([grid.cell(n) for n in cells] if cells else list(grid.cells))
  if parallel < 1:
    raise ValueError(f'parallel: at least 1 cell at a time, got {parallel}')
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  runner = _Runner(grid, output_dir, log, python, env)
  os.makedirs(runner.output_dir, exist_ok=True)
  failed: set = set()
  finished = {c.name: threading.Event() for c in selected}
  lock = threading.Lock()
  counts = {'started': 0, 'done': 0}
  start = time.time()

  def work(cell: Cell) -> None:
    source = cell.pretrained or cell.teacher
    if source in finished:
      finished[source].wait()  # Started earlier (dependencies first), so this cannot deadlock.
    with lock:
      counts['started'] += 1
      log(f'[{grid.name}] cell {counts["started"]}/{len(selected)}: {cell.name}')
    try:
      if not runner.run_cell(cell, failed):
        failed.add(cell.name)
    finally:
      finished[cell.name].set()
      with lock:
        counts['done'] += 1
        done, elapsed = counts['done'], time.time() - start
        left = len(selected) - done
        # A rough ETA: cells differ (a reused network has no pre-training), and skipped ones cost nothing.
        eta = f', about {elapsed / done * left / 60:.0f} min left at this pace' if left else ''
        log(f'[{grid.name}] {done}/{len(selected)} cells, {elapsed / 60:.1f} min{eta}')

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    for future in [pool.submit(work, cell) for cell in selected]:
      future.result()
  report = runner.report
  report.wall_seconds = round(time.time() - start, 1)
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
    log(f'[{grid.name}] all {len(selected)} cell(s) done: {len(report.ran)} stage(s) run '
        f'({sum(report.stage_seconds.values()) / 60:.1f} min of stage time, {report.wall_seconds / 60:.1f} min wall), '
        f'{len(report.skipped)} skipped as finished')  # fmt: skip
  return report


def report_json(report: GridReport) -> str:
  """The report as JSON (tools/run_grid.py writes it to <output_dir>/grid_report.json)."""
  return json.dumps(dataclasses.asdict(report), indent=2)
