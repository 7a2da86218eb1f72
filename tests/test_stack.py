"""Each dependency line's pinned environment imports its whole stack together.

Two lines (BUILD.md, "Two dependency lines"), chosen by the Python version exactly as setup.py's
environment markers choose them: reference (TF 2.15.1, Python 3.9-3.11, constraints.txt) and current
(TF 2.20 + tf-keras, Python 3.12, constraints-current.txt). A test that checks one line's package is
skipped, with the reason, on the other.
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

CURRENT = sys.version_info >= (3, 12)
LINE = 'current' if CURRENT else 'reference'
CONSTRAINTS = pathlib.Path(__file__).resolve().parents[1] / (
  'constraints-current.txt' if CURRENT else 'constraints.txt'
)

reference_only = pytest.mark.skipif(CURRENT, reason='reference line only (TF 2.15.1, Python 3.9-3.11)')
current_only = pytest.mark.skipif(not CURRENT, reason='current line only (TF 2.20 + tf-keras, Python 3.12)')


@pytest.mark.parametrize(
  'module',
  [
    'tensorflow',
    'tensorflow_datasets',
    'tensorflow_text',
    'official.vision',
    'cv2',
    'h5py',
    'tensorboard.main',
    # Felzenszwalb-Huttenlocher segmentation for selective search. skimage loads its submodules
    # lazily, so name the module that imports the compiled extension.
    'skimage.segmentation._felzenszwalb',
    # tensorflow-addons and tensorflow-io have no working build for TF >= 2.16 (no Python 3.12
    # wheel; kernels that fail to load), so only the reference line has them.
    pytest.param('tensorflow_addons', marks=reference_only),
    pytest.param('tensorflow_io', marks=reference_only),
    # Keras 2 as its own package: tf.keras on the current line.
    pytest.param('tf_keras', marks=current_only),
  ],
)
def test_imports(module):
  assert importlib.import_module(module) is not None


def _pins(path: pathlib.Path) -> dict:
  pins = {}
  for line in path.read_text(encoding='utf-8').splitlines():
    line = line.split('#')[0].strip()
    if line:
      name, pinned = line.split('==')
      pins[re.sub(r'[-_.]+', '-', name).lower()] = pinned
  return pins


def test_installed_packages_are_the_lines_pins():
  """Every installed package that the line's constraints file names is at its pinned version."""
  pins = _pins(CONSTRAINTS)
  assert 'tensorflow' in pins, f'{CONSTRAINTS.name} pins no tensorflow'
  wrong = {}
  for name, pinned in pins.items():
    try:
      installed = version(name)
    except PackageNotFoundError:  # Optional extras (faiss-cpu) the install did not ask for.
      continue
    if installed != pinned:
      wrong[name] = f'{installed} installed, {pinned} pinned'
  assert not wrong, f'{LINE} line: packages off {CONSTRAINTS.name}: {wrong}'


@reference_only
def test_reference_versions():
  import keras
  import tensorflow as tf

  assert tf.__version__ == '2.15.1'
  # Keras 2: ParameterServerStrategy does not run on Keras 3.
  assert keras.__version__.startswith('2.15')
  assert version('numpy').startswith('1.')
  assert version('protobuf').startswith('4.')
  # 1.21 (the unconstrained pick) needs protobuf >= 5.26 and breaks tensorflow_datasets.
  assert version('tensorflow-metadata') == '1.16.1'
  # TF 2.15 uses its own `keras` for tf.keras; routing it to tf_keras would mix two Keras copies.
  assert tf.keras.layers.Layer.__module__.startswith('keras.')


@current_only
def test_current_versions():
  import cv2
  import tensorflow as tf

  assert sys.version_info[:2] == (3, 12)
  assert tf.__version__.startswith('2.20.')
  # Model Garden 2.20 requires tensorflow ~=2.20.0 and tensorflow-text ~=2.20.0.
  assert version('tf-models-official').startswith('2.20.')
  assert version('tensorflow-text').startswith('2.20.')
  assert version('tf-keras').startswith('2.20.')
  assert version('numpy').startswith('2.')
  # TF >= 2.20 does not install it; without it tf.summary raises TBNotInstalledError.
  assert version('tensorboard').startswith('2.20.')
  # 5.x removed the HOG descriptor that mtssl_tf/transfer/hog.py uses.
  assert int(cv2.__version__.split('.')[0]) < 5 and hasattr(cv2, 'HOGDescriptor')
  for absent in ('tensorflow-addons', 'tensorflow-io'):
    with pytest.raises(PackageNotFoundError):
      version(absent)


def test_tf_keras_is_keras_2():
  import tensorflow as tf

  package = tf.keras.layers.Layer.__module__.split('.')[0]
  assert sys.modules[package].__version__.startswith('2.'), f'tf.keras is {package} {sys.modules[package].__version__}'
  assert package == ('tf_keras' if CURRENT else 'keras')


def _python(code: str, legacy_keras: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_USE_LEGACY_KERAS=legacy_keras, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)


@current_only
def test_importing_mtssl_tf_first_makes_keras_2_whatever_the_environment():
  """The user's TF_USE_LEGACY_KERAS=0 would make tf.keras Keras 3; mtssl_tf overrides it."""
  result = _python('import mtssl_tf, tensorflow as tf; print(tf.keras.layers.Layer.__module__)', legacy_keras='0')
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().startswith('tf_keras.'), result.stdout


@current_only
def test_keras_3_already_behind_tf_keras_is_a_clear_error():
  result = _python('import tensorflow as tf; tf.keras.layers.Layer; import mtssl_tf', legacy_keras='0')
  assert result.returncode != 0
  assert 'mtssl_tf needs Keras 2' in result.stderr and 'TF_USE_LEGACY_KERAS=1' in result.stderr, result.stderr
