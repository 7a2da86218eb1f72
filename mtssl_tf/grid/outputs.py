"""What a grid's runs left behind: compute at checkpoints, the paper tables, figure data.

Everything here reads finished outputs under a grid's output_dir (see `spec`) and
writes tables and figures; nothing runs a stage. Doersch's tables read each cell's
`eval/<kind>/results.json`; Noroozi's (the `cc_*` tables) read a transfer cell's
`student/probe/results.json`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from mtssl_tf.grid import paper
from mtssl_tf.grid.spec import SEEDS_DIR, Grid

PROBE_RESULTS = os.path.join('student', 'probe', 'results.json')

# ----- checkpoints and compute -----


def run_config(run_dir: str) -> dict:
  """A run's config.yaml as a dict ({} if it has none)."""
  path = os.path.join(run_dir, 'config.yaml')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return yaml.safe_load(f) or {}


def pretraining_config(run_dir: str):
  """A pre-training run's config.yaml through the typed loader (`ExperimentConfig`).

  Raises:
    FileNotFoundError: the run has no config.yaml.
    ConfigError: it does not load (the key and file are named).
  """
  from mtssl_tf.configs.base import load_config
  from mtssl_tf.train.experiment import ExperimentConfig

  path = os.path.join(run_dir, 'config.yaml')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{run_dir}: no config.yaml (not a pre-training run?)')
  return load_config(ExperimentConfig, [path])


def task_costs(cfg) -> Dict[str, float]:
  """Enabled task -> cost_per_step of a pre-training config."""
  from mtssl_tf.tasks import TASKS

  sections = {name: getattr(cfg.tasks, name) for name in TASKS}
  return {name: float(c.cost_per_step) for name, c in sections.items() if c.enabled}


def checkpoint_compute(prefix: str, cfg) -> float:
  """Pre-training compute at a checkpoint: sum over tasks of its steps x cost_per_step.

  The step counters are the checkpoint's `CostTracker` (`train.cost.compute_at`); the
  costs come from the run's typed config, so the unit is the config's (GPU-hours at
  paper scale).
  """
  from mtssl_tf.train.cost import compute_at

  return compute_at(prefix, task_costs(cfg))


def tick_checkpoints(run_dir: str) -> List[Tuple[str, float]]:
  """[(checkpoint prefix, compute)] of a run's compute-tick checkpoints, by compute."""
  import tensorflow as tf

  state = tf.train.get_checkpoint_state(os.path.join(run_dir, 'ticks'))
  if not state:
    return []
  config = pretraining_config(run_dir)
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
  tick = float(pretraining_config(run_dir).train.cost_tick)
  for prefix, compute in tick_checkpoints(run_dir):
    if compute >= k * tick - 1e-9:
      return prefix
  raise FileNotFoundError(f'{run_dir}: no tick checkpoint at compute >= {k} x {tick:g}; the run stopped earlier')


# ----- tables -----


def _columns(table: str) -> List[Tuple[str, str, str, float, Optional[int]]]:
  """results_table.columns() with the paper's triple mapped to this table's ImageNet metric."""
  from mtssl_tf.evaluation import results_table

  columns = []
  for title, evaluation, key, scale, index in results_table.columns():
    if evaluation == 'linear' and key in ('top1', 'top5'):
      index = 0 if key == paper.IMAGENET_METRIC[table] else None
    columns.append((title, evaluation, key, scale, index))
  if paper.IMAGENET_METRIC[table] == 'top1':  # Table 1 leads with top-1, as the paper.
    columns[0], columns[1] = columns[1], columns[0]
  return columns


def read_probes(run_dir: str) -> Dict[str, float]:
  """{layer: top-1} of a transfer cell's student probes; {} if the probe has not run."""
  path = os.path.join(run_dir, PROBE_RESULTS)
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    probes = json.load(f).get('probes') or {}
  return {layer: float(scores['top1']) for layer, scores in probes.items() if 'top1' in scores}


def seed_runs(output_dir: str, cell_name: str) -> List[Dict[str, Dict]]:
  """`read_run` of the cell's evaluations at the grid's extra seeds, one per `<cell>/seeds/<seed>` folder."""
  from mtssl_tf.evaluation import results_table

  folders = glob.glob(os.path.join(output_dir, cell_name, SEEDS_DIR, '*'))
  return [results_table.read_run(f) for f in sorted(folders)]


