"""Synthetic depth data written as NYU Depth v2's labeled .mat and splits.mat files.

`write_nyu_mat` writes what h5py sees in the official `nyu_depth_v2_labeled.mat`:
a MATLAB v7.3 (HDF5, 512-byte MATLAB header) file whose `images` dataset is
(N, 3, W, H) uint8 and `depths`/`rawDepths` (N, W, H) float32 metres, i.e.
MATLAB's column-major H x W x C x N reversed. `write_nyu_splits` writes `trainNdxs`
and `testNdxs` as 1-based column vectors, as the official `splits.mat` holds them.

Scenes come from `scenes.render_scene` (true depth from the room geometry). Unlike
the official in-painted `depths`, the synthetic `depths` keep Kinect-like holes
(0: a few rectangles and scattered pixels) so that the readers' validity mask is
exercised; `rawDepths` is the same array (an HDF5 hard link). Images are H x 4H/3, NYU's aspect.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import h5py
import numpy as np

from mtssl_tf.data import depth as nyu
from mtssl_tf.data.synthetic.scenes import Scene, render_scene

# MATLAB checks this text in the HDF5 user block to recognise a v7.3 file.
_MAT73_HEADER = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .'
TRAIN_FRACTION = 795 / 1449  # The official split's proportion.


def _write_header(path: str) -> None:
  header = _MAT73_HEADER.ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02' + b'IM'
  with open(path, 'r+b') as f:
    f.write(header)


def punch_holes(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
  """A copy of `depth` with Kinect-like invalid (0) pixels: 1-3 rectangles plus ~1% single pixels."""
  depth = depth.copy()
  height, width = depth.shape
  for _ in range(int(rng.integers(1, 4))):
    h = int(rng.integers(1, max(2, height // 6)))
    w = int(rng.integers(1, max(2, width // 6)))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    depth[y : y + h, x : x + w] = 0
  depth[rng.random(depth.shape) < 0.01] = 0
  return depth


def write_nyu_mat(path: str, images: np.ndarray, depths: np.ndarray) -> None:
  """Writes the labeled-file layout from images uint8 [N, H, W, 3] and depths float32 [N, H, W]."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with h5py.File(path, 'w', userblock_size=512) as f:
    f.create_dataset('images', data=np.transpose(images, (0, 3, 2, 1)).astype(np.uint8))
    stored = np.transpose(depths, (0, 2, 1)).astype(np.float32)
    f.create_dataset('depths', data=stored)
    f['rawDepths'] = f['depths']  # A hard link: same values, no second copy on disk.
  _write_header(path)


def write_nyu_splits(path: str, train: Sequence[int], test: Sequence[int]) -> None:
  """Writes 0-based `train`/`test` indices as a v7.3 splits file (1-based, float64 like MATLAB)."""
  with h5py.File(path, 'w', userblock_size=512) as f:
    f.create_dataset('trainNdxs', data=np.asarray(train, np.float64).reshape(1, -1) + 1)
    f.create_dataset('testNdxs', data=np.asarray(test, np.float64).reshape(1, -1) + 1)
  _write_header(path)


def write_nyu_labeled(
  folder: str, num_images: int, height: int = 48, seed: int = 0, class_cue: str = 'colour'
) -> Dict[str, object]:
  """Renders `num_images` scenes into `<folder>/nyu_depth_v2_labeled.mat` and `splits.mat`.

  Args:
    folder: output folder.
    num_images: images (at least 2: one train, one test).
    height: image height; width is round(4 * height / 3).
    seed: rendering, hole and split seed.
    class_cue: how the scenes' objects look (`scenes.CLASS_CUES`); depth does not depend on it.

  Returns:
    {'mat': path, 'splits': path, 'scenes': List[Scene], 'depths': float32 [N, H, W] as
    written (with holes), 'train': 0-based indices, 'test': 0-based indices}.
  """
  if num_images < 2:
    raise ValueError(f'an NYU-style file needs at least 2 images (train and test), got {num_images}')
  rng = np.random.default_rng(seed)
  width = int(round(height * 4 / 3))
  scenes: List[Scene] = [
    render_scene(rng, height, width, max_objects=5, class_cue=class_cue) for _ in range(num_images)
  ]
  depths = np.stack([punch_holes(rng, s.depth) for s in scenes])
  mat = os.path.join(folder, 'nyu_depth_v2_labeled.mat')
  write_nyu_mat(mat, np.stack([s.image for s in scenes]), depths)
  # Interleaved like the official split, not two contiguous blocks.
  order = rng.permutation(num_images)
  num_train = min(num_images - 1, max(1, int(round(num_images * TRAIN_FRACTION))))
  train, test = np.sort(order[:num_train]), np.sort(order[num_train:])
  splits = os.path.join(folder, nyu.SPLIT_FILE)
  write_nyu_splits(splits, train, test)
  return {'mat': mat, 'splits': splits, 'scenes': scenes, 'depths': depths, 'train': train, 'test': test}


def write_depth_part(root: str, preset, seed: int) -> Dict[str, str]:
  """The synthetic world's depth part under `<root>/nyu`.

  Writes the .mat and splits.mat, then converts the train and test splits to TFRecords
  (`nyu_mat_to_tfrecords`) so training reads them with pure TF on workers.

  Args:
    root: world root.
    preset: a `world.Preset` (uses `depth_images`, `image_size` as the height,
      `num_shards` and `class_cue`).
    seed: world seed.

  Returns:
    Manifest entries: 'depth_mat' (the .mat path), 'depth_splits' (splits.mat path),
    'depth_train' and 'depth_test' (`nyu:` TFRecord globs) and 'depth_test_mat'
    (`nyu:<mat>:test`, host-loaded).
  """
  folder = os.path.join(root, 'nyu')
  written = write_nyu_labeled(
    folder, preset.depth_images, preset.image_size, seed=seed + 20, class_cue=getattr(preset, 'class_cue', 'colour')
  )
  records = os.path.join(folder, 'tfrecords')
  shards = max(1, getattr(preset, 'num_shards', 1) // 2)
  nyu.nyu_mat_to_tfrecords(written['mat'], records, shards, {'train': written['train'], 'test': written['test']})
  return {
    'depth_mat': written['mat'],
    'depth_splits': written['splits'],
    'depth_train': f'nyu:{records}/train-*',
    'depth_test': f'nyu:{records}/test-*',
    'depth_test_mat': f'nyu:{written["mat"]}:test',
  }
