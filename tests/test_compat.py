"""mtssl_tf.compat picks each line's choice on the line the tests run on.

The line is known independently of compat from the interpreter, as setup.py's environment markers
choose the stack: Python 3.12 installs the current line (TF 2.20 + tf-keras), 3.9-3.11 the reference
line (TF 2.15.1). Each test checks compat's answer against that, so the same file passes on both lines
and would fail on either if compat picked the other line's choice.
"""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from mtssl_tf import compat

EXPECTED_LINE = compat.CURRENT if sys.version_info >= (3, 12) else compat.REFERENCE


def test_line_follows_the_installed_stack():
  assert compat.line() == EXPECTED_LINE
  # The anchors of each line (constraints.txt / constraints-current.txt).
  assert compat.tensorflow_version() == ((2, 20) if EXPECTED_LINE == compat.CURRENT else (2, 15))


def test_anchor_generator_is_the_lines_class():
  from official.vision.ops import anchor_generator

  from mtssl_tf.evaluation import detection_model

  name = 'AnchorGeneratorv1' if EXPECTED_LINE == compat.CURRENT else 'AnchorGenerator'
  assert compat.anchor_generator_class() is getattr(anchor_generator, name)
  assert detection_model._AnchorGenerator is getattr(anchor_generator, name)


def test_anchor_generator_of_the_other_line_is_a_named_error(monkeypatch):
  other = compat.REFERENCE if EXPECTED_LINE == compat.CURRENT else compat.CURRENT
  monkeypatch.setattr(compat, 'line', lambda: other)
  missing = 'AnchorGenerator' if other == compat.REFERENCE else 'AnchorGeneratorv1'
  with pytest.raises(ImportError, match=f'has no {missing}, which the {other} line expects'):
    compat.anchor_generator_class()


def test_tf_keras_is_the_lines_keras_2():
  import tensorflow as tf

  package = tf.keras.layers.Layer.__module__.split('.')[0]
  assert package == compat.keras_package() == ('tf_keras' if EXPECTED_LINE == compat.CURRENT else 'keras')
  assert sys.modules[package].__version__.startswith('2.')


@pytest.mark.parametrize('user_value', [None, '0'])
def test_legacy_keras_variable_set_on_the_current_line_only(user_value):
  """Importing mtssl_tf (no TensorFlow import: fast) sets TF_USE_LEGACY_KERAS=1 on the current line only."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  if user_value is not None:
    env['TF_USE_LEGACY_KERAS'] = user_value
  code = 'import os, sys, mtssl_tf; print(os.environ.get("TF_USE_LEGACY_KERAS"), "tensorflow" in sys.modules)'
  result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
  expected = '1' if EXPECTED_LINE == compat.CURRENT else str(user_value)
  # `False`: compat decides without importing TensorFlow, so the variable is in place before its import.
  assert result.stdout.split() == [expected, 'False'], result.stderr


def test_no_tensorflow_is_a_named_error(monkeypatch):
  def not_found(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(compat.importlib.metadata, 'version', not_found)
  assert compat.tensorflow_version() is None
  with pytest.raises(ImportError, match='no TensorFlow installed.*make install'):
    compat.line()