def cc_table_rows(grid: Grid, output_dir: str, table: str) -> Tuple[List[str], List[List[str]]]:
  """Header and rows of a Noroozi table, the paper's numbers in [brackets].

  Tables 1 and 2: the student's probe top-1 per layer, then the paper's metric (VOC07
  classification mAP after fine-tuning) where the cell evaluated `voc07_cls`. Tables 3, 5
  and 6: `paper.CC_EVAL_COLUMNS` from the cell's evaluations (Table 3: classification,
  detection SS / MS, segmentation; 5: Places probes per layer; 6: nonlinear probes per
  frozen layer). Table 4: the probes, each layer bracketed.
  """
  from mtssl_tf.evaluation import results_table
  from mtssl_tf.evaluation.results_table import cell_text

  evaluated = paper.CC_EVAL_COLUMNS.get(table)
  if evaluated:
    header = ['Row', 'Cell'] + [title for title, _, _ in evaluated]
  else:
    header = ['Row', 'Cell'] + [f'{layer} top-1 (%)' for layer in paper.CC_LAYERS]
    header += [] if table == 'cc_table4' else ['VOC07 cls. mAP (%)']
  rows = []
  for cell in grid.cells:
    label = cell.rows.get(table)
    if label is None:
      continue
    found = results_table.read_run(os.path.join(output_dir, cell.name))
    runs = [found] + seed_runs(output_dir, cell.name)
    reference = paper.CC_TABLES[table].get(label)
    row = [label, cell.name]
    if evaluated:
      for i, (_, evaluation, key) in enumerate(evaluated):
        value = results_table.lookup_all(runs, evaluation, key)
        row.append(cell_text(value, 100.0, reference[i] if reference else None))
      rows.append(row)
      continue
    probes = read_probes(os.path.join(output_dir, cell.name))
    per_layer = table == 'cc_table4'
    row += [cell_text(probes.get(layer), 100.0, reference[i] if per_layer and reference else None)
            for i, layer in enumerate(paper.CC_LAYERS)]  # fmt: skip
    if not per_layer:
      mean_ap = results_table.lookup_all(runs, 'voc07_cls', 'mAP')
      row.append(cell_text(mean_ap, 100.0, reference[0] if reference else None))
    rows.append(row)
  return header, rows


def table_rows(grid: Grid, output_dir: str, table: str) -> Tuple[List[str], List[List[str]]]:
  """Header and rows of one paper table: our numbers, the paper's in [brackets].

  Rows follow the grid's cell order; a missing evaluation leaves its cell empty (or
  just the paper's number). Noroozi's tables (`cc_*`) come from `cc_table_rows`.
  """
  from mtssl_tf.evaluation import results_table

  if table in paper.CC_TABLES:
    return cc_table_rows(grid, output_dir, table)

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
    more = seed_runs(output_dir, cell.name)
    rows.append([label, cell.name] + results_table.format_row(found, columns, triple, more))
  return header, rows


def table_notes(grid: Grid, output_dir: str, table: str) -> List[str]:
  """The `table_note`s of the results a table shows (its rows' cells, its columns' evaluations), each once.

  E.g. detection of an AlexNet / VGG16 (RPN proposals in place of Noroozi's selective search, issue 16).
  Noroozi's tables read the evaluations their columns show (Table 3: cls., det., seg.; Tables 1-2: cls.).
  """
  from mtssl_tf.evaluation import results_table

  if table in paper.CC_EVAL_COLUMNS:
    shown = sorted({evaluation for _, evaluation, _ in paper.CC_EVAL_COLUMNS[table]})
  elif table in paper.CC_TABLES:  # The probes, and Tables 1-2's fine-tuned classification.
    shown = [] if table == 'cc_table4' else ['voc07_cls']
  else:
    shown = [c[1] for c in _columns(table)]
  runs = [results_table.read_run(os.path.join(output_dir, c.name)) for c in grid.cells if table in c.rows]
  return results_table.notes(runs, shown)


