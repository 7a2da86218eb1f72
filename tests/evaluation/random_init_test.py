"""`--init=random` AlexNets initialised on the protocol's training images (Krähenbühl et al. 2016), or not."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError
from mtssl_tf.data.sources import DataError
from mtssl_tf.evaluation import detection, nonlinear, places, random_init, runner, segmentation
from mtssl_tf.evaluation import voc_classification as vc
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.evaluation.protocol import Context
from mtssl_tf.trunk import alexnet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUNK = ['trunk.kind=alexnet', 'trunk.alexnet.width=0.0625', 'random_init_images=16']
NOTE = 'data-dependent init (Krähenbühl et al. 2016'


def _cfg(tiny_world, name, extra=(), files=()):
  root = tiny_world['sources']['images_train'][len('tfrecord:') :].split('/images/')[0]
  paths = [os.path.join(REPO, 'configs', 'eval', f) for f in files]
  return load_eval_config(paths, ['world_preset=tiny', f'world_dir={root}', *TRUNK, *extra], 'random')


def _std(variable):
  return float(np.std(variable.numpy()))


def test_voc07_random_alexnet_every_layer_from_the_training_views(tiny_world, tmp_path):
  def network(mode):
    cfg = _cfg(tiny_world, 'voc07_cls', [f'random_init={mode}', 'voc07_cls.crop_size=64', 'voc07_cls.fc_units=64'])
    return vc.Voc07ClassificationProtocol().network(runner.context('voc07_cls', cfg, str(tmp_path), progress=False))

  (model, source), (fillers, plain) = network('data_dependent'), network('fillers')
  assert NOTE in source and 'within+between layer' in source and 'on 16 training images' in source
  assert NOTE not in plain
  layers = model.net.weight_layers()
  assert list(layers) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'logits']
  # The fillers' conv1 is N(0, 0.01); rescaled N(0, 1) draws on [-1, 1] images are another scale altogether
  # (their std is 1 / (the output std of a 363-input unit), order 0.1 before the calibration's factors).
  assert _std(fillers.net.convs['conv1'].kernel) == pytest.approx(alexnet.CONV_STDDEV, rel=0.2)
  assert abs(np.log(_std(layers['conv1'].kernel) / alexnet.CONV_STDDEV)) > np.log(3)
  # The point of it: a random network's class scores vary with the image. Measured: std 1.0 vs the fillers' 0.0015.
  section = _cfg(tiny_world, 'voc07_cls', ['voc07_cls.crop_size=64']).voc07_cls
  views = random_init.sample_images(vc.training_dataset(tiny_world['sources']['detection_trainval'], section), 16)
  spread = float(tf.math.reduce_std(model(views, training=False)))
  quiet = float(tf.math.reduce_std(fillers(views, training=False)))
  assert spread > 30 * quiet, (spread, quiet)


def test_nonlinear_random_keeps_it_in_the_frozen_layers_and_redraws_the_trained_ones(tiny_world, tmp_path):
  extra = ['nonlinear.image_size=64', 'nonlinear.crop_size=56', 'nonlinear.batch_size=8', 'nonlinear.width=0.0625',
           'nonlinear.fc_units=64']  # fmt: skip
  cfg = _cfg(tiny_world, 'nonlinear', extra)
  ctx = runner.context('nonlinear', cfg, str(tmp_path), progress=False)
  protocol = nonlinear.NonlinearProtocol()
  protocol.prepare(ctx)
  protocol.count_classes(ctx)
  model, source = nonlinear.build_network(ctx, 'conv3', protocol.num_classes, lambda: protocol.train_data(ctx, 0))
  assert NOTE in source and 'conv1..conv3 frozen' in source
  frozen, fresh = model.net.convs['conv3'], model.net.convs['conv4']
  assert not frozen.trainable and fresh.trainable
  assert abs(np.log(_std(frozen.kernel) / alexnet.CONV_STDDEV)) > np.log(3)
  assert _std(fresh.kernel) == pytest.approx(alexnet.CONV_STDDEV, rel=0.2)  # Re-drawn with the fillers.


def test_places_random_batchnorm_alexnet_gets_its_statistics_from_the_crops(tiny_world, tmp_path):
  extra = ['trunk.alexnet.batch_norm=true', 'places_linear.image_size=64', 'places_linear.crop_size=56',
           'places_linear.batch_size=4']  # fmt: skip
  cfg = _cfg(tiny_world, 'places_linear', extra, ['places_linear_tiny.yaml'])
  protocol = places.PlacesLinearProtocol()
  ctx = protocol.prepare(runner.context(places.NAME, cfg, str(tmp_path), progress=False))
  assert 'batchnorm statistics' in protocol.network_source
  norm = ctx.network.net.norms['conv1']
  # Identity statistics (mean 0, variance 1) before; the crops' own after.
  assert float(tf.reduce_max(tf.abs(norm.moving_mean))) > 0.1
  assert float(tf.reduce_max(tf.abs(norm.moving_variance - 1.0))) > 0.1


def test_segmentation_random_fcn_from_the_training_images(tiny_world, tmp_path):
  sources = tiny_world['sources']
  extra = [f'voc12_seg.train_source={sources["segmentation_train"]}', 'voc12_seg.iter_size=2', 'random_init_images=4',
           'voc12_seg.fc_units=64', 'voc12_seg.fc6_kernel=1']  # fmt: skip
  cfg = _cfg(tiny_world, 'voc12_seg', extra)
  model, source = segmentation.Voc12SegmentationProtocol().network(
    runner.context(segmentation.NAME, cfg, str(tmp_path), progress=False)
  )
  assert NOTE in source
  assert list(model.weight_layers()) == ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7']
  assert float(tf.reduce_max(tf.abs(model.score_fr.kernel))) == 0.0  # FCN's zero-initialised scores stay.


def test_detection_random_alexnet_trunk_before_the_copy(tiny_world, tmp_path):
  sources = tiny_world['sources']
  # The RPN detector: this test reads the network only, and selective search would first compute proposals.
  extra = [f'detection.train_source={sources["detection_trainval"]}', 'detection.scales=[64]',
           'detection.max_side=96', 'detection.rpn_filters=16', 'detection.fc_units=64',
           'detection.proposals=rpn']  # fmt: skip
  cfg = _cfg(tiny_world, 'detection', extra, ['detection_alexnet_tiny.yaml'])
  protocol = detection.DetectionProtocol()
  ctx = protocol.prepare(runner.context('detection', cfg, str(tmp_path), progress=False))
  protocol.build(ctx)
  assert NOTE in protocol.described['network'] and 'box head fc6/fc7 are new' in protocol.described['network']


def test_fillers_and_non_random_sources_are_left_alone():
  net = alexnet.AlexNet(width=0.0625, fc_units=())
  net(tf.zeros([1, 67, 67, 3]))
  before = [w.copy() for w in net.get_weights()]

  def batches():
    raise AssertionError('no image is read when nothing is initialised')

  for init, mode in (('random', 'fillers'), ('/some/run', 'data_dependent')):
    ctx = Context('x', None, '', '', '', '', init=init, random_init=mode)
    assert random_init.initialise(ctx, net, batches, None) == ''
  for got, want in zip(net.get_weights(), before):
    np.testing.assert_array_equal(got, want)  # Untouched: the same bytes.


def test_config_and_data_errors_are_named():
  with pytest.raises(ConfigError, match='random_init: must be one of'):
    load_eval_config([], ['random_init=kaiming'])
  with pytest.raises(ConfigError, match='random_init_images: .*at least 2'):
    load_eval_config([], ['random_init_images=1'])
  with pytest.raises(DataError, match='gave 1 image.*random_init=fillers'):
    random_init.sample_images([{'image': tf.zeros([1, 8, 8, 3])}], 16)
  # Batches of different sizes (whole-image protocols) are resized to the first's.
  mixed = random_init.sample_images([{'image': tf.zeros([2, 8, 8, 3])}, {'image': tf.zeros([2, 6, 10, 3])}], 3)
  assert mixed.shape == (3, 8, 8, 3)
