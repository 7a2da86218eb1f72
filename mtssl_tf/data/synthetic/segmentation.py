"""Per-pixel class masks of the synthetic world's scenes, written as VOC `SegmentationClass` PNGs.

`write_vocdevkit` (detection.py) calls `write_segmentation` for every scene it writes, so
the world's VOCdevkit also holds what `data.segmentation` reads:
`SegmentationClass/<id>.png` and `ImageSets/Segmentation/{train,val,trainval}.txt`.
The masks come from the scene's own object masks (no random draw), so writing them
leaves every image, box and split of the world as it was.

* Index 0 is background, 1 + k the object of shape class k (VOC class `VOC_CLASSES[k]`,
  the same naming as the detection annotations), taken from the nearest object covering
  the pixel (scene masks are already the visible parts).
* VOC outlines every object with void (255) pixels; here every pixel within
  `VOID_WIDTH` pixels (chessboard distance) of a pixel of another label is void: a
  2-pixel band along each boundary. A named choice of this world: VOC's band is about
  5 pixels on ~500-pixel images; our images are 64-224 pixels.
* Splits: the world has no separate segmentation images, so the detection `trainval`
  images are the segmentation `train` split and the detection `test` images its `val`
  split (VOC2012 itself splits its 2,913 segmented images about in halves).
"""

from __future__ import annotations

import io
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from mtssl_tf.data.segmentation import voc_colormap
from mtssl_tf.data.synthetic.scenes import Scene

VOID_WIDTH = 1
VOID = 255


def class_mask(scene: Scene, void_width: int = VOID_WIDTH) -> np.ndarray:
  """uint8 [H, W]: 0 background, 1 + class of the visible object, 255 within `void_width` of a boundary."""
  label = np.zeros(scene.image.shape[:2], np.uint8)
  for mask, cls in zip(scene.masks, scene.classes):
    label[mask] = int(cls) + 1  # Visible masks do not overlap; order does not matter.
  if void_width <= 0:
    return label
  padded = np.pad(label, void_width, mode='edge')  # The image border is not a boundary.
  height, width = label.shape
  boundary = np.zeros_like(label, bool)
  for dy in range(-void_width, void_width + 1):
    for dx in range(-void_width, void_width + 1):
      shifted = padded[void_width + dy : void_width + dy + height, void_width + dx : void_width + dx + width]
      boundary |= shifted != label
  return np.where(boundary, np.uint8(VOID), label)


def encode_label_png(label: np.ndarray) -> bytes:
  """uint8 [H, W] indices -> a palette PNG with the devkit's colours, as VOC's SegmentationClass files."""
  image = Image.fromarray(label, 'P')
  image.putpalette(voc_colormap().reshape(-1).tolist())
  buffer = io.BytesIO()
  image.save(buffer, 'PNG')
  return buffer.getvalue()


def write_segmentation(voc_dir: str, written: List[Dict[str, object]]) -> Dict[str, List[str]]:
  """Writes `SegmentationClass/<id>.png` and the `ImageSets/Segmentation` splits for `write_vocdevkit`'s images.

  Args:
    voc_dir: the VOC year folder.
    written: `write_vocdevkit`'s records ({'id', 'split', 'scene', ...}).

  Returns:
    The splits: {'train', 'val', 'trainval'} -> ids.
  """
  os.makedirs(os.path.join(voc_dir, 'SegmentationClass'), exist_ok=True)
  os.makedirs(os.path.join(voc_dir, 'ImageSets', 'Segmentation'), exist_ok=True)
  for record in written:
    with open(os.path.join(voc_dir, 'SegmentationClass', f'{record["id"]}.png'), 'wb') as f:
      f.write(encode_label_png(class_mask(record['scene'])))
  splits = {
    'train': [r['id'] for r in written if r['split'] == 'trainval'],
    'val': [r['id'] for r in written if r['split'] == 'test'],
    'trainval': [r['id'] for r in written],
  }
  for name, ids in splits.items():
    with open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', f'{name}.txt'), 'w') as f:
      f.write(''.join(f'{i}\n' for i in ids))
  return splits
