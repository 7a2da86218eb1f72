"""deepcontext's AlexNet (trunk.alexnet.conv1_padding 5, groups 1): a 96 px patch gives a 3x3 pool5."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, load_config
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.trunk import alexnet, registry
from mtssl_tf.trunk.alexnet import AlexNet

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATCH = 96  # cdoersch/deepcontext train.py patch_sz.


def _shapes(model, size):
  endpoints = model(tf.keras.Input([size, size, 3]))
  return {name: tuple(t.shape[1:]) for name, t in endpoints.items()}


def test_deepcontext_full_width_shapes_at_the_context_patch():
  # Traced symbolically at full width: conv1 (96 + 2 x 5 - 11) / 4 + 1 = 24 -> pool 12 -> pool 6 -> pool5 3.
  shapes = _shapes(AlexNet('standard', fc_units=(), conv1_padding=5, groups=1), PATCH)
  assert shapes == {
    'conv1': (24, 24, 96),
    'conv2': (12, 12, 256),
    'conv3': (6, 6, 384),
    'conv4': (6, 6, 384),
    'conv5': (6, 6, 256),
    'pool5': (3, 3, 256),
  }
  # CaffeNet's unpadded conv1 leaves 2x2 there (22 -> 11 -> 5 -> 2).
  assert _shapes(AlexNet('standard', fc_units=()), PATCH)['pool5'] == (2, 2, 256)
  assert alexnet.endpoint_sizes('standard', PATCH, 5) == {name: s[0] for name, s in shapes.items()}


def test_no_groups_means_full_fan_in_and_the_counts_agree():
  model = AlexNet('standard', width=1 / 16, batch_norm=False, conv1_padding=5, groups=1)
  model(tf.keras.Input([PATCH, PATCH, 3]))
  channels = alexnet.channels(1 / 16, groups=1)
  for conv, previous in (('conv2', 'conv1'), ('conv4', 'conv3'), ('conv5', 'conv4')):
    assert model.convs[conv].groups == 1
    assert model.convs[conv].kernel.shape[2] == channels[previous]  # Every input channel, not half.
  expected = alexnet.parameter_count('standard', 1 / 16, False, input_size=PATCH, conv1_padding=5, groups=1)
  assert model.count_params() == expected
  grouped = alexnet.parameter_count('standard', 1 / 16, False, input_size=PATCH, conv1_padding=5)
  assert expected > grouped


@pytest.mark.numerics
def test_conv1_padding_is_zero_padding_of_the_input():
  padded = AlexNet('standard', width=1 / 16, fc_units=(), conv1_padding=5, groups=1)
  plain = AlexNet('standard', width=1 / 16, fc_units=(), groups=1)
  images = tf.random.stateless_uniform([2, 64, 64, 3], [1, 2], -1, 1)
  padded(images)
  plain(images)
  plain.set_weights(padded.get_weights())
  got = padded(images)['conv1']
  want = plain(tf.pad(images, [[0, 0], [5, 5], [5, 5], [0, 0]]))['conv1']
  # The same 11x11x3 dot products (363 terms of size ~0.01) on the same values: only summation order may differ.
  np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)


def test_context_configs_use_deepcontexts_trunk_and_reach_3x3():
  for name in ('context_alexnet', 'context_alexnet_tiny'):
    cfg = load_config(ExperimentConfig, [str(ROOT / 'configs' / 'pretext' / f'{name}.yaml')])
    assert (cfg.trunk.alexnet.conv1_padding, cfg.trunk.alexnet.groups) == (5, 1), name
  cfg = load_config(ExperimentConfig, [str(ROOT / 'configs' / 'pretext' / 'context_alexnet.yaml')])
  assert registry.final_size(cfg.trunk, cfg.tasks.relative_position.patch_size) == 3
  cfg.trunk.alexnet.width = 1 / 16
  trunk = registry.build_trunk(cfg.trunk)
  assert tuple(trunk(tf.keras.Input([PATCH, PATCH, 3]))['final'].shape[1:3]) == (3, 3)
  # The other Noroozi configs keep CaffeNet's layers.
  jigsaw = load_config(ExperimentConfig, [str(ROOT / 'configs' / 'pretext' / 'jigsaw_alexnet.yaml')]).trunk.alexnet
  assert (jigsaw.conv1_padding, jigsaw.groups) == (0, 2)


@pytest.mark.parametrize(
  'override_text, key', [('trunk.alexnet.groups=3', 'trunk.alexnet.groups'),
                         ('trunk.alexnet.conv1_padding=-1', 'trunk.alexnet.conv1_padding')]
)  # fmt: skip
def test_bad_choices_are_named(override_text, key):
  with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
    load_config(ExperimentConfig, [], ['trunk.kind=alexnet', override_text])
  with pytest.raises(ValueError, match=key.rsplit('.', 1)[1]):
    AlexNet(**{key.rsplit('.', 1)[1]: int(override_text.rsplit('=', 1)[1])})
