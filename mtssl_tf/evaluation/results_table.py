"""Gathers evaluation results JSONs into the papers' table layout (markdown and CSV).

Doersch & Zisserman 2017 Table 2 has one row per pre-training and three columns:
ImageNet frozen linear top-5 recall, PASCAL VOC07 detection mAP, NYU depth % of
pixels with delta < 1.25. We add top-1, the mAP at IoU 0.75, both AP rules, and the
paper's number beside ours where the row names a paper row.

Each run is a folder holding `eval/<name>/results.json` (what `mtssl-eval` writes);
a missing evaluation leaves its cell empty.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

# Doersch Table 2 (ImageNet R@5 / PASCAL mAP / NYU % < 1.25), keyed by row name.
PAPER_TABLE2 = {
  'RP': (59.21, 66.75, 80.54),
  'RP+Col': (66.64, 68.75, 79.87),
  'RP+Ex': (65.24, 69.44, 78.70),
  'RP+MS': (63.73, 68.81, 78.72),
  'RP+Col+Ex': (68.65, 69.48, 80.17),
  'RP+Col+Ex+MS': (69.30, 70.53, 79.25),
  'ImageNet labels': (85.10, 74.17, 80.06),
}


def columns() -> List[Tuple[str, str, str, float, Optional[int]]]:
  """(column title, evaluation, result key, scale, index into the paper triple) of every registered protocol.

  Each protocol declares its columns (`Protocol.columns`), so a newly registered one
  appears in the tables with no edit here.
  """
  from mtssl_tf.evaluation import protocols

  return [
    (c.header, cls.name, c.key, c.scale, c.paper_index) for cls in protocols.protocol_classes() for c in cls.columns
  ]


def read_run(run_dir: str) -> Dict[str, Dict]:
  """{evaluation name: results dict} for every `eval/*/results.json` under `run_dir`."""
  found = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, 'eval', '*', 'results.json'))):
    with tf.io.gfile.GFile(path) as f:
      try:
        found[os.path.basename(os.path.dirname(path))] = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'results file {path!r} is not valid JSON: {e}') from None
  return found


def notes(runs: Sequence[Dict[str, Dict]], evaluations: Optional[Sequence[str]] = None) -> List[str]:
  """The `table_note` strings the runs' results carry (e.g. detection's documented choice on AlexNet), each once.

  Args:
    runs: `read_run` dicts of the table's rows.
    evaluations: only these evaluations' results (the table's columns); None: all.
  """
  found = []
  for evaluations_found in runs:
    for name, results in evaluations_found.items():
      note = results.get('table_note') if evaluations is None or name in evaluations else None
      if isinstance(note, str) and note and note not in found:
        found.append(note)
  return found


def lookup(results: Dict, key: str) -> Optional[float]:
  """A metric by key, also inside a nested 'metrics' dict; None if absent."""
  for source in (results, results.get('metrics') or {}):
    if isinstance(source, dict) and isinstance(source.get(key), (int, float)):
      return float(source[key])
  return None


def cell_text(
  value: Union[None, float, Sequence[float]], scale: float = 100.0, reference: Optional[float] = None
) -> str:
  """One table cell: our value scaled to 2 decimals ('' if missing), the paper's in [brackets] if given.

  Several values (one evaluation at several seeds) show as `mean ± sample standard deviation (n=<count>)`.
  """
  values = [] if value is None else [float(v) for v in np.ravel(value)]  # A number (numpy's too) or a list.
  if not values:
    text = ''
  elif len(values) == 1:
    text = f'{values[0] * scale:.2f}'
  else:
    scaled = np.asarray(values, np.float64) * scale
    text = f'{scaled.mean():.2f} ± {scaled.std(ddof=1):.2f} (n={len(values)})'
  return text if reference is None else f'{text} [{reference:.2f}]'.strip()


def lookup_all(runs: Sequence[Dict[str, Dict]], evaluation: str, key: str) -> List[float]:
  """`lookup` of `evaluation`'s `key` in each of `runs` (`read_run` dicts) that has it."""
  found = (lookup(run.get(evaluation, {}), key) for run in runs)
  return [value for value in found if value is not None]


def format_row(
  evaluations: Dict[str, Dict], columns, reference: Optional[Sequence[float]], more: Sequence[Dict[str, Dict]] = ()
) -> List[str]:
  """The cells of `columns` (`columns()`-shaped tuples) from one run's results, with `reference[index]` beside.

  `more`: the same network's runs at other seeds (`read_run` dicts); a cell with several values shows their mean.
  """
  return [
    cell_text(
      lookup_all([evaluations, *more], evaluation, key),
      scale,
      reference[index] if reference is not None and index is not None else None,
    )
    for _, evaluation, key, scale, index in columns
  ]


def build_rows(runs: Sequence[Tuple[str, str]]) -> Tuple[List[str], List[List[str]]]:
  """Header and rows: one row per (label, run_dir); paper numbers in [brackets]."""
  table = columns()
  header = ['Pre-training'] + [c[0] for c in table]
  rows = [[label] + format_row(read_run(run_dir), table, PAPER_TABLE2.get(label)) for label, run_dir in runs]
  return header, rows


def markdown_lines(header: List[str], rows: List[List[str]]) -> List[str]:
  """The lines of a GitHub-flavoured markdown table."""
  return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(r) + ' |' for r in rows]


def to_markdown(header: List[str], rows: List[List[str]], table_notes: Sequence[str] = ()) -> str:
  """A GitHub-flavoured markdown table, then `table_notes` (`notes`), one per line."""
  lines = markdown_lines(header, rows)
  note = (
    "\n\n[brackets]: the paper's number (Doersch & Zisserman 2017, Table 2)."
    if any('[' in c for r in rows for c in r)
    else ''
  )
  return '\n'.join(lines) + note + ''.join(f'\n\n{n}' for n in table_notes) + '\n'


def to_csv(header: List[str], rows: List[List[str]]) -> str:
  """CSV text of the same table."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def parse_run_args(items: Sequence[str]) -> List[Tuple[str, str]]:
  """'label=dir' or 'dir' (label = folder name) -> [(label, dir)]; missing dirs are errors."""
  runs = []
  for item in items:
    label, sep, path = item.partition('=')
    if not sep:
      label, path = os.path.basename(os.path.normpath(item)), item
    if not tf.io.gfile.isdir(path):
      raise ValueError(f'run folder {path!r} (from {item!r}) does not exist')
    runs.append((label, path))
  return runs
