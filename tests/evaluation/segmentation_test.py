"""VOC12 segmentation (voc12_seg): scores by hand, FCN geometry, the world's masks, end to end and resume."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data.segmentation import VOID, segmentation_dataset
from mtssl_tf.data.synthetic import segmentation as world_seg
from mtssl_tf.data.synthetic.detection import write_vocdevkit
from mtssl_tf.data.synthetic.scenes import render_scene
from mtssl_tf.evaluation import runner
from mtssl_tf.evaluation import segmentation as seg
from mtssl_tf.evaluation import segmentation_model as sm
from mtssl_tf.evaluation.config import load_eval_config
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META


@pytest.mark.numerics
def test_scores_equal_the_hand_computed_confusion_matrix_with_void_pixels():
  labels = np.array([[0, 0, 1, 1], [2, VOID, VOID, 1]])
  predictions = np.array([[0, 1, 1, 1], [0, 2, 0, 2]])
  # Void pixels dropped; (truth, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,0) (1,2). Class 3 appears nowhere.
  hist = seg.confusion_matrix(labels, predictions, 4)
  expected = np.array([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(hist, expected)
  scores = seg.segmentation_scores(hist)
  # IoU = diag / (row + col - diag): 1/(2+2-1), 2/(3+3-2), 0/(1+1-0); class 3: 0/0, left out of the means.
  np.testing.assert_allclose(scores['iou'][:3], [1 / 3, 1 / 2, 0.0], atol=1e-15)
  assert np.isnan(scores['iou'][3])
  # Float64 means of three exact-ish fractions: agreement to 1e-12.
  assert scores['mean_iou'] == pytest.approx(5 / 18, abs=1e-12)
  assert scores['pixel_accuracy'] == pytest.approx(3 / 6, abs=1e-12)
  assert scores['mean_accuracy'] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3, abs=1e-12)
  assert scores['fw_iou'] == pytest.approx(2 / 6 * 1 / 3 + 3 / 6 * 1 / 2, abs=1e-12)
  # Accumulated over images, as score.py: the sum of the per-image matrices.
  both = seg.confusion_matrix(labels[:1], predictions[:1], 4) + seg.confusion_matrix(labels[1:], predictions[1:], 4)
  np.testing.assert_array_equal(both, hist)


@pytest.mark.numerics
def test_pixel_loss_ignores_void_and_normalizes_by_valid_pixels():
  logits = tf.zeros([2, 3, 5])  # Uniform: log(5) per pixel.
  label = tf.constant([[0, 1, 255], [4, 255, 2]], tf.uint8)
  # float32 sums of 4 values near 1.6: a few ulps.
  assert float(seg.pixel_loss(logits, label, 'valid')) == pytest.approx(np.log(5), rel=1e-6)
  assert float(seg.pixel_loss(logits, label, 'none')) == pytest.approx(4 * np.log(5), rel=1e-6)
  assert float(seg.pixel_loss(logits, tf.fill([2, 3], tf.constant(255, tf.uint8)), 'valid')) == 0.0


@pytest.mark.numerics
def test_upsampling_is_bilinear_and_the_crop_gives_the_input_size():
  # voc-fcn-alexnet's layers (conv1 pad 100, fc6 6x6) against the 63/32 upscore: Caffe's crop offset 18.
  geometry = ((11, 4, 100),) + sm.ALEXNET_GEOMETRY[1:] + ((6, 1, 0),)
  assert sm.crop_offset(geometry, 63, 32) == 18
  with pytest.raises(ValueError, match='offset'):
    sm.crop_offset(geometry, 64, 32)
  kernel = sm.bilinear_kernel(4, 2)  # surgery.upsample_filt(4): factor 2, centre 1.5: profile 1/4, 3/4, 3/4, 1/4.
  np.testing.assert_allclose(kernel[:, :, 0, 0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
  assert not kernel[:, :, 0, 1].any()
  # A constant score map upsamples to the constant away from the borders (bilinear weights sum to 1 there).
  up = sm.Upsample(2, 4, 2, 1)(tf.fill([1, 3, 3, 2], 2.0), tf.constant([4, 4]))
  assert up.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[0, 1:3, 1:3].numpy(), 2.0, rtol=1e-6)  # float32 sums of 4 products.
  student = models.build_model('alexnet', 5, 64, width=0.125)
  student(tf.zeros([1, 64, 64, 3]))
  fcn = sm.AlexNetFCN(student, seg.SegmentationConfig(fc_units=256))
  assert fcn.upscore.offset == 18
  for size in ((1, 1), (17, 40), (64, 85), (100, 31), (250, 190)):
    assert fcn(tf.zeros([1, *size, 3], tf.uint8)).shape == (1, *size, seg.SegmentationConfig().num_classes)
  # The student's conv layers are copied; score_fr starts at zero (the reference), so the first logits are 0.
  np.testing.assert_array_equal(fcn.convs['conv3'].kernel.numpy(), student.convs['conv3'].kernel.numpy())
  assert not fcn(tf.zeros([1, 20, 20, 3], tf.uint8)).numpy().any()


def test_trunk_fcn_output_size(pretrained):
  from mtssl_tf.evaluation import backbone

  trunk = backbone.load_trunk(pretrained['checkpoint'], pretrained['trunk_config'])
  fcn = sm.TrunkFCN(trunk, seg.SegmentationConfig(), backbone.input_fn('rgb'))
  assert fcn.stride == 16 and fcn.upscore.offset == 8
  for size in ((16, 16), (37, 50), (64, 85)):
    assert fcn(tf.zeros([1, *size, 3], tf.uint8)).shape == (1, *size, 21)


def _eroded(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` whose 8 neighbours are all in it (outside the image counts as outside)."""
  padded, (height, width) = np.pad(mask, 1), mask.shape
  out = mask.copy()
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      out &= padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
  return out


