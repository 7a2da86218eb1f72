"""Nonlinear probes (Noroozi Table 6): 10-crop geometry, frozen prefix kept, rest re-drawn, binary end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.evaluation import nonlinear as nl
from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META, load_student

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ten_crops_are_the_corners_centre_and_their_mirrors():
  # Pixel (y, x) holds (y, x, y * 10 + x): every crop is identified exactly by its values.
  height, width, crop = 7, 10, 4
  y, x = np.mgrid[:height, :width]
  image = np.stack([y, x, y * 10 + x], -1).astype(np.uint8)
  crops = nl.ten_crops(tf.constant(image), crop).numpy()
  assert crops.shape == (10, crop, crop, 3) and crops.dtype == np.uint8
  # Caffe's oversample order: top-left, top-right, bottom-left, bottom-right, centre ((7-4)//2, (10-4)//2).
  corners = [(0, 0), (0, 6), (3, 0), (3, 6), (1, 3)]
  for i, (y0, x0) in enumerate(corners):
    np.testing.assert_array_equal(crops[i], image[y0 : y0 + crop, x0 : x0 + crop])
    np.testing.assert_array_equal(crops[i + 5], image[y0 : y0 + crop, x0 : x0 + crop][:, ::-1])
  assert nl.CENTRE_CROP == 4


def _tiny_student(folder: str, input_size: int = 56, batch_norm: bool = True) -> str:
  """A tiny AlexNet student folder as `mtssl-transfer` leaves it (distinctive weights)."""
  model = models.build_model('alexnet', 5, input_size, width=0.125, batch_norm=batch_norm)
  for v in model.variables:
    v.assign(tf.random.stateless_normal(v.shape, [3, len(v.name)], stddev=0.05) + (1.0 if 'variance' in v.name else 0))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  with open(os.path.join(folder, META), 'w') as f:
    kwargs = {'width': 0.125, 'batch_norm': batch_norm}
    json.dump({'architecture': 'alexnet', 'num_classes': 5, 'input_size': input_size, 'kwargs': kwargs}, f)
  return folder


def _overrides(sources, extra=()):
  return [
    f'nonlinear.train_source={sources["images_train"]}',
    f'nonlinear.validation_source={sources["images_validation"]}',
    *[f'nonlinear.{k}' for k in ('image_size=64', 'crop_size=56', 'batch_size=8', 'eval_batch_size=10', 'steps=3',
                                 'log_every_steps=3', 'learning_rate=0.05')],
    *extra,
  ]  # fmt: skip


def _weights(net, name):
  layer = nl._layer(net, name)
  out = [layer.kernel.numpy()] + ([layer.bias.numpy()] if layer.bias is not None else [])
  if name in net.norms:
    norm = net.norms[name]
    out += [v.numpy() for v in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance)]
  return out


@pytest.mark.numerics
@pytest.mark.parametrize('batch_norm', [True, False])
def test_prefix_is_frozen_and_the_rest_redrawn_and_trained(tmp_path, tiny_world, batch_norm):
  student_dir = _tiny_student(str(tmp_path / 'student'), batch_norm=batch_norm)
  student = load_student(student_dir)
  cfg = load_eval_config([], _overrides(tiny_world['sources'], ['nonlinear.freeze_through=[conv2]']), student_dir)
  ctx = runner.context(nl.NAME, cfg, str(tmp_path))
  model, source = nl.build_network(ctx, 'conv2', 10)
  assert 'conv1..conv2 frozen' in source
  for name in ('conv1', 'conv2'):  # Copied exactly, BatchNorm included.
    for got, want in zip(_weights(model.net, name), _weights(student, name)):
      np.testing.assert_array_equal(got, want)
  for name in ('conv3', 'conv4', 'conv5', 'fc6', 'fc7'):  # Drawn afresh: N(0, std), BatchNorm at the identity.
    kernel = model.net.convs[name].kernel if name in model.net.convs else model.net.fcs[name].kernel
    assert not np.array_equal(kernel.numpy(), _weights(student, name)[0])
    std = nl.FILLERS[name][0]
    # Sample std of >= 10^3 normal draws: within 25% of the filler's (a loose statistical bound, not float-tight).
    assert abs(float(np.std(kernel.numpy())) / std - 1) < 0.25
    if batch_norm:
      np.testing.assert_array_equal(model.net.norms[name].moving_variance.numpy(), 1.0)
    else:  # The fillers' constant bias.
      np.testing.assert_array_equal(nl._layer(model.net, name).bias.numpy(), nl.FILLERS[name][1])
  trainable = {id(v) for v in model.trainable_variables}
  for name in ('conv1', 'conv2'):
    frozen = model.net.convs[name].variables + (model.net.norms[name].variables if batch_norm else [])
    assert not any(id(v) in trainable for v in frozen)

  results = runner.run(nl.NAME, cfg, str(tmp_path))
  assert set(results) >= {'conv2_top1', 'conv2_top5', 'conv2_top1_1crop', 'layers', 'protocol'}
  assert 0.0 <= results['conv2_top1'] <= results['conv2_top5'] <= 1.0
  assert results['layers']['conv2']['steps'] == 3 and results['layers']['conv2']['images'] == 20
  # After training: the frozen prefix (kernels and BatchNorm moving statistics) is still the student's,
  # the trained layers moved away from their fresh draw.
  latest = tf.train.latest_checkpoint(os.path.join(str(tmp_path), 'eval', nl.NAME, 'conv2', 'checkpoints'))
  fresh, _ = nl.build_network(ctx, 'conv2', 10)
  tuned, _ = nl.build_network(ctx, 'conv2', 10)
  tf.train.Checkpoint(model=tuned).read(latest).expect_partial()
  for name in ('conv1', 'conv2'):
    for got, want in zip(_weights(tuned.net, name), _weights(student, name)):
      np.testing.assert_array_equal(got, want)
  for name in ('conv3', 'fc6', 'fc8'):
    assert not np.array_equal(_weights(tuned.net, name)[0], _weights(fresh.net, name)[0])


def test_fc_columns_check_the_student_and_bad_inits_are_named(tmp_path, tiny_world, pretrained):
  student_dir = _tiny_student(str(tmp_path / 'student'))
  cfg = load_eval_config([], _overrides(tiny_world['sources'], ['nonlinear.crop_size=64']), student_dir)
  with pytest.raises(ConfigError, match='crop_size'):
    nl.build_network(runner.context(nl.NAME, cfg, str(tmp_path)), 'fc6', 10)
  # fc7 column: fc6 and fc7 are the student's, only fc8 is new.
  cfg = load_eval_config([], _overrides(tiny_world['sources']), student_dir)
  model, _ = nl.build_network(runner.context(nl.NAME, cfg, str(tmp_path)), 'fc7', 10)
  student = load_student(student_dir)
  np.testing.assert_array_equal(model.net.fcs['fc7'].kernel.numpy(), student.fcs['fc7'].kernel.numpy())
  assert [v for v in model.trainable_variables] == list(model.net.classifier.trainable_variables)
  cfg = load_eval_config([], _overrides(tiny_world['sources']), pretrained['run_dir'])
  with pytest.raises(ConfigError, match='AlexNet student'):
    nl.build_network(runner.context(nl.NAME, cfg, str(tmp_path)), 'conv1', 10)
  with pytest.raises(ConfigError, match='freeze_through'):
    load_eval_config([], ['nonlinear.freeze_through=[conv6]'], 'random').nonlinear.validate()


def test_binary_runs_the_tiny_config(tmp_path, tiny_world):
  student_dir = _tiny_student(str(tmp_path / 'student'))
  root = tiny_world['sources']['images_train'][len('tfrecord:') :].split('/images/')[0]
  out = tmp_path / 'out'
  cmd = [
    sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--eval=nonlinear', f'--init={student_dir}', f'--model_dir={out}',
    f'--config={os.path.join(REPO, "configs", "eval", "nonlinear_tiny.yaml")}', '--override=world_preset=tiny',
    f'--override=world_dir={root}',
    *[f'--override=nonlinear.{k}' for k in ('steps=2', 'image_size=64', 'crop_size=56', 'freeze_through=[conv5]',
                                            'batch_size=8', 'eval_batch_size=10')],
  ]  # fmt: skip
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / 'eval' / 'nonlinear' / 'results.json').read_text())
  assert 0.0 <= results['conv5_top1'] <= results['conv5_top5'] <= 1.0
  assert results['layers']['conv5']['steps'] == 2 and '"conv5_top1"' in result.stdout
