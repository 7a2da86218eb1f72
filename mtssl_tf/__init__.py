"""mtssl_tf: multi-task self-supervised visual learning in TensorFlow 2 / Keras.

Importing the package makes `tf.keras` Keras 2 on both dependency lines (BUILD.md, "Two dependency
lines"; `mtssl_tf.compat`, which holds every difference between the lines): on TF >= 2.16 it sets
TF_USE_LEGACY_KERAS=1 before any TensorFlow import, whatever the user's environment says, and every
binary, server subprocess and test imports this package before TensorFlow.
"""

from mtssl_tf import compat

__version__ = '0.1.0'

compat.use_keras_2()