def test_world_masks_match_the_objects_and_leave_images_unchanged(tmp_path):
  written = write_vocdevkit(str(tmp_path / 'a'), 6, size=48, seed=3)
  # The masks take no random draw: replaying the generator gives the same scenes (images, boxes) as before masks.
  rng = np.random.default_rng(3)
  rng.permutation(6)
  for i, record in enumerate(written):
    height, width = (48, 64) if i % 3 != 2 else (64, 48)
    scene = render_scene(rng, height, width, max_objects=5)
    np.testing.assert_array_equal(scene.image, record['scene'].image)
    np.testing.assert_array_equal(scene.boxes, record['scene'].boxes)
  # Deterministic: a second world writes the same label files.
  write_vocdevkit(str(tmp_path / 'b'), 6, size=48, seed=3)
  for record in written:
    paths = [tmp_path / w / 'VOCdevkit' / 'VOC2007' / 'SegmentationClass' / f'{record["id"]}.png' for w in 'ab']
    assert paths[0].read_bytes() == paths[1].read_bytes()
  voc = str(tmp_path / 'a' / 'VOCdevkit' / 'VOC2007')
  by_id = {r['id']: r for r in written}
  read = list(segmentation_dataset(f'vocseg:{voc}:trainval').as_numpy_iterator())
  assert [x['image_id'].decode() for x in read] == [r['id'] for r in written]
  for x in read:
    scene = by_id[x['image_id'].decode()]['scene']
    label = x['label']
    np.testing.assert_array_equal(label, world_seg.class_mask(scene))  # The palette PNG reads back exactly.
    covered = np.zeros(label.shape, bool)
    for mask, cls, (y0, x0, y1, x1) in zip(scene.masks, scene.classes, scene.boxes.astype(int)):
      # Every labelled pixel of the object is its class, inside its box; its inner pixels are labelled.
      assert set(np.unique(label[mask])) <= {int(cls) + 1, VOID}
      inner = _eroded(mask)
      assert (label[inner] == int(cls) + 1).all()
      assert not (mask[:y0].any() or mask[y1:].any() or mask[:, :x0].any() or mask[:, x1:].any())
      covered |= mask
    assert set(np.unique(label[~covered])) <= {0, VOID}  # Outside every object: background or an outline.
  splits = {s: (tmp_path / 'a' / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Segmentation' / f'{s}.txt').read_text()
            for s in ('train', 'val')}  # fmt: skip
  assert splits['train'].split() == [r['id'] for r in written if r['split'] == 'trainval']
  assert splits['val'].split() == [r['id'] for r in written if r['split'] == 'test']


def test_input_scale_resizes_the_input_and_scores_the_dataset_pixels(tiny_world):
  label = tf.constant([[0, 3], [VOID, 1]], tf.uint8)
  image = tf.constant(np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20)
  big_image, big_label = seg.rescale(image, label, 2.0)
  # Nearest at x2 (half-pixel centres) repeats each label: void and class ids exact, no blend of two labels.
  np.testing.assert_array_equal(big_label.numpy(), np.repeat(np.repeat(label.numpy(), 2, 0), 2, 1))
  assert big_image.shape == (4, 4, 3) and big_image.dtype == tf.uint8
  assert seg.rescale(image, label, 1.0)[1] is label

  class Brightness(tf.keras.Model):
    """Class 1 where the pixel's mean is over 128, else 0: logits at the input's own size, as an FCN's."""

    def call(self, images, training=None):
      bright = tf.reduce_mean(tf.cast(images, tf.float32), -1, keepdims=True) / 255.0 - 0.5
      return tf.concat([-bright, bright, tf.zeros_like(bright) - 10.0], -1)

  # Training steps see the enlarged images, each with its label of the same size (padding cut off by `size`).
  train = tiny_world['sources']['segmentation_train']
  first = next(iter(seg.training_dataset(train, seg.SegmentationConfig(iter_size=2, input_scale=2.0))))
  plain = next(iter(seg.training_dataset(train, seg.SegmentationConfig(iter_size=2))))
  np.testing.assert_array_equal(first['size'].numpy(), 2 * plain['size'].numpy())
  for i in range(2):
    h, w = plain['size'][i].numpy()
    np.testing.assert_array_equal(
      first['label'][i, : 2 * h : 2, : 2 * w : 2].numpy(), plain['label'][i, :h, :w].numpy()
    )
  spec = tiny_world['sources']['segmentation_val']
  native, images = seg.evaluate(Brightness(), spec, 3)
  scaled, _ = seg.evaluate(Brightness(), spec, 3, input_scale=2.5)
  # Same pixels counted (the labels' own, void left out), whatever the network's input size.
  np.testing.assert_array_equal(scaled.sum(1), native.sum(1))
  assert images == 8 and native.sum() > 0
  # Logits resized back from 2.5x: the bright/dark decision moves only along edges (a few % of the pixels).
  assert np.abs(scaled - native).sum() <= 0.1 * native.sum()


def _tiny_student(folder: str) -> str:
  """A tiny AlexNet student folder as `mtssl-transfer` leaves it (as voc_classification_test's)."""
  model = models.build_model('alexnet', 5, 64, width=0.125)
  for v in model.variables:  # Distinctive weights, so the copy can be checked.
    v.assign(tf.random.stateless_normal(v.shape, [1, len(v.name)], stddev=0.05) + (1.0 if 'variance' in v.name else 0))
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  with open(os.path.join(folder, META), 'w') as f:
    json.dump({'architecture': 'alexnet', 'num_classes': 5, 'input_size': 64, 'kwargs': {'width': 0.125}}, f)
  return folder


def _overrides(sources, steps, extra=()):
  return [
    f'voc12_seg.train_source={sources["segmentation_train"]}',
    f'voc12_seg.test_source={sources["segmentation_val"]}',
    'voc12_seg.iter_size=2',
    'voc12_seg.fc_units=256',
    f'voc12_seg.steps={steps}',
    'voc12_seg.log_every_steps=2',
    'voc12_seg.checkpoint_every_steps=2',
    'voc12_seg.learning_rate=0.01',
    *extra,
  ]


def _check_results(results, out):
  assert 0.0 <= results['mIoU'] <= 1.0 and 0.0 <= results['pixel_accuracy'] <= 1.0
  saved = np.load(os.path.join(out, 'confusion.npz'))['confusion']
  assert saved.shape == (21, 21) and results['counts']['test_pixels'] == saved.sum()
  assert results['mIoU'] == pytest.approx(seg.segmentation_scores(saved)['mean_iou'], abs=1e-12)  # Same float64 sums.
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['mIoU'] == pytest.approx(results['mIoU'])


@pytest.mark.numerics
def test_trunk_runs_from_the_runner_and_resumes(tmp_path, pretrained, tiny_world):
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2), pretrained['run_dir'])
  results = runner.run(seg.NAME, cfg, str(tmp_path))
  out = os.path.join(str(tmp_path), 'eval', seg.NAME)
  assert results['counts']['steps'] == 2 and results['counts']['test_images'] == 8
  assert 'ResNet-v2 trunk' in results['protocol']['network']
  _check_results(results, out)
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 4), pretrained['run_dir'])
  again = runner.run(seg.NAME, cfg, str(tmp_path))  # Resumes from the step-2 checkpoint, trains 2 more.
  assert again['counts']['steps'] == 4 and again['train']['steps_trained'] == 2


