"""The `filters` protocol: a network's conv1 filters as an image grid (Noroozi et al. 2018, Figure 4).

Noroozi et al. 2018 (§5.3, Figure 4) show the `conv1` filters of the cluster classification
network (the AlexNet student) trained on the pseudo-labels of different teachers: a random
network, HOG, Context, Jigsaw++ on AlexNet and on VGG16. This protocol draws that figure for
any network `mtssl-eval` can load: a student folder (`--init=<transfer run>/student`, its
AlexNet conv1, or a ResNet-v2 student's stem conv) or a trunk (a run, checkpoint, SavedModel
or 'random': its stem conv).

Drawing (`filter_grid`), the usual rendering of first-layer filters:

* each filter [kh, kw, C] is normalised on its own to [0, 1] ((w - min) / (max - min); a
  constant filter is drawn mid-grey), so every filter uses the full range whatever its
  norm; RGB filters (C = 3) are drawn in colour, others as the grey mean over their inputs;
* filters are laid out row-major in a grid of `columns` columns (0: ceil(sqrt(N))), the
  last row padded with empty cells;
* each filter pixel becomes an `upscale` x `upscale` block (nearest neighbour), so 11 x 11
  AlexNet filters are visible; cells are separated (and framed) by `padding` pixels of
  `BORDER` (white, our documented choice).

The image goes to `<model_dir>/eval/filters/<layer>_filters.png` and to TensorBoard
(`filters/<layer>`) in the same folder. The grid (`grid/figures.py`) draws one per transfer cell.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.evaluation.protocol import Context, Protocol

NAME = 'filters'
FIRST = 'conv1'  # The first convolution, whatever the network calls it.
BORDER = 1.0  # Value of the separating pixels, on the [0, 1] display scale.


@dataclasses.dataclass
class FiltersConfig(Config):
  """The filter image (module docstring).

  Attributes:
    layer: 'conv1' = the network's first convolution (AlexNet conv1, the ResNet stem conv);
      an AlexNet's conv2..conv5 by name are drawn as grey input-channel means.
    columns: filters per row; 0 = ceil(sqrt(number of filters)).
    upscale: display pixels per filter pixel (nearest neighbour).
    padding: pixels between cells and around the grid.
  """

  layer: str = FIRST
  columns: int = 0
  upscale: int = 4
  padding: int = 1

  def validate(self) -> None:
    for key, low in (('columns', 0), ('upscale', 1), ('padding', 0)):
      if getattr(self, key) < low:
        raise ConfigError(f'{NAME}.{key}: must be >= {low}, got {getattr(self, key)}')
    if not self.layer:
      raise ConfigError(f'{NAME}.layer: empty')


def normalise_filters(kernel: np.ndarray) -> np.ndarray:
  """[kh, kw, C, N] -> [N, kh, kw, C] float32, each filter mapped to [0, 1] by its own min and max."""
  w = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
  low = w.min(axis=(1, 2, 3), keepdims=True)
  span = w.max(axis=(1, 2, 3), keepdims=True) - low
  out = np.where(span > 0, (w - low) / np.where(span > 0, span, 1.0), 0.5)
  return out.astype(np.float32)


def filter_grid(kernel: np.ndarray, columns: int = 0, upscale: int = 4, padding: int = 1) -> np.ndarray:
  """uint8 [rows * (kh * upscale + padding) + padding, columns * (kw * upscale + padding) + padding, 3].

  Args:
    kernel: a conv kernel [kh, kw, C, N] (Keras layout).
    columns: filters per row; 0 = ceil(sqrt(N)).
    upscale: display pixels per filter pixel.
    padding: separating pixels (value `BORDER`).

  Raises:
    ValueError: not a 4-D kernel.
  """
  kernel = np.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f'filter_grid: need a [kh, kw, in, out] kernel, got shape {kernel.shape}')
  filters = normalise_filters(kernel)
  if filters.shape[-1] != 3:  # Not RGB: the grey mean over the inputs.
    filters = np.repeat(filters.mean(axis=-1, keepdims=True), 3, axis=-1)
  count, height, width = filters.shape[:3]
  columns = columns or math.ceil(math.sqrt(count))
  rows = math.ceil(count / columns)
  cell_h, cell_w = height * upscale + padding, width * upscale + padding
  image = np.full((rows * cell_h + padding, columns * cell_w + padding, 3), BORDER, np.float32)
  big = filters.repeat(upscale, axis=1).repeat(upscale, axis=2)
  for i in range(count):
    top, left = padding + (i // columns) * cell_h, padding + (i % columns) * cell_w
    image[top : top + height * upscale, left : left + width * upscale] = big[i]
  return np.round(image * 255.0).astype(np.uint8)


def conv_kernel(model: Any, layer: str = FIRST) -> tf.Variable:
  """The kernel of `layer` of a student, an AlexNet or a ResNet-v2 trunk.

  Raises:
    ConfigError: the network has no such convolution.
  """
  convs = getattr(model, 'convs', None)
  if isinstance(convs, dict) and layer in convs:  # AlexNet (transfer/models.py, trunk/alexnet.py).
    return convs[layer].kernel
  if layer == FIRST:
    for holder in (model, getattr(model, 'trunk', None)):  # A registry trunk, or a student holding one.
      if holder is not None and hasattr(holder, 'first_conv'):
        return holder.first_conv.kernel
    for sub in getattr(model, 'submodules', ()):  # Any other Keras network: the first Conv2D it lists.
      if isinstance(sub, tf.keras.layers.Conv2D):
        return sub.kernel
  raise ConfigError(f'{NAME}.layer: {type(model).__name__} has no convolution {layer!r}')


def load_network(init: str, ctx: Optional[Context] = None):
  """A student folder's network (`load_student`), else the trunk `mtssl-eval` loads from `init`."""
  from mtssl_tf.evaluation.voc_classification import student_meta

  if student_meta(init):
    from mtssl_tf.transfer.student import load_student

    return load_student(init), 'student'
  if ctx is None:
    raise ConfigError(f'init: {init!r} is not a student folder (no student.json)')
  return ctx.trunk(), 'trunk'


