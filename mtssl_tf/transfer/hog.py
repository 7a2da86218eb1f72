"""HOG features, the CC+HOG control of Noroozi et al. 2018 (Tables 3-5: cluster HOG, not a network).

Dalal & Triggs' descriptor through OpenCV (`cv2.HOGDescriptor`): grayscale gradients,
unsigned orientation histograms of `bins` bins per `cell` x `cell` pixel cell
(bilinear votes), blocks of `block_cells` x `block_cells` cells striding by one cell,
each L2-Hys normalised. `HogMap` reshapes the descriptor to its block grid
[blocks_y, blocks_x, block_cells^2 * bins] (a 224 px crop: 27 x 27 blocks of 36).

Noroozi et al. cluster a "bag of words of HOG" (Table 3's caption), the default
(`extract.hog_encoding: bag_of_words`, `HogBagOfWords`): each block is one local
descriptor; a vocabulary of visual words is the k-means (`kmeans.KMeans`, the same
clustering the transfer step uses) of the descriptors of a sample of images; an image
becomes the histogram of its blocks' nearest words, divided by the number of blocks.
`extract.hog_encoding: grid` instead pools the block grid exactly as a network's
feature map (`extract.pool_features`, 4x4 max: 576 dims), keeping the layout the
orderless bag drops. Either way cluster/assign/train need not know where features came from.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import tensorflow as tf

from mtssl_tf.transfer.kmeans import KMeans, KMeansConfig

# The vocabulary, saved (KMeans.save) next to the features of the images it was fitted on.
VOCABULARY_FILE = 'hog_vocabulary.npz'


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


class HogBagOfWords:
  """uint8 RGB images -> bag of HOG words, float32 [B, words]: each row sums to 1.

  Attributes:
    hog: the `HogMap` giving the local descriptors (its blocks).
    vocabulary: the fitted `KMeans` whose centroids are the visual words.
    dims: the number of words.
    digest: a hash of the words, so features made with another vocabulary are told apart.
  """

  def __init__(self, hog: HogMap, vocabulary: KMeans):
    """Wraps a fitted vocabulary.

    Raises:
      ValueError: the vocabulary's words are not HOG blocks of `hog`'s depth.
    """
    if vocabulary.centroids is None or vocabulary.centroids.shape[1] != hog.depth:
      shape = None if vocabulary.centroids is None else vocabulary.centroids.shape
      raise ValueError(f'HOG vocabulary: words of shape {shape} do not fit blocks of {hog.depth} values')
    self.hog = hog
    self.vocabulary = vocabulary
    self.dims = int(vocabulary.centroids.shape[0])
    self.digest = hashlib.sha1(np.ascontiguousarray(vocabulary.centroids, np.float32).tobytes()).hexdigest()[:16]

  @staticmethod
  def descriptors(hog: HogMap, images) -> np.ndarray:
    """Every HOG block of every image as a row, float32 [B * blocks_y * blocks_x, depth]."""
    images = images.numpy() if hasattr(images, 'numpy') else np.asarray(images)
    return hog(images).reshape(-1, hog.depth)

  @classmethod
  def fit(
    cls, hog: HogMap, batches: Iterable[np.ndarray], words: int, seed: int = 0, progress: bool = True
  ) -> HogBagOfWords:
    """Fits the vocabulary: k-means of the blocks of the images in `batches`.

    `KMeans` keeps a seeded uniform sample of at most 256 descriptors per word from
    the stream (faiss's rule, as for the pseudo-labels), so memory is the sample, not
    every block of every image.

    Args:
      hog: the descriptor.
      batches: uint8 image batches [B, H, W, 3].
      words: vocabulary size.
      seed: k-means sampling and initialisation.
      progress: log the k-means iterations.

    Raises:
      ValueError: fewer descriptors than words.
    """
    config = KMeansConfig(num_clusters=words, seed=seed)

    def chunks() -> Iterator[np.ndarray]:
      for images in batches:
        yield cls.descriptors(hog, images)

    try:
      vocabulary = KMeans(config).fit(chunks(), progress=progress)
    except ValueError as e:
      where = 'extract.hog_words, extract.hog_vocabulary_images'
      raise ValueError(f'HOG vocabulary of {words} words ({where}): {e}') from e
    return cls(hog, vocabulary)

  @classmethod
  def load_or_fit(
    cls,
    directory: str,
    hog: HogMap,
    batches: Callable[[], Iterable[np.ndarray]],
    words: int,
    seed: int = 0,
    progress: bool = True,
  ) -> HogBagOfWords:
    """The vocabulary saved in `directory`, or a new one fitted on `batches()` and saved there.

    Saving it lets a restarted extraction, and the assignment of another dataset,
    encode with the very words the clustered images were encoded with.

    Raises:
      ValueError: a saved vocabulary of another size or descriptor than asked.
    """
    path = os.path.join(directory, VOCABULARY_FILE)
    if tf.io.gfile.exists(path):
      vocabulary = KMeans.load(path)
      if vocabulary.config.num_clusters != words or vocabulary.input_dims != hog.depth:
        raise ValueError(
          f'{path}: a vocabulary of {vocabulary.config.num_clusters} words of {vocabulary.input_dims} values, '
          f'but extract.hog_words={words} with blocks of {hog.depth}; use a fresh folder or delete it'
        )
      return cls(hog, vocabulary)
    bag = cls.fit(hog, batches(), words, seed, progress)
    bag.vocabulary.save(path)
    return bag

  def __call__(self, images) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, words]: the fraction of each image's blocks nearest each word."""
    images = images.numpy() if hasattr(images, 'numpy') else np.asarray(images)
    labels, _ = self.vocabulary.assign(self.descriptors(self.hog, images))
    blocks = self.hog.blocks * self.hog.blocks
    rows = np.repeat(np.arange(len(images)), blocks)
    counts = np.zeros((len(images), self.dims), np.float32)
    np.add.at(counts, (rows, labels), 1.0)
    return counts / np.float32(blocks)
