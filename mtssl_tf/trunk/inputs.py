"""What the trunk is fed: uint8 images -> its float input, in one of two conventions.

'rgb' scales colour to [-1, 1], the default for every trunk, harmonized or not (Doersch &
Zisserman 2017 §3.3 replicate L "so that the network can be evaluated on color images");
'harmonized' feeds Lab's L replicated to three channels (grey), colorization's input.
SavedModel export, evaluation and transfer extraction all call `preprocess`.
"""

from __future__ import annotations

import tensorflow as tf

from mtssl_tf.data import color

PREPROCESSING = ('rgb', 'harmonized')


def preprocess(images: tf.Tensor, mode: str) -> tf.Tensor:
  """uint8 images -> the trunk's float input: colour in [-1, 1] ('rgb') or L / 50 - 1 replicated ('harmonized')."""
  if mode == 'harmonized':
    return color.harmonize(images)
  return tf.cast(images, tf.float32) / 127.5 - 1.0
