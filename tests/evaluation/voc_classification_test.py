"""VOC07 classification fine-tuning: AP rules, devkit targets, view averaging, runs end to end and resumes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation import voc_classification as vc
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META


@pytest.mark.numerics
def test_eleven_point_ap_by_hand_with_ignored_entries():
  # Class column: scores and targets (1 present, 0 absent, -1 difficult-only = ignored).
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
  targets = np.array([1, -1, 0, 1, -1, 0, 1])
  # Ignored rows dropped; ranking: + - + - +, 3 positives.
  # precision at the ranks: 1, 1/2, 2/3, 2/4, 3/5; recall: 1/3, 1/3, 2/3, 2/3, 1.
  # 11-point: t in {0, .1, .2, .3}: max precision at recall >= t = 1; t in {.4, .5, .6}: 2/3;
  # t in {.7, .8, .9, 1.0}: 3/5. AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = 8.4 / 11.
  # Float64 sums of a handful of exact-ish terms: agreement to 1e-12.
  assert vc.eleven_point_ap(scores, targets) == pytest.approx(8.4 / 11, abs=1e-12)
  # The reference's non-interpolated AP: mean precision at the positives = (1 + 2/3 + 3/5) / 3.
  assert vc.reference_ap(scores, targets) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)
  assert np.isnan(vc.eleven_point_ap(scores, np.array([0, -1, 0, 0, 0, 0, 0])))


@pytest.mark.numerics
def test_tied_scores_rank_negatives_first_as_the_reference():
  # A positive and a negative tie at the top: the reference (score - 1e-5 * gt) ranks the negative first.
  scores, targets = np.array([0.5, 0.5]), np.array([1, 0])
  assert vc.reference_ap(scores, targets) == pytest.approx(0.5, abs=1e-12)
  assert vc.eleven_point_ap(scores, targets) == pytest.approx(0.5, abs=1e-12)


def test_targets_from_boxes_follow_the_devkit():
  # One image: two 'dog' (11) boxes, one difficult; a difficult-only 'cat' (7); an easy 'person' (14).
  x = {'classes': tf.constant([11, 11, 7, 14], tf.int64), 'difficult': tf.constant([True, False, True, False])}
  targets = vc._targets(x, 20).numpy()
  expected = np.zeros(20, np.int32)
  expected[[11, 14]] = 1
  expected[7] = -1
  np.testing.assert_array_equal(targets, expected)


def test_views_are_seeded_windows_and_scores_are_their_mean():
  cfg = vc.VocClassificationConfig(crop_size=8, test_views=3, min_scale=0.5, max_scale=2.0, seed=5)
  image = tf.constant(np.random.default_rng(0).integers(0, 256, [20, 30, 3]), tf.uint8)
  views = vc.eval_views(image, tf.constant(4, tf.int64), cfg)
  assert views.shape == (3, 8, 8, 3) and views.dtype == tf.uint8
  np.testing.assert_array_equal(views, vc.eval_views(image, tf.constant(4, tf.int64), cfg))
  # View v is random_view with row v of the stateless uniforms of seed (seed, image index).
  u = tf.random.stateless_uniform([3, 4], tf.constant([5, 4], tf.int64))
  np.testing.assert_array_equal(views[2], vc.random_view(image, 8, 0.5, 2.0, u[2]))
  # Scale 1 at the top-left corner, not mirrored: the image's own top-left 8x8 pixels.
  plain = vc.random_view(image, 8, 1.0, 1.0, tf.constant([0.0, 0.0, 0.0, 0.9]))
  np.testing.assert_array_equal(plain, image[:8, :8])
  mirrored = vc.random_view(image, 8, 1.0, 1.0, tf.constant([0.0, 0.0, 0.0, 0.1]))
  np.testing.assert_array_equal(mirrored, image[:8, :8][:, ::-1])
  # The test score is the mean of the views' logits; 'first' is view 0's.
  batch = tf.stack([views, views[::-1]])  # [2, 3, 8, 8, 3]

  def logits_fn(images):  # Per-image, per-channel means: a stand-in network with 3 'classes'.
    return tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])

  mean, first = vc.average_views(logits_fn, batch)
  per_view = logits_fn(views).numpy()
  # Means of uint8 values in float32: a relative error of a few ulps.
  np.testing.assert_allclose(mean[0], per_view.mean(0), rtol=1e-5)
  np.testing.assert_allclose(first[1], per_view[2], rtol=1e-6)


def _overrides(sources, steps, extra=()):
  section = vc.NAME
  return [
    f'{section}.train_source={sources["detection_trainval"]}',
    f'{section}.test_source={sources["detection_test"]}',
    f'{section}.crop_size=48',
    f'{section}.batch_size=4',
    f'{section}.test_views=2',
    f'{section}.steps={steps}',
    f'{section}.log_every_steps=2',
    f'{section}.checkpoint_every_steps=2',
    f'{section}.learning_rate=0.01',
    *extra,
  ]


@pytest.mark.numerics
def test_runs_from_the_runner_and_resumes(tmp_path, pretrained, tiny_world):
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2), pretrained['run_dir'])
  results = runner.run(vc.NAME, cfg, str(tmp_path))
  out = os.path.join(str(tmp_path), 'eval', vc.NAME)
  assert results['counts']['steps'] == 2 and 0.0 <= results['mAP'] <= 1.0
  assert set(results) >= {'mAP', 'mAP_1view', 'mAP_reference', 'ap', 'protocol'}
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['mAP'] == pytest.approx(results['mAP'], nan_ok=True)
  saved = np.load(os.path.join(out, 'test_scores.npz'))
  aps = vc.per_class(vc.eleven_point_ap, saved['scores'], saved['targets'])
  assert results['mAP'] == pytest.approx(np.nanmean(aps), abs=1e-12)  # Same float64 arithmetic.
  # More steps: resumes from the step-2 checkpoint, trains 2 more.
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 4), pretrained['run_dir'])
  again = runner.run(vc.NAME, cfg, str(tmp_path))
  assert again['counts']['steps'] == 4 and again['train']['steps_trained'] == 2


STUDENT_CROP = f'{vc.NAME}.crop_size=64'  # The tiny student's input size (CaffeNet's pools need >= 55 px).


def _tiny_student(folder: str) -> str:
  """A tiny AlexNet student folder as `mtssl-transfer` leaves it: student.json and a checkpoint (64 px: >= 55)."""
  model = models.build_model('alexnet', 5, 64, width=0.125)
  for v in model.variables:  # Distinctive weights, so the copy can be checked.
    v.assign(tf.random.stateless_normal(v.shape, [1, len(v.name)], stddev=0.05) + (1.0 if 'variance' in v.name else 0))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  with open(os.path.join(folder, META), 'w') as f:
    json.dump({'architecture': 'alexnet', 'num_classes': 5, 'input_size': 64, 'kwargs': {'width': 0.125}}, f)
  return folder


@pytest.mark.numerics
def test_alexnet_student_conv_layers_are_copied_and_fine_tuned(tmp_path, tiny_world):
  student = _tiny_student(str(tmp_path / 'student'))
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc07_cls.freeze_conv1=true', STUDENT_CROP]),
                         student)  # fmt: skip
  ctx = runner.context(vc.NAME, cfg, str(tmp_path))
  model, source = vc.build_classifier(ctx)
  from mtssl_tf.transfer.student import load_student

  loaded = load_student(student)
  for conv in ('conv1', 'conv5'):
    np.testing.assert_array_equal(model.net.convs[conv].kernel.numpy(), loaded.convs[conv].kernel.numpy())
  assert model.net.fcs['fc6'].units == 512 and 'AlexNet student' in source
  results = runner.run(vc.NAME, cfg, str(tmp_path))
  assert results['counts']['steps'] == 2 and 'AlexNet student' in results['protocol']['network']
  # conv1 frozen: its kernel in the fine-tuned checkpoint equals the student's.
  latest = tf.train.latest_checkpoint(os.path.join(str(tmp_path), 'eval', vc.NAME, 'checkpoints'))
  tuned, _ = vc.build_classifier(ctx)
  tf.train.Checkpoint(model=tuned).read(latest).expect_partial()
  np.testing.assert_array_equal(tuned.net.convs['conv1'].kernel.numpy(), loaded.convs['conv1'].kernel.numpy())
  assert not np.array_equal(tuned.net.convs['conv2'].kernel.numpy(), loaded.convs['conv2'].kernel.numpy())


def test_copy_fc_takes_the_students_fc6_fc7_and_checks_the_crop(tmp_path, tiny_world):
  from mtssl_tf.configs.base import ConfigError
  from mtssl_tf.transfer.student import load_student

  student = _tiny_student(str(tmp_path / 'student'))
  loaded = load_student(student)
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc07_cls.copy_fc=true', STUDENT_CROP]), student)
  model, source = vc.build_classifier(runner.context(vc.NAME, cfg, str(tmp_path)))
  for fc in ('fc6', 'fc7'):
    np.testing.assert_array_equal(model.net.fcs[fc].kernel.numpy(), loaded.fcs[fc].kernel.numpy())
  assert not np.array_equal(model.net.classifier.kernel.numpy()[:, :5], loaded.classifier.kernel.numpy())
  assert 'fc6/fc7 copied' in source
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc07_cls.copy_fc=true', 'voc07_cls.crop_size=96']),
                         student)  # fmt: skip
  with pytest.raises(ConfigError, match='copy_fc'):
    vc.build_classifier(runner.context(vc.NAME, cfg, str(tmp_path)))
