"""Data-dependent initialisation (Krähenbühl et al. 2016) of the AlexNets."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.transfer.models import LOGITS
from mtssl_tf.transfer.models import AlexNet as ClusterAlexNet
from mtssl_tf.trunk import data_init
from mtssl_tf.trunk.alexnet import AlexNet

# Float statistics compared with tolerances: CI reruns these with oneDNN off (another CPU's rounding).
pytestmark = pytest.mark.numerics

SIZE = 67  # The smallest standard-AlexNet input whose every Caffe pool holds a 3x3 window: pool5 1x1.


def _images(count=24, seed=3):
  # Smooth noise: neighbouring pixels correlate, as in photographs, so conv outputs are not white.
  noise = tf.random.stateless_uniform([count, SIZE // 4 + 1, SIZE // 4 + 1, 3], [seed, 1], -1.0, 1.0)
  return tf.image.resize(noise, [SIZE, SIZE])


def _moments(net, images):
  taps = {}
  net.forward(images, training=False, taps=taps)
  out = {}
  for name, (_, y) in taps.items():
    flat = tf.reshape(tf.cast(y, tf.float64), [-1, y.shape[-1]]).numpy()
    out[name] = (flat.mean(axis=0), flat.std(axis=0), y)
  return out


def test_within_layer_gives_every_channel_mean_beta_and_unit_std():
  net = AlexNet(width=1 / 16)
  images = _images()
  report = data_init.data_dependent_init(net, images, calibrate=False, seed=1)
  assert report.layers == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7']
  assert report.mode == 'within layer' and report.calibration_rounds == 0
  for name, (mean, std, _) in _moments(net, images).items():
    # Each layer was scaled by the statistics it is measured with again here: only float32 rounding of a
    # conv with fan-in <= 600 separates the two (relative ~1e-6), far inside 1e-3.
    np.testing.assert_allclose(mean, data_init.BETA, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(std, 1.0, rtol=1e-3, err_msg=name)


def test_the_caffe_fillers_are_far_from_that():
  # Why the paper's Random row needs it: CaffeNet's fillers (std 0.01, 0.005) shrink the signal layer by layer.
  net = AlexNet(width=1 / 16)
  stds = {name: float(std.mean()) for name, (_, std, _) in _moments(net, _images()).items()}
  assert stds['fc7'] < 1e-2 * stds['conv1']


def test_between_layer_evens_the_gradient_to_weight_ratios():
  images = _images()
  within = AlexNet(width=1 / 16)
  data_init.data_dependent_init(within, images, calibrate=False, seed=1)
  before = data_init.gradient_ratios(within, images)
  full = AlexNet(width=1 / 16)
  report = data_init.data_dependent_init(full, images, calibrate=True, seed=1)
  assert report.mode == 'within+between layer' and report.calibration_rounds >= 1
  spread_before = np.std(np.log(list(before.values())))
  spread_after = np.std(np.log(list(report.ratios.values())))
  # Within-layer leaves ratios orders of magnitude apart (conv1 sees 3 channels, fc7 256 units); the
  # calibration brings them together. A factor 4 is the margin: measured 1.24-1.36 -> 0.07-0.11 (3 seeds).
  assert spread_after < spread_before / 4, (before, report.ratios)


def test_cluster_classifier_includes_fc8_and_stays_a_classifier():
  net = ClusterAlexNet(7, width=1 / 16)
  images = _images()
  report = data_init.data_dependent_init(net, images, calibrate=False)
  assert report.layers[-1] == LOGITS
  mean, std, logits = _moments(net, images)[LOGITS]
  assert logits.shape == (24, 7)
  np.testing.assert_allclose(std, 1.0, rtol=1e-3)
  assert np.all(np.isfinite(net(images, training=False)[LOGITS].numpy()))


def test_batchnorm_network_gets_its_statistics_from_the_images():
  net = AlexNet(width=1 / 16, batch_norm=True)
  images = _images()
  report = data_init.data_dependent_init(net, images, seed=2)
  assert report.mode == 'batchnorm statistics' and report.calibration_rounds == 0
  for name, (_, _, y) in _moments(net, images).items():
    normed = tf.reshape(tf.cast(net.norms[name](y, training=False), tf.float64), [-1, y.shape[-1]]).numpy()
    np.testing.assert_allclose(normed.mean(axis=0), data_init.BETA, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(normed.std(axis=0), 1.0, rtol=1e-3, err_msg=name)


def test_same_seed_same_weights():
  images = _images()
  a, b = AlexNet(width=1 / 16), AlexNet(width=1 / 16)
  data_init.data_dependent_init(a, images, seed=5)
  data_init.data_dependent_init(b, images, seed=5)
  for x, y in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match='at least 2 images'):
    data_init.data_dependent_init(AlexNet(width=1 / 16), _images(count=1))
  with pytest.raises(TypeError, match='weight_layers'):
    data_init.data_dependent_init(tf.keras.Sequential([tf.keras.layers.Dense(3)]), _images(count=2))


def test_statistics_do_not_depend_on_how_the_images_are_split():
  images = _images()
  whole, chunked = AlexNet(width=1 / 16), AlexNet(width=1 / 16)
  data_init.data_dependent_init(whole, images, calibrate=False, seed=4, batch_size=24)
  data_init.data_dependent_init(chunked, images, calibrate=False, seed=4, batch_size=5)  # 5+5+5+5+4 images.
  # Float64 sums of the same float32 outputs; convs of another batch shape may differ in the last bits (1e-7
  # relative), far inside 1e-4.
  for x, y in zip(whole.get_weights(), chunked.get_weights()):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
