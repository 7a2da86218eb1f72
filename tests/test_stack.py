"""The pinned environment imports the whole stack together (see constraints.txt)."""

import importlib

import pytest


@pytest.mark.parametrize(
  'module',
  [
    'tensorflow',
    'tensorflow_addons',
    'tensorflow_io',
    'tensorflow_datasets',
    'official.vision',
    'cv2',
    'h5py',
    'tensorboard.main',
  ],
)
def test_imports(module):
  assert importlib.import_module(module) is not None


def test_versions_are_the_pinned_ones():
  from importlib.metadata import version

  import keras
  import tensorflow as tf

  assert tf.__version__ == '2.15.1'
  # Keras 2: ParameterServerStrategy does not run on Keras 3.
  assert keras.__version__.startswith('2.15')
  assert version('numpy').startswith('1.')
  assert version('protobuf').startswith('4.')
  # 1.21 (the unconstrained pick) needs protobuf >= 5.26 and breaks tensorflow_datasets.
  assert version('tensorflow-metadata') == '1.16.1'