def write_filters(
  kernel, path: str, cfg: Optional[FiltersConfig] = None, log_dir: str = '', tag: str = ''
) -> np.ndarray:
  """Draws `kernel` (`filter_grid`) to the PNG `path` and, with `log_dir`, as TensorBoard image `tag`."""
  cfg = cfg or FiltersConfig()
  image = filter_grid(np.asarray(kernel), cfg.columns, cfg.upscale, cfg.padding)
  tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
  tf.io.write_file(path, tf.io.encode_png(image))
  if log_dir:
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
      tf.summary.image(tag or f'{NAME}/{cfg.layer}', image[None], step=0)
    writer.flush()
    writer.close()
  return image


def write_student_filters(student_dir: str, path: str, cfg: Optional[FiltersConfig] = None) -> str:
  """The grid's hook: the conv1 filters of the student in `student_dir` as the PNG `path`; returns `path`."""
  model, _ = load_network(student_dir)
  write_filters(conv_kernel(model, (cfg or FiltersConfig()).layer).numpy(), path, cfg)
  return path


class FiltersProtocol(Protocol):
  """Noroozi et al. 2018 Figure 4: conv1 filters as an image grid (PNG + TensorBoard)."""

  name = NAME
  summary = "a network's conv1 filters as an image grid, PNG + TensorBoard (Noroozi Figure 4)"
  config_class = FiltersConfig
  # No data: both source fields are `layer` (never empty), so the runner makes no synthetic world for it.
  source_fields = ('layer', 'layer')
  headline = ('png', 'shape')

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: FiltersConfig = ctx.section
    cfg.validate()
    model, kind = load_network(ctx.init, ctx)
    kernel = conv_kernel(model, cfg.layer).numpy()
    path = os.path.join(ctx.out_dir, f'{cfg.layer}_filters.png')
    image = write_filters(kernel, path, cfg, ctx.out_dir)
    shape: Tuple[int, ...] = tuple(int(d) for d in kernel.shape)
    results = {
      'png': path,
      'shape': list(shape),
      'image_size': [int(image.shape[0]), int(image.shape[1])],
      'protocol': {
        'network': f'{kind} from {ctx.init}',
        'layer': cfg.layer,
        'drawing': f'per-filter min-max to [0, 1], {"RGB" if shape[2] == 3 else "grey input mean"}, '
        f'x{cfg.upscale} nearest neighbour, {cfg.padding} px white borders',
      },
    }  # fmt: skip
    ctx.write_results(results)
    if ctx.progress:
      logging.info('%s: %d %dx%d filters of %s -> %s', NAME, shape[3], shape[0], shape[1], cfg.layer, path)
    return results
