"""Everything in the code that differs between the two dependency lines (BUILD.md, "Two dependency lines").

- reference line: TensorFlow 2.15.1, its own `keras` 2.15 behind `tf.keras`, tf-models-official 2.15.0
  (Python 3.9-3.11, constraints.txt);
- current line: TensorFlow 2.20 with Keras 2 from the `tf_keras` package, tf-models-official 2.20.0
  (Python 3.12, constraints-current.txt).

The rest of the code is the same on both and asks this module for what is not:

- Keras 2 behind `tf.keras` (`use_keras_2`, called by `mtssl_tf/__init__.py` before anything imports
  TensorFlow): ParameterServerStrategy and this code's layers need Keras 2 (Keras 3 does not support
  PSS, keras-team/keras#18624). TF 2.15 uses its own `keras` 2.15 by default. From TF 2.16 on, `tf.keras`
  is Keras 3 unless TF_USE_LEGACY_KERAS is true when TensorFlow is first imported, which routes it to
  `tf_keras` (Keras 2). The variable is set only on TF >= 2.16: on 2.15 it would swap the pinned `keras`
  for `tf_keras`, a second copy of Keras 2 whose objects the first does not recognise.
- Model Garden's anchor generator (`anchor_generator_class`): tf-models-official 2.20 renamed
  `anchor_generator.AnchorGenerator` to `AnchorGeneratorv1`, code unchanged.

Packages present on one line only (tensorflow-addons, tensorflow-io) are not used by the code; the
tests that exist to check them skip where they are absent. Nothing here imports TensorFlow at module
level: `use_keras_2` must run before TensorFlow's first import.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

REFERENCE = 'reference'
CURRENT = 'current'

# Distributions that provide the `tensorflow` module (the CPU-only and nightly builds share it).
_TF_DISTRIBUTIONS = ('tensorflow', 'tensorflow-cpu', 'tf-nightly', 'tf-nightly-cpu')
# The first TensorFlow whose tf.keras is Keras 3 by default (TF 2.16 release notes).
_KERAS_3_FROM = (2, 16)


def tensorflow_version() -> tuple[int, int] | None:
  """(major, minor) of the installed TensorFlow, read from package metadata without importing it.

  Returns:
    The version, or None when no TensorFlow distribution is installed.
  """
  for name in _TF_DISTRIBUTIONS:
    try:
      major, minor = importlib.metadata.version(name).split('.')[:2]
      return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
      continue
  return None


def line() -> str:
  """The dependency line of the installed TensorFlow: CURRENT from TF 2.16 on (Keras 3 era), else REFERENCE.

  Raises:
    ImportError: no TensorFlow distribution is installed.
  """
  version = tensorflow_version()
  if version is None:
    raise ImportError(
      f'mtssl_tf: no TensorFlow installed (looked for {", ".join(_TF_DISTRIBUTIONS)}); '
      'install a dependency line with `make install` (BUILD.md, "Two dependency lines").'
    )
  return CURRENT if version >= _KERAS_3_FROM else REFERENCE


def use_keras_2() -> None:
  """Makes `tf.keras` Keras 2 on either line; call before TensorFlow is first imported.

  Sets TF_USE_LEGACY_KERAS=1 on TF >= 2.16, whatever the user's environment says (subprocesses, such as
  the cluster's servers and workers, inherit it). If TensorFlow was already imported, checks that
  `tf.keras` is Keras 2.

  Raises:
    ImportError: TensorFlow was imported, and tf.keras resolved to Keras 3, before this call.
  """
  if (tensorflow_version() or (0, 0)) < _KERAS_3_FROM:
    return
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  if 'tensorflow' in sys.modules:  # TensorFlow read the variable on import: tf.keras may be Keras 3.
    check_keras_2()


def check_keras_2() -> None:
  """Raises ImportError if tf.keras (TensorFlow already imported) resolves to Keras 3."""
  tf = sys.modules['tensorflow']
  # tf.keras is resolved on first use, from the variable as it is then: unless it was used before
  # use_keras_2 ran, this resolves it to tf_keras. (`from tensorflow.keras import ...` module imports
  # follow the variable as it was when TensorFlow was imported; this code makes none.)
  package = tf.keras.layers.Layer.__module__.split('.')[0]
  keras_version = getattr(sys.modules.get(package), '__version__', '')
  if not keras_version.startswith('2.'):
    raise ImportError(
      f'mtssl_tf needs Keras 2, but tf.keras is {package} {keras_version} (Keras 3): TensorFlow '
      f'{tf.__version__} was imported and tf.keras used before mtssl_tf was imported, without '
      'TF_USE_LEGACY_KERAS=1. Import mtssl_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the '
      'environment (with tf-keras installed; BUILD.md, "Two dependency lines").'
    )


def keras_package() -> str:
  """The top-level package behind tf.keras that this line expects: 'keras' (2.15) or 'tf_keras' (current)."""
  return 'tf_keras' if line() == CURRENT else 'keras'


def anchor_generator_class() -> type:
  """Model Garden's multi-level anchor generator: `AnchorGeneratorv1` (2.20) or `AnchorGenerator` (2.15).

  Chosen by the line, so a tf-models-official that does not match the installed TensorFlow is a named
  error rather than a silent fallback to the other class.

  Raises:
    ImportError: the installed tf-models-official lacks the line's class name.
  """
  from official.vision.ops import anchor_generator  # Imported here: this module must not import TF.

  name = 'AnchorGeneratorv1' if line() == CURRENT else 'AnchorGenerator'
  try:
    return getattr(anchor_generator, name)
  except AttributeError:
    raise ImportError(
      f'official.vision.ops.anchor_generator has no {name}, which the {line()} line expects '
      f'(tf-models-official {importlib.metadata.version("tf-models-official")} is installed); install the '
      'line\'s constraints (BUILD.md, "Two dependency lines").'
    ) from None