def table_markdown(table: str, header: List[str], rows: List[List[str]], notes: Sequence[str] = ()) -> str:
  """A markdown table under the paper table's title, with a note on the bracketed numbers, then `notes`."""
  from mtssl_tf.evaluation.results_table import markdown_lines

  title = paper.CC_TITLES.get(table) or paper.TITLES[table]
  lines = [f'## {title}', ''] + markdown_lines(header, rows)
  number = table.rsplit('table', 1)[1]
  if table in paper.CC_TABLES:
    note = f"\n[brackets]: the paper's number (Noroozi et al. 2018, Table {number})."
    if table in ('cc_table1', 'cc_table2'):
      note += (' The paper reports VOC07 classification mAP of the fine-tuned student (our last column,'
               ' where the cell ran voc07_cls); the conv columns are frozen linear probes of the student'
               ' on each layer (its Table 4 protocol).')  # fmt: skip
  else:
    note = f"\n[brackets]: the paper's number (Doersch & Zisserman 2017, Table {number})."
  if table == 'table1' and not paper.TABLE1_VERIFIED:
    note += (' Table 1 was transcribed from the PDF; the text confirms its orderings and two of its'
             ' numbers (paper.table1_claims), not every digit.')  # fmt: skip
  return '\n'.join(lines) + '\n' + note + ''.join(f'\n{n}' for n in notes) + '\n'


def write_tables(grid: Grid, output_dir: str) -> Dict[str, str]:
  """Writes `tables/<table>.md` and `.csv` for each paper table the grid has rows for, and `tables/all.md`.

  Returns:
    {table name or 'all': markdown path}.
  """
  from mtssl_tf.evaluation import results_table

  folder = os.path.join(output_dir, 'tables')
  os.makedirs(folder, exist_ok=True)
  written, parts = {}, []
  for table in paper.ALL_TABLES:
    if not any(table in c.rows for c in grid.cells):
      continue
    header, rows = table_rows(grid, output_dir, table)
    markdown = table_markdown(table, header, rows, table_notes(grid, output_dir, table))
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
  # Not in the paper: the kNN monitor's number at the same ticks (issue 17), where a grid evaluates it.
  ('knn', 'top1_k20', 100.0, 'kNN top-1, k=20 (%)'),
)


def collect_ticks(grid: Grid, output_dir: str) -> Dict[str, Dict[str, List[Tuple[float, float]]]]:
  """Figure 3's data: {panel title: {cell: [(compute, metric), ...]}} from the tick evaluations."""
  from mtssl_tf.evaluation import results_table

  series: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
  for cell in grid.cells:
    run_dir = os.path.join(output_dir, cell.name)
    if not cell.ticks or not os.path.isdir(os.path.join(run_dir, 'ticks')):
      continue
    config = pretraining_config(run_dir)
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
    if cell.pretrains or cell.pretrained or cell.transfers:
      continue
    found = results_table.read_run(os.path.join(output_dir, cell.name))
    for evaluation, key, scale, title in FIGURE3_METRICS:
      value = results_table.lookup(found.get(evaluation, {}), key)
      if value is not None:
        baselines.setdefault(title, {})[cell.name] = value * scale
  return baselines


def write_figures(grid: Grid, output_dir: str, log: Callable[[str], None] = print) -> List[str]:
  """Figures 3, 4 (per lasso pre-training), 5 and Noroozi's 4 (per transfer cell) as PNG + TensorBoard.

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
      if cell.pretrains and pretraining_config(run_dir).lasso.enabled:
        alpha, names = figures.alpha_from_checkpoint(run_dir)
        written.append(figures.figure4(alpha, names, os.path.join(folder, f'figure4_{cell.name}.png')))
    written += _figure5(grid, output_dir, folder)
    written += figures.student_filter_figures([c.name for c in grid.cells if c.transfers], output_dir, folder)
    if written:
      figures.write_tensorboard(written, os.path.join(folder, 'tensorboard'))
  except Exception as e:  # noqa: BLE001 - see the docstring: figures never fail a grid.
    log(f'[{grid.name}] figures: not drawn: {type(e).__name__}: {e}')
  for path in written:
    log(f'[{grid.name}] figure: {path}')
  return written


def _figure5(grid: Grid, output_dir: str, folder: str) -> List[str]:
  from mtssl_tf.grid import figures
  from mtssl_tf.transfer import samples

  written = []
  for cell in grid.cells:
    pseudo = os.path.join(output_dir, cell.name, 'pseudo_labels')
    if cell.transfers and os.path.isdir(pseudo):
      clusters = samples.nearest_to_centres(pseudo)
      title = f'{cell.name}: images nearest to cluster centres (largest clusters)'
      written.append(figures.figure5(clusters, os.path.join(folder, f'figure5_{cell.name}.png'), title))
  return written
