"""The paper's figures as PNG files (matplotlib) and TensorBoard images.

* Figure 3: each evaluation's metric against pre-training compute, one curve per cell,
  from the evaluations of the compute-tick checkpoints (`runner.collect_ticks`);
  controls without pre-training (random init, ImageNet labels) as dashed lines.
* Figure 4: the lasso |alpha| matrix, one row per task, one column per block-3 unit
  (shallowest at the left), whiter = larger, on a square-root scale so that small
  nonzero weights stay visible (the paper's "nonlinear scale").
* Figure 5 (Noroozi et al. 2018): for some clusters of a knowledge-transfer run, the
  images nearest to the centre, one row per cluster (`transfer.samples`).
* Noroozi et al. 2018 Figure 4: the conv1 filters of each transfer cell's student (the
  cluster classification network) as an image grid (`evaluation.filters`), one PNG per cell.

Sizes are exact: figures are saved at `DPI` without tight cropping, so a PNG is
figsize x DPI pixels (`figure3_size`, `figure4_size`).
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

DPI = 100
_PANEL_INCHES = (4.0, 3.2)
_CELL_INCHES = 0.3
_MARGIN_INCHES = (2.2, 1.0)  # Left (task names) + colour bar; top + bottom.


def _pyplot():
  # Agg: no display on training machines; imported lazily so the grid runs without matplotlib.
  import matplotlib

  matplotlib.use('Agg', force=True)
  import matplotlib.pyplot as plt

  return plt


def figure3_size(num_panels: int) -> Tuple[int, int]:
  """(width, height) in pixels of a Figure 3 with `num_panels` panels."""
  return int(round(_PANEL_INCHES[0] * num_panels * DPI)), int(round(_PANEL_INCHES[1] * DPI))


def figure4_size(num_rows: int, num_units: int) -> Tuple[int, int]:
  """(width, height) in pixels of a Figure 4 of `num_rows` tasks x `num_units` units."""
  width = _MARGIN_INCHES[0] + _CELL_INCHES * num_units
  height = _MARGIN_INCHES[1] + _CELL_INCHES * num_rows
  return int(round(width * DPI)), int(round(height * DPI))


def figure3(
  series: Mapping[str, Mapping[str, Sequence[Tuple[float, float]]]],
  path: str,
  baselines: Optional[Mapping[str, Mapping[str, float]]] = None,
  x_label: str = 'pre-training compute (cost_per_step units; GPU-hours at paper scale)',
) -> str:
  """Draws metric vs compute, one panel per metric, one curve per cell.

  Args:
    series: {panel title: {curve label: [(compute, value), ...]}}.
    path: PNG file to write (folders are created).
    baselines: {panel title: {label: value}} drawn as horizontal dashed lines.
    x_label: the x axis' title.

  Returns:
    `path`.

  Raises:
    ValueError: no panel to draw.
  """
  if not series:
    raise ValueError('figure 3: no series to draw')
  plt = _pyplot()
  panels = list(series)
  width, height = figure3_size(len(panels))
  fig, axes = plt.subplots(1, len(panels), figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
  for ax, title in zip(axes[0], panels):
    for label, points in series[title].items():
      xs, ys = zip(*sorted(points)) if points else ((), ())
      ax.plot(xs, ys, marker='o', markersize=3, label=label)
    for label, value in ((baselines or {}).get(title) or {}).items():
      ax.axhline(value, linestyle='--', linewidth=1, color='gray')
      ax.annotate(label, (0.01, value), xycoords=('axes fraction', 'data'), fontsize=7, color='gray')
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(x_label, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.tight_layout()
  return _save(fig, path)


def figure4(alpha, row_names: Sequence[str], path: str, title: str = 'lasso |alpha|') -> str:
  """Draws the |alpha| heat map: rows = tasks, columns = block-3 units 1..M.

  Args:
    alpha: [N, M] array (or tensor).
    row_names: N task names.
    path: PNG file to write.
    title: the figure title.

  Returns:
    `path`.

  Raises:
    ValueError: alpha is not 2-D, or the names do not match its rows.
  """
  a = np.abs(np.asarray(alpha, np.float32))
  if a.ndim != 2:
    raise ValueError(f'figure 4: alpha must be [tasks, units], got shape {a.shape}')
  if len(row_names) != a.shape[0]:
    raise ValueError(f'figure 4: {len(row_names)} row names for {a.shape[0]} rows')
  plt = _pyplot()
  width, height = figure4_size(*a.shape)
  fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  # Fixed axes rectangle (not tight_layout) keeps one cell per _CELL_INCHES.
  left, bottom = 1.6 / (width / DPI), 0.55 / (height / DPI)
  ax = fig.add_axes(
    [left, bottom, _CELL_INCHES * a.shape[1] / (width / DPI), _CELL_INCHES * a.shape[0] / (height / DPI)]
  )
  scaled = np.sqrt(a / max(float(a.max()), 1e-12))
  image = ax.imshow(scaled, cmap='gray', vmin=0.0, vmax=1.0, aspect='auto', interpolation='nearest')
  ax.set_yticks(range(a.shape[0]), [str(n) for n in row_names], fontsize=7)
  ax.set_xticks(range(a.shape[1]), [str(i + 1) for i in range(a.shape[1])], fontsize=6)
  ax.set_xlabel('block-3 unit', fontsize=7)
  ax.set_title(title, fontsize=8)
  bar = fig.add_axes([left + _CELL_INCHES * a.shape[1] / (width / DPI) + 0.02, bottom, 0.02, ax.get_position().height])
  colorbar = fig.colorbar(image, cax=bar)
  colorbar.ax.tick_params(labelsize=6)
  colorbar.set_label('sqrt(|alpha| / max |alpha|)', fontsize=6)
  return _save(fig, path)


def figure5_size(num_rows: int, per_row: int) -> Tuple[int, int]:
  """(width, height) in pixels of a Figure 5 of `num_rows` clusters x `per_row` images."""
  width = _FIG5_LABEL_INCHES + _FIG5_IMAGE_INCHES * per_row
  height = _FIG5_TITLE_INCHES + _FIG5_IMAGE_INCHES * num_rows
  return int(round(width * DPI)), int(round(height * DPI))


_FIG5_IMAGE_INCHES = 0.8
_FIG5_LABEL_INCHES = 1.2
_FIG5_TITLE_INCHES = 0.4


def figure5(samples: Sequence, path: str, title: str = 'images nearest to cluster centres') -> str:
  """Draws each cluster's nearest images in a row, labelled with the cluster and its size.

  Args:
    samples: `transfer.samples.ClusterSamples`, one per row.
    path: PNG file to write.
    title: the figure title.

  Returns:
    `path`.

  Raises:
    ValueError: no clusters.
  """
  if not samples:
    raise ValueError('figure 5: no clusters to draw')
  plt = _pyplot()
  per_row = max(len(s.images) for s in samples)
  width, height = figure5_size(len(samples), per_row)
  fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  fig.suptitle(title, fontsize=8, y=1.0 - 0.1 / (height / DPI), va='top')
  cell_w, cell_h = _FIG5_IMAGE_INCHES / (width / DPI), _FIG5_IMAGE_INCHES / (height / DPI)
  left = _FIG5_LABEL_INCHES / (width / DPI)
  for row, cluster in enumerate(samples):
    bottom = 1.0 - _FIG5_TITLE_INCHES / (height / DPI) - (row + 1) * cell_h
    fig.text(0.02, bottom + cell_h / 2, f'cluster {cluster.cluster}\n({cluster.size} images)', fontsize=7,
             va='center')  # fmt: skip
    for col, image in enumerate(cluster.images):
      ax = fig.add_axes([left + col * cell_w, bottom, cell_w * 0.95, cell_h * 0.95])
      ax.imshow(image, interpolation='nearest')
      ax.axis('off')
  return _save(fig, path)


def student_filter_figures(cell_names: Sequence[str], output_dir: str, folder: str) -> List[str]:
  """Noroozi Figure 4: `<folder>/noroozi_figure4_<cell>.png` for each named cell with a trained student.

  Args:
    cell_names: the transfer cells' names (their runs are `<output_dir>/<name>`).
    output_dir: the grid's output folder.
    folder: where the PNG files go.

  Returns:
    The files written (cells whose `student/` has no checkpoint yet are left out).
  """
  import tensorflow as tf

  from mtssl_tf.evaluation import filters

  written = []
  for name in cell_names:
    student = os.path.join(output_dir, name, 'student')
    if tf.train.latest_checkpoint(os.path.join(student, 'checkpoints')):
      written.append(filters.write_student_filters(student, os.path.join(folder, f'noroozi_figure4_{name}.png')))
  return written


def _save(fig, path: str) -> str:
  plt = _pyplot()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def alpha_from_checkpoint(source: str) -> Tuple[np.ndarray, List[str]]:
  """The pre-training lasso alpha (rows at unit L2 norm) and its task names, from a checkpoint.

  Args:
    source: a checkpoint prefix, a checkpoint folder, or a run dir (its `checkpoints/`).
      Row names come from the run's config.yaml (the enabled tasks, in registry order,
      which is the order of the lasso rows); without it rows are named task_0...

  Raises:
    FileNotFoundError: no checkpoint, or a checkpoint without a lasso.
  """
  import tensorflow as tf

  from mtssl_tf.evaluation import backbone

  kind, prefix = backbone.resolve_source(source)
  if kind != 'checkpoint':
    raise FileNotFoundError(f'{source!r}: need a pre-training checkpoint with a lasso, found {kind}')
  reader = tf.train.load_checkpoint(prefix)
  keys = [k for k in reader.get_variable_to_shape_map() if k.startswith('model/lasso/') and 'alpha' in k]
  keys = [k for k in keys if k.endswith('/.ATTRIBUTES/VARIABLE_VALUE') and 'OPTIMIZER_SLOT' not in k]
  if not keys:
    raise FileNotFoundError(f'checkpoint {prefix!r} has no lasso (model/lasso/...alpha)')
  raw = np.asarray(reader.get_tensor(sorted(keys)[0]), np.float32)
  alpha = raw / np.sqrt(np.sum(raw**2, axis=1, keepdims=True) + 1e-12)  # As LassoMix.alpha().
  tasks = backbone.run_config_section(prefix, 'tasks')
  names = _enabled_tasks(tasks)
  if len(names) != alpha.shape[0]:
    names = [f'task_{i}' for i in range(alpha.shape[0])]
  return alpha, names


def _enabled_tasks(tasks: Dict) -> List[str]:
  from mtssl_tf.tasks import TASKS

  return [n for n in TASKS if isinstance(tasks.get(n), dict) and tasks[n].get('enabled')]


def write_tensorboard(paths: Sequence[str], log_dir: str, step: int = 0) -> str:
  """Writes PNG files as TensorBoard images (tag = file name without extension).

  Returns:
    `log_dir`.
  """
  import tensorflow as tf

  writer = tf.summary.create_file_writer(log_dir)
  with writer.as_default():
    for path in paths:
      image = tf.image.decode_png(tf.io.read_file(path), channels=3)
      tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None], step=step)
  writer.flush()
  writer.close()
  return log_dir
