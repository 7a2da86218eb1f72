"""Teacher features for knowledge transfer by clustering (Noroozi et al. 2018, §5).

Noroozi et al. 2018, §5 "Implementation Details": "We extract the features for all the
methods from conv4 layer and max-pool them to 5x5x384 in the case of AlexNet and
4x4x512 in the case of VGG16." These features are clustered by k-means and the cluster
assignments become the student's pseudo-labels.

The paper gives the target grid, not the pooling window. At the paper's input sizes the
conv4 maps are 13x13 (AlexNet, 227 px) and 28x28 (VGG16 conv4_3, 224 px); a Jigsaw
AlexNet (conv1 stride 2) run on a whole 227 px image gives 27x27. We therefore pool
*adaptively*: output cell i covers rows [floor(i*H/n), ceil((i+1)*H/n)) (the bin rule
of adaptive max pooling in common frameworks), which yields exactly the §5 grid for any
conv4 size >= the grid and reduces to a plain 7x7/7 max pool on VGG16's 28x28.
ResNet teachers keep the project's existing choice and are not handled here.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import tensorflow as tf

# Trunk kind -> (conv4 endpoint, pooled grid side, full-width channels); Noroozi et al. 2018 §5.
# VGG16's "conv4" is the output of its fourth block, conv4_3 (512 channels, as §5's 4x4x512 says).
TEACHER_LAYERS: Dict[str, Tuple[str, int, int]] = {
  'alexnet': ('conv4', 5, 384),
  'vgg16': ('conv4_3', 4, 512),
}


def teacher_shape(kind: str, channels: int = 0) -> Tuple[int, int, int]:
  """The §5 pooled shape (grid, grid, channels) of a trunk kind; full-width channels unless given."""
  _, grid, full = _layer(kind)
  return grid, grid, channels or full


def adaptive_max_pool(x: tf.Tensor, grid: int) -> tf.Tensor:
  """Max-pools [B, H, W, C] to [B, grid, grid, C] with the adaptive bin rule (cells may overlap by a pixel).

  Args:
    x: feature map with static H and W, both >= grid.
    grid: output side.

  Returns:
    [B, grid, grid, C].

  Raises:
    ValueError: H or W smaller than the grid, or not static.
  """
  height, width = x.shape[1], x.shape[2]
  if height is None or width is None or min(height, width) < grid:
    raise ValueError(f'adaptive max pool to {grid}x{grid} needs a static map at least that large, got {height}x{width}')

  def bins(size: int):
    return [(i * size // grid, math.ceil((i + 1) * size / grid)) for i in range(grid)]

  rows = []
  for top, bottom in bins(height):
    band = tf.reduce_max(x[:, top:bottom], axis=1)  # [B, W, C]
    rows.append(tf.stack([tf.reduce_max(band[:, left:right], axis=1) for left, right in bins(width)], axis=1))
  return tf.stack(rows, axis=1)


def teacher_features(endpoints: Mapping[str, tf.Tensor], kind: str, flatten: bool = True) -> tf.Tensor:
  """§5 teacher features of a batch: conv4 max-pooled to 5x5x384 (AlexNet) or 4x4x512 (VGG16).

  Args:
    endpoints: a trunk's endpoint dict (`AlexNet` / `VGG16` call output).
    kind: 'alexnet' or 'vgg16'.
    flatten: return [B, grid*grid*C] (what k-means clusters) instead of [B, grid, grid, C].

  Returns:
    The pooled features; C is 384 / 512 at full width, the scaled count otherwise.

  Raises:
    ValueError: unknown kind, or the endpoint is missing.
  """
  layer, grid, _ = _layer(kind)
  if layer not in endpoints:
    raise ValueError(f'teacher features of a {kind} trunk need endpoint {layer!r}; got {sorted(endpoints)}')
  pooled = adaptive_max_pool(endpoints[layer], grid)
  if not flatten:
    return pooled
  return tf.reshape(pooled, [-1, grid * grid * pooled.shape[-1]])


def _layer(kind: str) -> Tuple[str, int, int]:
  if kind not in TEACHER_LAYERS:
    raise ValueError(f'teacher trunk kind must be one of {sorted(TEACHER_LAYERS)}, got {kind!r}')
  return TEACHER_LAYERS[kind]
