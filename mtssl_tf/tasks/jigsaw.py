"""Jigsaw++ (Noroozi et al. 2018, §4), on the jigsaw puzzle of Noroozi & Favaro 2016.

A crop is cut into a 3x3 grid of cells and one tile is taken from each; the tiles
are shuffled by one permutation of a fixed set (default: the authors' 701, any two
at least 3 apart in Hamming distance), and the head, seeing all nine through the
shared trunk, names the permutation. In Jigsaw++ 0, 1 or 2 of the tiles (uniformly)
are replaced by tiles of another image, which the network must recognise as
foreign to solve the puzzle.

Defaults follow MehdiNoroozi/JigsawPuzzleSolver: a 255 px crop, 85 px cells, a 64 px
tile at a random position in each cell, each colour channel shifted by a further
0-2 px (against chromatic aberration), and each tile normalised to zero mean and
unit standard deviation (times `tile_scale`). The image is first resized to a shorter side of 256
(Noroozi & Favaro 2016 resize to 256x256; the aspect ratio is kept here). Tiles are gray with
probability 0.7 as in the paper (the code uses 0.5). With `harmonize`, colour
handling is replaced by colorization's input (Doersch & Zisserman §3.3).

The head sees the nine tiles' trunk features. 'cfn' is the authors' context-free network
above pool5 (train_val_cfn_jps++.prototxt): each tile's pool5 flattened into a shared fc6
of 1024 (ReLU, dropout 0.5), the nine concatenated in slot order into fc7 of 4096 (ReLU,
dropout 0.5) and fc8 over the permutations; the default on AlexNet and VGG16, whose final
endpoint is pool5. 'reduced' (this project's choice for ResNet-v2, whose 1024-channel
block-3 map would make fc6 large) first projects each tile's map to `tile_channels` with
a 1x1 convolution, and its fc6 has 512 units, the original Jigsaw's.

Each example needs a second image for the occluding tiles: `dataset` pairs every
example with the previous one of the shuffled stream (pure TF), so `preprocess`
takes {'image', 'other_image'} and is the same eagerly and inside tf.data.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.data import color
from mtssl_tf.tasks import base, permutations

GRID = 3
NUM_TILES = GRID * GRID
HEAD_LAYOUTS = ('auto', 'cfn', 'reduced')
HEAD_INITS = ('glorot', 'prototxt')
# fc6 units by layout: train_val_cfn_jps++.prototxt fc6_s1 (1024); Noroozi & Favaro 2016's Jigsaw (512).
TILE_UNITS = {'cfn': 1024, 'reduced': 512}
# `prepare`'s per-example grey decision, consumed by `finish_batch`.
GRAY_KEY = 'gray'


@dataclasses.dataclass
class JigsawConfig(base.TaskConfig):
  """Jigsaw++ task.

  Attributes:
    resize_side: the image's shorter side is resized to this before cropping.
    crop_size: side of the square crop cut into 3x3 cells (authors: 255, cells of 85).
    tile_size: side of the tile taken from each cell (authors: 64).
    tile_jitter: place each tile at a random position in its cell (else centred).
    color_jitter_px: each colour channel of a tile is shifted by a further 0 to this
      many pixels in each axis (authors: 2).
    occlusion_probs: probability of replacing 0, 1, 2, ... tiles by tiles of another
      image (Jigsaw++: 0, 1 or 2 uniformly; (1.0,) is the original Jigsaw).
    grayscale_prob: probability an example's tiles are made gray (paper: 0.7; the
      authors' code: 0.5).
    permutation_set: 'noroozi701' (Jigsaw++), 'noroozi100' (original Jigsaw) or
      'generated'.
    num_permutations: classes; a shipped set's first `num_permutations` rows.
    min_hamming: minimum pairwise Hamming distance of a generated set.
    permutation_seed: seed of a generated set.
    tile_scale: each normalised tile is multiplied by this (JigsawPuzzleSolver's prototxt:
      MVN then a Power layer of scale 50, the input range its Caffe fillers expect on a
      network without BatchNorm; 1 where the trunk normalises).
    head_layout: 'cfn' (the prototxt's: pool5 flattened into fc6), 'reduced' (a 1x1
      convolution to `tile_channels` first) or 'auto': 'cfn' on AlexNet / VGG16, 'reduced'
      on ResNet-v2 (see the module docstring).
    head_init: 'glorot' (Keras's default) or 'prototxt' (the prototxt's fillers: Gaussian
      fc6/fc7 std 0.005 with bias 1, fc8 std 0.01 with bias 0; for the BatchNorm-free
      networks the authors trained).
    tile_channels: 1x1 convolution width before each tile's features are flattened ('reduced').
    tile_units: per-tile fully connected layer fc6; 0: the layout's (1024 for 'cfn', the
      prototxt's fc6_s1; 512 for 'reduced', the original Jigsaw's).
    hidden_units: layer over the nine concatenated tiles (authors' fc7: 4096).
    dropout: dropout rate after both layers (authors: 0.5).
  """

  resize_side: int = 256
  crop_size: int = 255
  tile_size: int = 64
  tile_jitter: bool = True
  color_jitter_px: int = 2
  occlusion_probs: Tuple[float, ...] = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)
  grayscale_prob: float = 0.7  # Noroozi et al. 2018 §4; JigsawPuzzleSolver's code uses 0.5.
  permutation_set: str = 'noroozi701'
  num_permutations: int = 701
  min_hamming: int = 3
  permutation_seed: int = 0
  tile_scale: float = 1.0
  head_layout: str = 'auto'
  head_init: str = 'glorot'
  tile_channels: int = 64
  tile_units: int = 0
  hidden_units: int = 4096
  dropout: float = 0.5
  batch_size: int = 16

  @property
  def cell_size(self) -> int:
    """Side of a grid cell (crop_size // 3)."""
    return self.crop_size // GRID

  def validate(self) -> None:
    super().validate()
    if self.tile_size < 1 or self.color_jitter_px < 0:
      raise ConfigError('jigsaw.tile_size: need tile_size >= 1 and color_jitter_px >= 0')
    if self.tile_size + self.color_jitter_px > self.cell_size:
      raise ConfigError(
        f'jigsaw.crop_size: cells of {self.cell_size} px cannot hold a {self.tile_size} px tile '
        f'shifted by {self.color_jitter_px} px'
      )
    if self.resize_side < self.crop_size:
      raise ConfigError(f'jigsaw.resize_side: must be >= crop_size {self.crop_size}, got {self.resize_side}')
    probs = self.occlusion_probs
    if not 1 <= len(probs) <= NUM_TILES + 1 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-3:
      raise ConfigError(f'jigsaw.occlusion_probs: need 1 to 10 non-negative values summing to 1, got {probs}')
    if not 0.0 <= self.grayscale_prob <= 1.0:
      raise ConfigError(f'jigsaw.grayscale_prob: must be in [0, 1], got {self.grayscale_prob}')
    sets = (*permutations.SHIPPED_SETS, permutations.GENERATED)
    if self.permutation_set not in sets:
      raise ConfigError(f'jigsaw.permutation_set: must be one of {sets}, got {self.permutation_set!r}')
    available = permutations.SHIPPED_SIZES.get(self.permutation_set, 9 * 8 * 7 * 6 * 5 * 4 * 3 * 2)
    if not 2 <= self.num_permutations <= available:
      raise ConfigError(
        f'jigsaw.num_permutations: the {self.permutation_set} set allows 2 to {available}, got {self.num_permutations}'
      )
    if not 1 <= self.min_hamming <= NUM_TILES:
      raise ConfigError(f'jigsaw.min_hamming: must be in [1, 9], got {self.min_hamming}')
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f'jigsaw.dropout: must be in [0, 1), got {self.dropout}')
    if self.head_layout not in HEAD_LAYOUTS:
      raise ConfigError(f'jigsaw.head_layout: must be one of {HEAD_LAYOUTS}, got {self.head_layout!r}')
    if self.head_init not in HEAD_INITS:
      raise ConfigError(f'jigsaw.head_init: must be one of {HEAD_INITS}, got {self.head_init!r}')
    if self.tile_units < 0 or self.tile_channels < 1 or self.hidden_units < 1:
      raise ConfigError("jigsaw.tile_units: need tile_units >= 0 (0: the layout's), tile_channels, hidden_units >= 1")
    if self.tile_scale <= 0:
      raise ConfigError(f'jigsaw.tile_scale: must be positive, got {self.tile_scale}')


def normalize_tiles(tiles: tf.Tensor) -> tf.Tensor:
  """Each tile of [N, T, T, 3] to zero mean and unit standard deviation (constant tiles -> 0)."""
  tiles = tiles - tf.reduce_mean(tiles, axis=[1, 2, 3], keepdims=True)
  return tiles / tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(tiles), axis=[1, 2, 3], keepdims=True)), 1e-3)