@pytest.mark.numerics
def test_alexnet_student_is_fine_tuned_end_to_end(tmp_path, tiny_world):
  student = _tiny_student(str(tmp_path / 'student'))
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2), student)
  results = runner.run(seg.NAME, cfg, str(tmp_path))
  assert results['counts']['steps'] == 2 and 'AlexNet student' in results['protocol']['network']
  _check_results(results, os.path.join(str(tmp_path), 'eval', seg.NAME))
  # Every layer trained: the fine-tuned conv2 differs from the student's.
  ctx = runner.context(seg.NAME, cfg, str(tmp_path))
  tuned, _ = seg.build_network(ctx)
  latest = tf.train.latest_checkpoint(os.path.join(str(tmp_path), 'eval', seg.NAME, 'checkpoints'))
  tf.train.Checkpoint(model=tuned).read(latest).expect_partial()
  from mtssl_tf.transfer.student import load_student

  loaded = load_student(student)
  assert not np.array_equal(tuned.convs['conv2'].kernel.numpy(), loaded.convs['conv2'].kernel.numpy())


def test_copy_fc_and_config_errors(tmp_path, tiny_world):
  student = _tiny_student(str(tmp_path / 'student'))
  # The tiny student's pool5 is 1x1 at 64 px: its fc6 is a 1x1 convolution.
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc12_seg.copy_fc=true', 'voc12_seg.fc6_kernel=1']),
                         student)  # fmt: skip
  model, source = seg.build_network(runner.context(seg.NAME, cfg, str(tmp_path)))
  from mtssl_tf.transfer.student import load_student

  dense = load_student(student).fcs['fc6'].kernel.numpy()
  np.testing.assert_array_equal(model.fcs['fc6'].kernel.numpy().reshape(dense.shape), dense)
  assert 'fc6/fc7 copied' in source
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc12_seg.copy_fc=true']), student)
  with pytest.raises(ValueError, match='copy_fc'):
    seg.build_network(runner.context(seg.NAME, cfg, str(tmp_path)))
  for override, key in (('voc12_seg.loss_normalization=mean', 'loss_normalization'), ('voc12_seg.iter_size=0',
                        'iter_size'), ('voc12_seg.input_scale=0', 'input_scale')):  # fmt: skip
    with pytest.raises(ConfigError, match=f'voc12_seg.{key}'):
      load_eval_config([], [override])
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, ['voc12_seg.network=alexnet']), student)
  assert seg.build_network(runner.context(seg.NAME, cfg, str(tmp_path)))[0].name == 'fcn_alexnet'  # Student wins.


def test_alexnet_trunk_of_a_run_gets_the_standard_fcn(tmp_path, tiny_world):
  # A Jigsaw run's tile AlexNet (conv1 stride 2): its weights go into the standard stride-4 FCN.
  overrides = ['trunk.kind=alexnet', 'trunk.alexnet.variant=jigsaw', 'trunk.alexnet.width=0.125']
  cfg = load_eval_config([], _overrides(tiny_world['sources'], 2, overrides), 'random')
  model, source = seg.build_network(runner.context(seg.NAME, cfg, str(tmp_path)))
  assert 'AlexNet trunk' in source and model.convs['conv1'].strides == (4, 4) and model.upscore.offset == 18
  assert model(tf.zeros([1, 37, 52, 3], tf.uint8)).shape == (1, 37, 52, 21)
  with pytest.raises(ConfigError, match='trunk.kind'):
    seg.build_network(runner.context(seg.NAME, load_eval_config([], ['trunk.kind=vgg16'], 'random'), str(tmp_path)))
