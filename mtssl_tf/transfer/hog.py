"""HOG features, the CC+HOG control of Noroozi et al. 2018 (Table 2: cluster HOG, not a network).

Dalal & Triggs' descriptor through OpenCV (`cv2.HOGDescriptor`): grayscale gradients,
unsigned orientation histograms of `bins` bins per `cell` x `cell` pixel cell
(bilinear votes), blocks of `block_cells` x `block_cells` cells striding by one cell,
each L2-Hys normalised. The descriptor is reshaped to its block grid
[blocks_y, blocks_x, block_cells^2 * bins] and pooled exactly as a network's feature
map (`extract.pool_features`), so a 224 px crop (27 x 27 blocks, 26K dims) clusters at
the same 4x4 layout as a conv layer, and cluster/assign/train need not know where
features came from.
"""

from __future__ import annotations

import cv2
import numpy as np


class HogMap:
  """uint8 RGB images -> HOG block grids, float32 [B, blocks_y, blocks_x, block_cells^2 * bins]."""

  def __init__(self, image_size: int, cell: int = 8, block_cells: int = 2, bins: int = 9):
    """Creates the descriptor for square `image_size` images.

    Args:
      image_size: side of the (square) images.
      cell: cell side in pixels.
      block_cells: block side in cells.
      bins: orientation bins over 0-180 degrees.

    Raises:
      ValueError: the image is smaller than one block.
    """
    block = cell * block_cells
    if image_size < block:
      raise ValueError(f'HOG: image of {image_size} px is smaller than one block ({block} px)')
    # Whole cells only: OpenCV needs (window - block) to be a multiple of the block stride.
    self.window = image_size - (image_size - block) % cell
    self.blocks = (self.window - block) // cell + 1
    self.depth = block_cells * block_cells * bins
    self.descriptor = cv2.HOGDescriptor((self.window,) * 2, (block,) * 2, (cell,) * 2, (cell,) * 2, bins)

  @property
  def shape(self):
    """(blocks_y, blocks_x, depth) of one image's map."""
    return (self.blocks, self.blocks, self.depth)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """HOG maps of a batch of uint8 RGB images [B, H, W, 3] (H, W >= image_size; the centre is used)."""
    images = np.asarray(images)
    top = (images.shape[1] - self.window) // 2
    left = (images.shape[2] - self.window) // 2
    out = np.empty((len(images), *self.shape), np.float32)
    for i, image in enumerate(images):
      gray = cv2.cvtColor(np.ascontiguousarray(image[top : top + self.window, left : left + self.window]),
                          cv2.COLOR_RGB2GRAY)  # fmt: skip
      # OpenCV walks blocks column by column: x is the outer index of the flat descriptor.
      flat = self.descriptor.compute(gray).reshape(self.blocks, self.blocks, self.depth)
      out[i] = flat.transpose(1, 0, 2)
    return out