def mosaic(tiles: tf.Tensor) -> tf.Tensor:
  """[N, 9, T, T, C] tiles in slot order -> [N, 3T, 3T, C] images (slot i at row i // 3, column i % 3)."""
  n, t, c = tf.shape(tiles)[0], tiles.shape[2], tiles.shape[4]
  grid = tf.transpose(tf.reshape(tiles, [n, GRID, GRID, t, t, c]), [0, 1, 3, 2, 4, 5])
  return tf.reshape(grid, [n, GRID * t, GRID * t, c])


def pair_with_previous(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Adds 'other_image' to each example: the previous example's image (the first is dropped)."""

  def step(previous, example):
    paired = dict(example)
    paired['other_image'] = previous
    return example['image'], paired

  # The state's shape is relaxed by scan to the images' [None, None, 3].
  initial = tf.zeros([1, 1, 3], ds.element_spec['image'].dtype)
  return ds.scan(initial, step).skip(1)


class JigsawTask(base.Task):
  """Name the permutation of nine shuffled tiles, some of them from another image."""

  name = 'jigsaw'
  config_class = JigsawConfig

  @classmethod
  def trunk_input_size(cls, config) -> int:
    return config.tile_size

  def __init__(self, config: JigsawConfig, trunk_output_stride: int = 16, trunk: Optional[TrunkConfig] = None):
    super().__init__(config, trunk_output_stride, trunk)
    c = config
    self.permutations = permutations.get_permutations(
      c.permutation_set, c.num_permutations, c.min_hamming, c.permutation_seed
    )
    self.inverse_permutations = np.argsort(self.permutations, axis=1).astype(np.int32)

  def combine(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Pairs each example with the previous one after shuffling: its occluding image."""
    return pair_with_previous(ds)

  def _crop(
    self, image: tf.Tensor, seed: tf.Tensor, box: Optional[Tuple[tf.Tensor, tf.Tensor]] = None, unit: bool = True
  ) -> tf.Tensor:
    """Resizes (shorter side `resize_side`, antialiased) and randomly crops; float32 [S, S, 3] in [0, 1].

    Only the crop of the resized image is computed: TF's ScaleAndTranslate (the kernel of
    `tf.image.resize(antialias=True)`) translated to the crop, its offset drawn exactly as
    `tf.image.stateless_random_crop` draws it. With `box` = (int32 [2] top-left, int32 [2]
    size) inside the crop, only that box is computed and returned (the same pixels within
    float32 rounding of the sample positions). `unit=False` keeps the 0-255 scale (the caller
    scales only the pixels it keeps).
    """
    c = self.config
    shape = tf.shape(image)[:2]
    shape_f = tf.cast(shape, tf.float32)
    size = tf.cast(tf.math.ceil(shape_f * (c.resize_side / tf.reduce_min(shape_f)) - 1e-4), tf.int32)
    size = tf.maximum(size, c.resize_side)
    limit = tf.concat([size - c.crop_size + 1, [1]], axis=0)
    offset = tf.random.stateless_uniform([3], seed, maxval=tf.int32.max, dtype=tf.int32) % limit
    start, extent = (offset[:2], [c.crop_size, c.crop_size]) if box is None else (offset[:2] + box[0], box[1])
    crop = tf.raw_ops.ScaleAndTranslate(
      images=image[None],
      size=extent,
      scale=tf.cast(size, tf.float32) / shape_f,
      translation=-tf.cast(start, tf.float32),
      kernel_type='triangle',
      antialias=True,
    )[0]
    return crop * (1.0 / 255.0) if unit else crop

  def _cells_box(self, cells: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(top-left, size), int32 [2] each: the pixel box in the crop of the grid cells `cells` (non-empty)."""
    cell = tf.stack([cells // GRID, cells % GRID], axis=-1)
    first = tf.reduce_min(cell, axis=0)
    return first * self.config.cell_size, (tf.reduce_max(cell, axis=0) - first + 1) * self.config.cell_size

  def _occluded_cells(self, seed: tf.Tensor) -> tf.Tensor:
    """[9] bool: the cells whose tile comes from the other image."""
    seeds = base.stateless_seeds(seed, 2)
    probs = np.asarray(self.config.occlusion_probs, np.float64)
    bounds = tf.constant(np.cumsum(probs / probs.sum())[:-1], tf.float32)
    count = tf.reduce_sum(tf.cast(tf.random.stateless_uniform([], seeds[0]) >= bounds, tf.int32))
    # A uniformly random subset of `count` cells: those with the smallest random keys.
    ranks = tf.argsort(tf.argsort(tf.random.stateless_uniform([NUM_TILES], seeds[1])))
    return ranks < count

  def cut_tiles(self, crops: tf.Tensor, perm: tf.Tensor, occluded: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Tiles in slot order: slot i from cell perm[i] of crops[1] if occluded[i], else of crops[0].

    Args:
      crops: float [2, S, S, 3], the image's crop and the other image's.
      perm: int32 [9], the source cell of each slot.
      occluded: bool [9], per slot.
      seed: [2] seed of the tile and colour-channel jitter.

    Returns:
      float [9, T, T, 3].
    """
    flat = tf.reshape(crops, [-1])
    return self._gather_tiles(flat, tf.zeros([2], tf.int32), self.config.crop_size, perm, occluded, seed)

  def _gather_tiles(self, flat, other_origin, other_width, perm, occluded, seed) -> tf.Tensor:
    """`cut_tiles` from `flat`: the image's crop [S, S, 3], then the other image's box of it, flattened.

    The box starts at `other_origin` (int32 [2], crop pixels) and is `other_width` pixels wide;
    the whole crop is origin 0 and width S.
    """
    c = self.config
    seeds = base.stateless_seeds(seed, 2)
    room = c.cell_size - c.tile_size - c.color_jitter_px
    if c.tile_jitter:
      corner = tf.random.stateless_uniform([NUM_TILES, 2], seeds[0], 0, room + 1, dtype=tf.int32)
    else:
      corner = tf.fill([NUM_TILES, 2], room // 2)
    shift = tf.random.stateless_uniform([NUM_TILES, 3, 2], seeds[1], 0, c.color_jitter_px + 1, dtype=tf.int32)
    origin = tf.stack([perm // GRID, perm % GRID], axis=-1) * c.cell_size + corner  # [9, 2]
    start = origin[:, None, :] + shift  # [9 slots, 3 channels, (y, x)]
    # One gather from `flat`: the index of every output value, as the index of its tile's top-left
    # value (per slot and channel) plus its row and column offsets; a slot's source is the crop or the box.
    s = c.crop_size
    occluded = tf.cast(occluded, tf.int32)[:, None]  # [9, 1]
    width = s + occluded * (other_width - s)  # [9, 1]: the row length of each slot's source.
    start = start - occluded[..., None] * other_origin
    top_left = occluded * (s * s * 3) + (start[..., 0] * width + start[..., 1]) * 3 + tf.range(3)  # [9, 3]
    t = tf.range(c.tile_size)
    rows = t[None, :, None, None] * (width * 3)[:, :, None, None]  # [9, T, 1, 1]
    index = top_left[:, None, None, :] + rows + (t * 3)[None, None, :, None]
    return tf.gather(flat, index)

  def preprocess(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """{'image', 'other_image'} -> {'tiles' [9, T, T, 3], 'label' int32, 'occluded' bool [9] per slot}."""
    batch = self.finish_batch({k: v[None] for k, v in self.prepare(example, seed).items()})
    return {k: v[0] for k, v in batch.items()}

  def prepare(self, example: Dict[str, tf.Tensor], seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """`preprocess` up to the cut tiles (0-255, or harmonized), and whether they turn grey (`GRAY_KEY`).

    `finish_batch` does the rest.
    """
    c = self.config
    seeds = base.stateless_seeds(seed, 6)
    label = tf.random.stateless_uniform([], seeds[2], 0, len(self.permutations), dtype=tf.int32)
    perm = tf.gather(tf.constant(self.permutations), label)
    occluded = tf.gather(self._occluded_cells(seeds[3]), perm)
    # Crops on the 0-255 scale: the tiles are scaled, not the crops (fewer values, the same products).
    crop = self._crop(example['image'], seeds[0], unit=False)

    # The other image's crop only when a tile comes from it (not in a third of examples by default), and
    # only the box of the cells its tiles come from (one or two of nine by default): the rest is never read.
    def other_box():
      box = self._cells_box(tf.boolean_mask(perm, occluded))
      return tf.reshape(self._crop(example['other_image'], seeds[1], box, unit=False), [-1]), box[0], box[1][1]

    def no_box():
      return tf.zeros([0]), tf.zeros([2], tf.int32), tf.constant(0)

    other, other_origin, other_width = tf.cond(tf.reduce_any(occluded), other_box, no_box)
    flat = tf.concat([tf.reshape(crop, [-1]), other], axis=0)
    tiles = self._gather_tiles(flat, other_origin, other_width, perm, occluded, seeds[4])
    out = {'label': label, 'occluded': occluded}
    if c.harmonize:
      tiles = color.harmonize(tiles * (1.0 / 255.0))
    elif c.grayscale_prob > 0:
      out[GRAY_KEY] = tf.random.stateless_uniform([], seeds[5]) < c.grayscale_prob
    tiles.set_shape([NUM_TILES, c.tile_size, c.tile_size, 3])
    out['tiles'] = tiles
    return out

  def finish_batch(self, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Grey tiles and per-tile normalisation over a batch of `prepare` outputs at once (fewer, larger ops)."""
    c = self.config
    batch = dict(batch)
    tiles = batch['tiles']  # [B, 9, T, T, 3]
    if not c.harmonize:  # Harmonized tiles were scaled to [0, 1] by `prepare`.
      tiles = tiles * (1.0 / 255.0)
    gray = batch.pop(GRAY_KEY, None)
    if gray is not None:
      tiles = tf.where(
        gray[:, None, None, None, None], tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(tiles)), tiles
      )
    tiles = tf.reshape(normalize_tiles(tf.reshape(tiles, [-1, c.tile_size, c.tile_size, 3])), tf.shape(tiles))
    if c.tile_scale != 1.0:
      tiles = tiles * c.tile_scale
    tiles.set_shape([None, NUM_TILES, c.tile_size, c.tile_size, 3])
    batch['tiles'] = tiles
    return batch

  def trunk_images(self, batch: Dict[str, tf.Tensor]) -> tf.Tensor:
    t = self.config.tile_size
    # All tiles through the trunk as one batch: 9B images, an example's slots consecutive.
    return tf.reshape(batch['tiles'], [-1, t, t, 3])

  @property
  def head_layout(self) -> str:
    """The head's layout: `head_layout`, 'auto' resolved by the trunk kind (see the module docstring)."""
    if self.config.head_layout != 'auto':
      return self.config.head_layout
    return 'reduced' if self.trunk_kind == 'resnet_v2' else 'cfn'

  def build_head(self, dtype: str = 'float32') -> tf.keras.layers.Layer:
    c = self.config
    layout = self.head_layout
    return JigsawHead(
      len(self.permutations), c.tile_channels if layout == 'reduced' else 0, c.tile_units or TILE_UNITS[layout],
      c.hidden_units, c.dropout, c.head_init, name=f'{self.name}_head', dtype=dtype,
    )  # fmt: skip

  def loss(self, outputs, batch):
    return tf.reduce_mean(
      tf.keras.losses.sparse_categorical_crossentropy(batch['label'], base.cast_logits(outputs), from_logits=True)
    )

  @property
  def _top_k(self) -> int:
    return min(5, len(self.permutations))

  def metrics(self):
    return {
      'loss': tf.keras.metrics.Mean(),
      'accuracy': base.accuracy_metric(),
      'top5_accuracy': tf.keras.metrics.SparseTopKCategoricalAccuracy(k=self._top_k),
    }

  def update_metrics(self, metrics, outputs, batch, loss):
    logits = base.cast_logits(outputs)
    metrics['loss'].update_state(loss)
    metrics['accuracy'].update_state(batch['label'], logits)
    metrics['top5_accuracy'].update_state(batch['label'], logits)

  def batch_metrics(self, outputs, batch):
    logits = base.cast_logits(outputs)
    in_top = tf.math.in_top_k(tf.cast(batch['label'], tf.int32), logits, self._top_k)
    return {
      'accuracy': base.batch_accuracy(batch['label'], logits),
      'top5_accuracy': tf.reduce_mean(tf.cast(in_top, tf.float32)),
    }

  def image_summaries(self, outputs, batch):
    tiles = batch['tiles'][:4]  # [N, 9, T, T, 3], each tile normalised.
    lo = tf.reduce_min(tiles, axis=[2, 3, 4], keepdims=True)
    hi = tf.reduce_max(tiles, axis=[2, 3, 4], keepdims=True)
    shown = tf.cast((tiles - lo) / tf.maximum(hi - lo, 1e-6) * 255.0, tf.uint8)
    # The puzzle as the network sees it, and solved: source cell j is slot inverse[j].
    inverse = tf.gather(tf.constant(self.inverse_permutations), batch['label'][:4])
    return {'puzzles': mosaic(shown), 'solved': mosaic(tf.gather(shown, inverse, batch_dims=1))}


class JigsawHead(tf.keras.layers.Layer):
  """Context-free network head: shared per-tile layers, then the nine tiles classified together."""

  def __init__(
    self,
    num_permutations: int,
    tile_channels: int,
    tile_units: int,
    hidden_units: int,
    dropout: float,
    init: str = 'glorot',
    **kwargs,
  ):
    """Creates the head; its outputs are logits over `num_permutations` classes.

    Args:
      num_permutations: classes.
      tile_channels: width of the 1x1 projection of each tile's map; 0: none (the 'cfn' layout).
      tile_units: fc6, per tile.
      hidden_units: fc7, over the nine tiles.
      dropout: after fc6 and fc7.
      init: 'glorot' or 'prototxt' (`JigsawConfig.head_init`).
      **kwargs: Keras layer arguments (name, dtype).
    """
    super().__init__(**kwargs)
    policy = self.dtype_policy
    fc = {'kernel_initializer': 'glorot_uniform', 'bias_initializer': 'zeros'}
    out = dict(fc)
    if init == 'prototxt':  # train_val_cfn_jps++.prototxt: fc6_s*/fc7 gaussian 0.005, bias 1; fc8 0.01, bias 0.
      fc = {'kernel_initializer': tf.keras.initializers.RandomNormal(stddev=0.005), 'bias_initializer': 'ones'}
      out = {'kernel_initializer': tf.keras.initializers.RandomNormal(stddev=0.01), 'bias_initializer': 'zeros'}
    self.reduce = tf.keras.layers.Conv2D(tile_channels, 1, activation='relu', dtype=policy) if tile_channels else None
    self.flatten = tf.keras.layers.Flatten(dtype=policy)  # Keeps each tile's spatial layout.
    self.tile_fc = tf.keras.layers.Dense(tile_units, activation='relu', dtype=policy, **fc)
    self.hidden = tf.keras.layers.Dense(hidden_units, activation='relu', dtype=policy, **fc)
    self.dropout = tf.keras.layers.Dropout(dropout, dtype=policy)
    self.classify = tf.keras.layers.Dense(num_permutations, dtype=policy, **out)

  def call(self, features, training=None):
    if self.reduce is not None:
      features = self.reduce(features)
    per_tile = self.dropout(self.tile_fc(self.flatten(features)), training=training)  # [9B, U]
    puzzles = tf.reshape(per_tile, [-1, NUM_TILES * per_tile.shape[-1]])  # Slot order within an example.
    return self.classify(self.dropout(self.hidden(puzzles), training=training))
