"""mtssl_tf: multi-task self-supervised visual learning in TensorFlow 2 / Keras.

Importing the package makes `tf.keras` Keras 2 on both dependency lines (BUILD.md, "Two dependency
lines"): ParameterServerStrategy and this code's layers need Keras 2 (Keras 3 does not support PSS,
keras-team/keras#18624). TF 2.15 (reference line) ships Keras 2 as `keras` and uses it by default.
From TF 2.16 on (current line: 2.20), `tf.keras` is Keras 3 unless TF_USE_LEGACY_KERAS is true when
TensorFlow is first imported, which routes it to the `tf_keras` package (Keras 2). So the variable is
set here, before any TensorFlow import, whatever the user's environment says; subprocesses (servers,
workers) inherit it. It is set only on TF >= 2.16: on 2.15 it would swap the pinned `keras` for
`tf_keras`, a second copy of Keras 2 whose objects the first does not recognise.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

__version__ = '0.1.0'

# Distributions that provide the `tensorflow` module (the CPU-only and nightly builds share it).
_TF_DISTRIBUTIONS = ('tensorflow', 'tensorflow-cpu', 'tf-nightly', 'tf-nightly-cpu')


def _tensorflow_version() -> tuple[int, int] | None:
  """(major, minor) of the installed TensorFlow, read from package metadata without importing it."""
  for name in _TF_DISTRIBUTIONS:
    try:
      major, minor = importlib.metadata.version(name).split('.')[:2]
      return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
      continue
  return None


def _check_keras_2() -> None:
  """Raises ImportError if tf.keras (TensorFlow imported before this package) resolves to Keras 3."""
  tf = sys.modules['tensorflow']
  # tf.keras is resolved on first use, from the variable as it is then: unless it was used before this
  # package was imported, this resolves it to tf_keras. (`from tensorflow.keras import ...` module
  # imports follow the variable as it was when TensorFlow was imported; this code makes none.)
  package = tf.keras.layers.Layer.__module__.split('.')[0]
  keras_version = getattr(sys.modules.get(package), '__version__', '')
  if not keras_version.startswith('2.'):
    raise ImportError(
      f'mtssl_tf needs Keras 2, but tf.keras is {package} {keras_version} (Keras 3): TensorFlow '
      f'{tf.__version__} was imported and tf.keras used before mtssl_tf was imported, without '
      'TF_USE_LEGACY_KERAS=1. Import mtssl_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the '
      'environment (with tf-keras installed; BUILD.md, "Two dependency lines").'
    )


if (_tensorflow_version() or (0, 0)) >= (2, 16):
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  if 'tensorflow' in sys.modules:  # TensorFlow read the variable on import: tf.keras may be Keras 3.
    _check_keras_2()
