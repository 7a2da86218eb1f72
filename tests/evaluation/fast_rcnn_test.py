"""Fast R-CNN on precomputed selective-search proposals (Noroozi Table 3 as the paper ran it)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from detection_convnet_test import MS_KEY, ROOT, SS_KEY, _sources, _student, tiny_cfg

from mtssl_tf.configs import ConfigError
from mtssl_tf.evaluation import (
  detection_convnet,
  detection_data,
  detection_scales,
  fast_rcnn,
  proposals,
  roi_training,
  runner,
)
from mtssl_tf.evaluation.runner import load_eval_config
from mtssl_tf.evaluation.selective_search import SelectiveSearchSettings
from mtssl_tf.transfer.student import load_student


@pytest.fixture(scope='module')
def student_dir(tmp_path_factory):
  return _student(str(tmp_path_factory.mktemp('student')))


def _store(boxes) -> proposals.ProposalStore:
  return proposals.ProposalStore('mem.npz', {k: np.asarray(v, np.float32) for k, v in boxes.items()}, {'settings': {}})


# --- proposals follow the image ---------------------------------------------------------------------------


def test_proposals_are_flipped_and_resized_with_the_image_and_padding_stays():
  store = _store({'a': [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]})
  padded = detection_data.lookup_proposals(store, 3, tf.constant('a'))
  # Padding is the fill value -1 and tf.where keeps it: no arithmetic touches it, so exact on every CPU.
  np.testing.assert_array_equal(padded[2].numpy(), [-1, -1, -1, -1])
  image = tf.zeros([50, 100, 3], tf.uint8)  # Landscape: shorter side 50 -> 64 (x1.28).
  out = detection_data.transform(image, tf.zeros([0, 4]), 64, 256, True, lambda x: x, padded)
  size = out['image_shape'].numpy()
  np.testing.assert_allclose(size, [64, 128], atol=1e-4)
  # Flipped: x -> 1 - x (xmin, xmax swap); then normalised -> pixels of the resized image.
  np.testing.assert_allclose(out['proposals'][0].numpy(), [0.1 * 64, 0.4 * 128, 0.5 * 64, 0.8 * 128], atol=1e-3)
  np.testing.assert_allclose(out['proposals'][1].numpy(), [0, 0, 64, 128], atol=1e-3)
  np.testing.assert_array_equal(out['proposals'][2].numpy(), [-1, -1, -1, -1])
  # Eagerly the store's own error; inside a tf.data pipeline TensorFlow wraps its message in an OpError.
  with pytest.raises((proposals.ProposalError, tf.errors.OpError), match=r"no selective-search boxes for image 'b'"):
    detection_data.lookup_proposals(store, 3, tf.constant('b'))


# --- Fast R-CNN's test ----------------------------------------------------------------------------------


class _TwoLevelStub:
  """Scores class 0 at 0.9 on the small level (300 px) and class 1 at 0.8 on the large one (600 px)."""

  num_classes = 2

  def scored_boxes(self, images, image_shape, rois):
    small = image_shape[0, 0] < 400.0
    n = tf.shape(rois)[1]
    scores = tf.where(small, [[0.9, 0.01]], [[0.01, 0.8]])
    valid = tf.cast(tf.reduce_max(rois, -1, keepdims=True) >= 0, tf.float32)
    return {'scores': tf.tile(scores[None], [1, n, 1]) * valid, 'boxes': tf.tile(rois[:, :, None], [1, 1, 2, 1])}


def test_each_proposal_is_scored_at_the_level_where_its_area_is_nearest_224_squared():
  # A whole-image ROI is 300^2 px at the small level (nearer 224^2 than 600^2): class 0 there. A 0.3-side ROI is
  # 90^2 / 180^2 px: nearer at the large level, class 1. The padded ROI scores 0 and is never detected.
  norm = np.array([[0, 0, 1, 1], [0, 0, 0.3, 0.3], [-1, -1, -1, -1]], np.float32)
  batch = {'image_id': tf.constant(['x'])}
  for i, side in enumerate((300.0, 600.0)):
    batch[f'image_{i}'] = tf.zeros([1, 8, 8, 3])
    batch[f'image_shape_{i}'] = tf.constant([[side, side]])
    batch[f'proposals_{i}'] = tf.constant(np.where(norm >= 0, norm * side, -1)[None])
  detect = detection_scales.proposal_detector(_TwoLevelStub(), 0.3, 0.05, 100, num_levels=2)
  boxes, scores, classes = detect(batch)
  order = np.argsort(classes)
  np.testing.assert_array_equal(classes[order], [0, 1])  # Class indices: integers.
  np.testing.assert_allclose(scores[order], [0.9, 0.8], rtol=1e-6)
  np.testing.assert_allclose(boxes[order], norm[:2], atol=1e-6)


def test_scored_boxes_zero_padded_rois_and_clip_to_the_image(student_dir):
  cfg = tiny_cfg(proposals='selective_search', fc_dropout=0.0)
  student = load_student(student_dir)
  model, description = detection_convnet.build_conv_detector(cfg, student)
  assert isinstance(model, fast_rcnn.FastRCNN) and 'selective-search proposals' in description
  assert set(model.variable_groups()) == {'trunk', 'lasso', 'fc', 'box_head'}  # No RPN.
  rois = tf.constant([[[0.0, 0.0, 64.0, 96.0], [8.0, 8.0, 40.0, 40.0], [-1.0, -1.0, -1.0, -1.0]]])
  out = model.scored_boxes(tf.random.normal([1, 64, 96, 3]), tf.constant([[60.0, 90.0]]), rois)
  scores, boxes = out['scores'].numpy(), out['boxes'].numpy()
  assert scores.shape == (1, 3, 20) and boxes.shape == (1, 3, 20, 4)
  np.testing.assert_array_equal(scores[0, 2], np.zeros(20))  # Selected by tf.where, not computed: exact.
  # Softmax over 21 classes: the 20 object probabilities of a real ROI sum below 1 (background takes the rest).
  assert np.all(scores[0, :2] > 0) and np.all(scores[0, :2].sum(-1) < 1)
  assert boxes[..., 0::2].max() <= 60.0 and boxes[..., 1::2].max() <= 90.0 and boxes.min() >= 0.0


def test_filler_rois_are_masked_out_of_the_class_loss(student_dir):
  cfg = tiny_cfg(proposals='selective_search', roi_batch_size=4, roi_bg_iou_low=0.1)
  model, _ = detection_convnet.build_conv_detector(cfg, load_student(student_dir))
  gt = tf.constant([[[8.0, 8.0, 40.0, 40.0]]])
  batch = {
    'image': tf.random.normal([1, 64, 64, 3]),
    # Foreground (IoU 1), background (IoU 0.25), neither (IoU 0: below roi_bg_iou_low), padding.
    'proposals': tf.constant([[[8.0, 8.0, 40.0, 40.0], [8.0, 8.0, 16.0, 40.0], [48, 48, 64, 64], [-1.0] * 4]]),
    'gt_boxes': gt,
    'gt_classes': tf.constant([[3]]),
  }
  rois, _, classes, _ = model.roi_sampler(batch['proposals'], gt, batch['gt_classes'])
  # Three real candidates (the proposal and the box itself, IoU 1; the background one) for 4 slots: the sampler
  # fills at least one with a ROI that is neither, labelled background. Only real ones may enter the class loss.
  real, classes = roi_training.sampled_for_real(model.roi_sampler, rois, gt).numpy()[0], classes.numpy()[0]
  assert 1 <= (~real).sum() and np.all(classes[~real] == 0) and np.all(real[classes > 0])
  # Hand-computed: the class loss is the mean cross-entropy over the real ROIs only.
  logits = tf.constant([[[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]])
  loss = roi_training.masked_class_loss(logits, tf.constant([[1, 0, 1]]), tf.constant([[True, True, False]]))
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))])
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
  losses = model.train_losses(batch)
  for key in ('frcnn_class_loss', 'frcnn_box_loss', 'total_loss'):
    assert np.isfinite(losses[key].numpy()), key
  assert 'rpn_score_loss' not in losses


# --- the cache ------------------------------------------------------------------------------------------


def _images():
  rng = np.random.default_rng(0)
  out = []
  for i in range(3):
    image = rng.integers(0, 40, [48, 64, 3]).astype(np.uint8)
    image[10:30, 12 + 8 * i : 40 + 8 * i] = [200, 40, 40]
    out.append((f'img{i}', image))
  return out


def test_cache_computes_each_image_once_and_refuses_other_settings(tmp_path):
  settings = SelectiveSearchSettings(min_box_side=4)
  calls = []

  def images():
    calls.append(1)
    return iter(_images())

  store = proposals.build(images, 'voc:/x:test', str(tmp_path), settings, workers=1, progress=False)
  assert len(store) == 3 and store.mean_count() > 1
  for image_id, _ in _images():
    boxes = store.boxes(image_id)
    assert boxes.shape[1] == 4 and boxes.min() >= 0 and boxes.max() <= 1
  stamp = os.stat(store.path).st_mtime_ns
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(store.path).st_mode & 0o777 == 0o666 & ~umask  # A plain file, not mkstemp's private 0600.
  again = proposals.build(images, 'voc:/x:test', str(tmp_path), settings, workers=1, progress=False)
  assert os.stat(store.path).st_mtime_ns == stamp  # Nothing computed, nothing rewritten.
  assert len(calls) == 1  # A complete cache does not read the source again.
  # Read back from the file: a byte copy of what was written, so equal to the bit on any CPU.
  np.testing.assert_array_equal(again.boxes('img1'), store.boxes('img1'))
  # Another source or settings: another file (the name hashes both); a foreign file under the name is refused.
  other = proposals.cache_path(str(tmp_path), 'voc:/x:test', SelectiveSearchSettings(min_box_side=5))
  assert other != store.path
  os.replace(store.path, other)
  with pytest.raises(proposals.ProposalError, match='was built for'):
    proposals.build(images, 'voc:/x:test', str(tmp_path), SelectiveSearchSettings(min_box_side=5), 1, False)
  with pytest.raises(proposals.ProposalError, match="'img0' appears twice"):
    proposals.build(lambda: iter(_images() + _images()[:1]), 's', str(tmp_path / 'b'), settings, 1, False)


def test_two_worker_processes_give_the_single_process_boxes(tmp_path):
  settings = SelectiveSearchSettings(min_box_side=4)
  one = proposals.build(lambda: iter(_images()), 's', str(tmp_path / 'one'), settings, workers=1, progress=False)
  two = proposals.build(lambda: iter(_images()), 's', str(tmp_path / 'two'), settings, workers=2, progress=False)
  for image_id, _ in _images():  # The same code on the same CPU in another process: the same bits.
    np.testing.assert_array_equal(one.boxes(image_id), two.boxes(image_id))


# --- end to end -----------------------------------------------------------------------------------------


def test_resnet_trunks_are_refused_before_anything_loads(tmp_path, tiny_world):
  train, test = _sources(tiny_world)
  overrides = [
    f'detection.train_source={train}',
    f'detection.test_source={test}',
    'detection.proposals=selective_search',
  ]
  with pytest.raises(ConfigError, match=r"detection\.proposals: 'selective_search' runs Fast R-CNN on AlexNet"):
    runner.run('detection', load_eval_config([], overrides, 'random'), str(tmp_path))
  with pytest.raises(ConfigError, match=r'detection\.proposals: must be one of'):
    runner.run('detection', load_eval_config([], overrides[:2] + ['detection.proposals=edge_boxes'], 'random'),
               str(tmp_path))  # fmt: skip


@pytest.mark.numerics
def test_alexnet_student_fast_rcnn_on_selective_search_reports_both_tests(tmp_path, tiny_world):
  student = _student(str(tmp_path / 'student'))
  train, test = _sources(tiny_world)
  tiny = os.path.join(ROOT, 'configs', 'eval', 'detection_alexnet_tiny.yaml')
  cache = str(tmp_path / 'proposals')
  overrides = [f'detection.train_source={train}', f'detection.test_source={test}', 'detection.train_steps=3',
               'detection.scales=[64]', 'detection.max_side=96', 'detection.test_scale=64',
               'detection.test_max_side=96', 'detection.test_scales=[48,64]', 'detection.test_scales_max_side=96',
               'detection.fc_units=256', 'detection.log_every_steps=1', 'detection.proposals=selective_search',
               'detection.proposal_min_box_side=5', f'detection.proposal_cache_dir={cache}',
               'detection.proposal_workers=1', 'detection.max_proposals=300']  # fmt: skip
  runner.run('detection', load_eval_config([tiny], overrides, student), str(tmp_path))
  saved = json.load(open(tmp_path / 'eval' / 'detection' / 'results.json'))
  for key in (SS_KEY, MS_KEY):
    assert 0.0 <= saved[key] <= 1.0, key
  assert saved['proposals'] == 'selective_search' and 'table_note' not in saved
  assert saved['proposal_settings']['min_box_side'] == 5 and saved['proposals_per_image'] > 10
  assert saved['num_test_images'] == saved['multiscale_num_test_images'] == 8
  assert len([f for f in os.listdir(cache) if f.endswith('.npz')]) == 2  # trainval and test, one file each.
