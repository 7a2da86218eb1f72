"""PASCAL VOC metrics: hand-computed cases for both conventions, plus a brute-force cross-check."""

import math

import numpy as np
import pytest

from mtssl_tf.evaluation import voc_metrics
from mtssl_tf.evaluation.voc_metrics import OD_API, VOC07, PascalDetectionEvaluator, VOCEvaluation

CATS = [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}, {'id': 3, 'name': 'bird'}]
MAP = 'PascalBoxes_Precision/mAP@0.5IOU'
MAP07 = 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'


def ap_key(name, iou='0.5', suffix=''):
  return f'PascalBoxes_PerformanceByCategory/AP@{iou}IOU{suffix}/{name}'


def row(n, size=10.0, gap=20.0, y=0.0):
  """n disjoint size x size boxes in a row (no box overlaps another)."""
  return np.array([[y, i * gap, y + size, i * gap + size] for i in range(n)], dtype=np.float64)


def evaluate(gt_boxes, gt_classes, det_boxes, det_scores, det_classes, difficult=None, convention=OD_API, iou=0.5):
  """One image through a fresh evaluator."""
  evaluator = PascalDetectionEvaluator(CATS, iou, convention)
  gt = {'groundtruth_boxes': np.asarray(gt_boxes, float), 'groundtruth_classes': np.asarray(gt_classes)}
  if difficult is not None:
    gt['groundtruth_difficult'] = np.asarray(difficult, bool)
  evaluator.add_single_ground_truth_image_info('img', gt)
  evaluator.add_single_detected_image_info(
    'img',
    {
      'detection_boxes': np.asarray(det_boxes, float).reshape(-1, 4),
      'detection_scores': np.asarray(det_scores, float),
      'detection_classes': np.asarray(det_classes),
    },
  )
  return evaluator.evaluate()


BOTH = pytest.mark.parametrize('convention', [OD_API, VOC07])


def cat_ap(metrics, convention):
  return metrics[ap_key('cat', suffix='_VOC07_11point' if convention == VOC07 else '')]


# --- AP basics -------------------------------------------------------------------------


@BOTH
def test_perfect_detector(convention):
  evaluator = PascalDetectionEvaluator(CATS, convention=convention)
  for image in range(3):
    boxes = row(4, y=image)
    classes = np.array([1, 2, 1, 2])
    evaluator.add_single_ground_truth_image_info(image, {'groundtruth_boxes': boxes, 'groundtruth_classes': classes})
    evaluator.add_single_detected_image_info(
      image,
      {'detection_boxes': boxes, 'detection_scores': np.linspace(0.9, 0.1, 4), 'detection_classes': classes},
    )
  metrics = evaluator.evaluate()
  key = MAP07 if convention == VOC07 else MAP
  assert metrics[key] == pytest.approx(1.0)
  assert cat_ap(metrics, convention) == pytest.approx(1.0)
  # 'bird' has no ground truth: NaN and left out of the mean.
  assert math.isnan(metrics[ap_key('bird', suffix='_VOC07_11point' if convention == VOC07 else '')])


@BOTH
def test_one_tp_one_fp_order_matters(convention):
  gt = row(1)
  miss = [100, 100, 110, 110]
  # TP first: precision [1, 1/2], recall [1, 1] -> AP 1 (both conventions).
  tp_first = evaluate(gt, [1], [gt[0], miss], [0.9, 0.8], [1, 1], convention=convention)
  assert cat_ap(tp_first, convention) == pytest.approx(1.0)
  # FP first: precision [0, 1/2], recall [0, 1] -> AP 1/2 (all-point: 1 x 1/2; 11-point: 11 x 1/2 / 11).
  fp_first = evaluate(gt, [1], [gt[0], miss], [0.8, 0.9], [1, 1], convention=convention)
  assert cat_ap(fp_first, convention) == pytest.approx(0.5)


def test_all_point_vs_eleven_point():
  # Two objects; detections TP(A) 0.9, FP 0.8, TP(B) 0.7:
  # precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
  gt = row(2)
  dets = [gt[0], [200, 200, 210, 210], gt[1]]
  metrics = evaluate(gt, [1, 1], dets, [0.9, 0.8, 0.7], [1, 1, 1])
  # All-point: 1/2 x 1 + 1/2 x 2/3 (precision interpolated from the right).
  assert metrics[ap_key('cat')] == pytest.approx(0.5 + 1 / 3)
  assert metrics[MAP] == pytest.approx(0.5 + 1 / 3)  # dog and bird: no ground truth, excluded
  # 11-point: t = 0..0.5 (6 thresholds) -> 1, t = 0.6..1.0 (5) -> 2/3.
  metrics = evaluate(gt, [1, 1], dets, [0.9, 0.8, 0.7], [1, 1, 1], convention=VOC07)
  assert metrics[ap_key('cat', suffix='_VOC07_11point')] == pytest.approx((6 + 5 * 2 / 3) / 11)


# --- difficult and duplicates ----------------------------------------------------------


@BOTH
def test_difficult_is_ignored_and_not_counted(convention):
  gt = row(2)  # box 0 normal, box 1 difficult
  miss = [200, 200, 210, 210]
  # Two detections on the difficult box (highest scores) are dropped: left are TP 0.7, FP 0.6
  # -> precision [1, 1/2], recall [1, 1] (npos = 1) -> AP 1. Were they FPs AP would be 1/3;
  # were the difficult box counted, recall would stop at 1/2.
  metrics = evaluate(
    gt, [1, 1], [gt[1], gt[1], gt[0], miss], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1], [False, True], convention
  )
  assert cat_ap(metrics, convention) == pytest.approx(1.0)
  # Only the normal box detected: recall 1 because the difficult box is not a positive.
  metrics = evaluate(gt, [1, 1], [gt[0]], [0.5], [1], [False, True], convention)
  assert cat_ap(metrics, convention) == pytest.approx(1.0)


@BOTH
def test_class_with_only_difficult_ground_truth_is_nan(convention):
  metrics = evaluate(row(2), [1, 2], row(2), [0.9, 0.8], [1, 2], [False, True], convention)
  key = MAP07 if convention == VOC07 else MAP
  suffix = '_VOC07_11point' if convention == VOC07 else ''
  assert math.isnan(metrics[ap_key('dog', suffix=suffix)])
  assert metrics[key] == pytest.approx(1.0)


def test_difficult_flag_absent_or_empty_means_none():
  gt = row(2)
  for difficult in (None, []):
    metrics = evaluate(gt, [1, 1], [gt[0]], [0.5], [1], difficult)
    assert metrics[ap_key('cat')] == pytest.approx(0.5)  # npos = 2, recall 1/2


@BOTH
def test_duplicate_is_false_positive(convention):
  # TP(A) 0.9, duplicate of A 0.8, TP(B) 0.7: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
  gt = row(2)
  shifted = gt[0] + [0, 1, 0, 1]  # IoU 9/11 (od_api) or 10/12 (voc07) with A
  metrics = evaluate(gt, [1, 1], [gt[0], shifted, gt[1]], [0.9, 0.8, 0.7], [1, 1, 1], convention=convention)
  expected = 0.5 + 1 / 3 if convention == OD_API else (6 + 5 * 2 / 3) / 11
  assert cat_ap(metrics, convention) == pytest.approx(expected)


def test_detection_matched_to_best_box_only():
  # The detection overlaps B best (IoU 0.8) and A enough (0.6); B is taken first by a higher
  # score detection, so the second one is a duplicate (not re-assigned to A): AP stays at 1/2.
  a, b = [0, 0, 10, 10], [0, 2, 10, 12]
  det = [0, 1.5, 10, 11.5]  # IoU 85 / 115 with A, 95 / 105 with B
  assert voc_metrics.iou([det], [a])[0, 0] < voc_metrics.iou([det], [b])[0, 0]
  metrics = evaluate([a, b], [1, 1], [b, det], [0.9, 0.8], [1, 1])
  assert metrics[ap_key('cat')] == pytest.approx(0.5)


# --- IoU at the threshold --------------------------------------------------------------


def test_iou_conventions():
  # Continuous: [0, 0, 10, 10] vs [0, 0, 10, 5] -> 50 / 100.
  assert voc_metrics.iou([[0, 0, 10, 10]], [[0, 0, 10, 5]], OD_API)[0, 0] == 0.5
  # Inclusive pixels: 1..10 vs 1..5 wide -> 10 x 5 / (100 + 50 - 50).
  assert voc_metrics.iou([[1, 1, 10, 10]], [[1, 1, 10, 5]], VOC07)[0, 0] == 0.5
  # The same pair under the other convention: 6 x 11 / 121 and 4 x 9 / 81.
  assert voc_metrics.iou([[0, 0, 10, 10]], [[0, 0, 10, 5]], VOC07)[0, 0] == pytest.approx(6 / 11)
  assert voc_metrics.iou([[1, 1, 10, 10]], [[1, 1, 10, 5]], OD_API)[0, 0] == pytest.approx(4 / 9)
  assert voc_metrics.iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_iou_exactly_at_threshold():
  # od_api matches at IoU >= threshold: exactly 0.5 is a TP.
  metrics = evaluate([[0, 0, 10, 10]], [1], [[0, 0, 10, 5]], [0.9], [1], convention=OD_API)
  assert metrics[ap_key('cat')] == 1.0
  # voc07 needs IoU > 0.5: exactly 0.5 (pixel boxes) is a FP.
  metrics = evaluate([[1, 1, 10, 10]], [1], [[1, 1, 10, 5]], [0.9], [1], convention=VOC07)
  assert metrics[ap_key('cat', suffix='_VOC07_11point')] == 0.0
  # One pixel more and voc07 matches (6 x 10 / 100 = 0.6).
  metrics = evaluate([[1, 1, 10, 10]], [1], [[1, 1, 10, 6]], [0.9], [1], convention=VOC07)
  assert metrics[ap_key('cat', suffix='_VOC07_11point')] == pytest.approx(1.0)


def test_iou_075_names_and_values():
  # A: IoU 12 / 16 = 0.75 exactly (TP at both thresholds); B: IoU 60 / 100 (TP only at 0.5).
  gt = [[0, 0, 4, 4], [10, 10, 20, 20]]
  dets = [[0, 0, 4, 3], [10, 10, 20, 16]]
  at_05 = evaluate(gt, [1, 1], dets, [0.9, 0.8], [1, 1], iou=0.5)
  at_075 = evaluate(gt, [1, 1], dets, [0.9, 0.8], [1, 1], iou=0.75)
  assert at_05[MAP] == 1.0
  assert set(at_075) == {
    'PascalBoxes_Precision/mAP@0.75IOU',
    'PascalBoxes_PerformanceByCategory/AP@0.75IOU/cat',
    'PascalBoxes_PerformanceByCategory/AP@0.75IOU/dog',
    'PascalBoxes_PerformanceByCategory/AP@0.75IOU/bird',
  }
  # precision [1, 1/2], recall [1/2, 1/2] -> 1/2.
  assert at_075['PascalBoxes_PerformanceByCategory/AP@0.75IOU/cat'] == 0.5
  assert at_075['PascalBoxes_Precision/mAP@0.75IOU'] == 0.5
  assert list(at_075)[0] == 'PascalBoxes_Precision/mAP@0.75IOU'


# --- classes without detections / ground truth -----------------------------------------


@BOTH
def test_missing_classes(convention):
  # cat: found (AP 1); dog: ground truth but no detection (AP 0); bird: detections only (NaN).
  gt = row(2)
  metrics = evaluate(gt, [1, 2], [gt[0], [50, 50, 60, 60]], [0.9, 0.8], [1, 3], convention=convention)
  suffix = '_VOC07_11point' if convention == VOC07 else ''
  assert metrics[ap_key('cat', suffix=suffix)] == pytest.approx(1.0)
  assert metrics[ap_key('dog', suffix=suffix)] == 0.0
  assert math.isnan(metrics[ap_key('bird', suffix=suffix)])
  assert metrics[MAP07 if convention == VOC07 else MAP] == pytest.approx(0.5)


def test_no_ground_truth_at_all_gives_nan():
  evaluator = PascalDetectionEvaluator(CATS)
  assert math.isnan(evaluator.evaluate()[MAP])


# --- the VOC07 11-point quirk ----------------------------------------------------------


@pytest.mark.parametrize(
  'num_found,expected_11pt',
  [
    (3, 3 / 11),  # recall exactly 0.3 < 0.30000000000000004: t = 0.3 gets 0 (linspace would give 4/11)
    (4, 5 / 11),  # recall 0.4 reaches t = 0.4 (0, .1, .2, .3, .4)
    (6, 6 / 11),  # 0.6 < 0.6000000000000001
    (7, 7 / 11),  # 0.7 < 0.7000000000000001
    (8, 9 / 11),  # 0.8 reaches t = 0.8
  ],
)
def test_voc07_recall_threshold_quirk(num_found, expected_11pt):
  gt = row(10)
  metrics = evaluate(gt, [1] * 10, gt[:num_found], np.linspace(0.9, 0.5, num_found), [1] * num_found, convention=VOC07)
  assert metrics[MAP07] == pytest.approx(expected_11pt, abs=1e-12)
  # od_api: area under a precision-1 curve up to recall n / 10.
  metrics = evaluate(gt, [1] * 10, gt[:num_found], np.linspace(0.9, 0.5, num_found), [1] * num_found)
  assert metrics[MAP] == pytest.approx(num_found / 10)


def test_average_precision_helpers():
  precision, recall = voc_metrics.precision_recall(np.array([True, False, True]), 2)
  np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
  np.testing.assert_allclose(recall, [0.5, 0.5, 1])
  assert voc_metrics.all_point_average_precision(precision, recall) == pytest.approx(0.5 + 1 / 3)
  assert voc_metrics.eleven_point_average_precision(precision, recall) == pytest.approx((6 + 5 * 2 / 3) / 11)
  assert voc_metrics.all_point_average_precision(np.zeros(0), np.zeros(0)) == 0.0
  assert voc_metrics.eleven_point_average_precision(np.zeros(0), np.zeros(0)) == 0.0
  assert voc_metrics.eleven_point_average_precision(np.array([1.0]), np.array([0.3])) == pytest.approx(3 / 11)


def test_tied_scores():
  # Equal scores, the FP (image 'a') added before the TP (image 'b'). voc07 keeps the order
  # of addition: precision [0, 1/2] -> AP 1/2. od_api orders ties as the OD API does: per
  # class over all images, np.argsort(scores)[::-1], which here puts the later one first:
  # TP, FP -> AP 1. (Ties within one image are sorted twice, so for a few boxes they keep input order.)
  results = {}
  for convention in (OD_API, VOC07):
    evaluator = PascalDetectionEvaluator(CATS, convention=convention)
    for image_id in ('a', 'b'):
      evaluator.add_single_ground_truth_image_info(
        image_id,
        {
          'groundtruth_boxes': row(1, y=50.0) if image_id == 'b' else np.zeros((0, 4)),
          'groundtruth_classes': [1] if image_id == 'b' else [],
        },
      )
      evaluator.add_single_detected_image_info(
        image_id, {'detection_boxes': row(1, y=50.0), 'detection_scores': [0.5], 'detection_classes': [1]}
      )
    results[convention] = evaluator.average_precisions()[0]
  assert results[OD_API] == 1.0
  assert results[VOC07] == pytest.approx(0.5)


# --- OD API bookkeeping ----------------------------------------------------------------


def test_detections_without_ground_truth_are_false_positives():
  evaluator = PascalDetectionEvaluator(CATS)
  gt = row(1)
  evaluator.add_single_ground_truth_image_info('a', {'groundtruth_boxes': gt, 'groundtruth_classes': [1]})
  # Image 'b' has no ground truth: its detection (top score) is a FP even though it
  # coincides with a box of image 'a'. precision [0, 1/2], recall [0, 1] -> 1/2.
  evaluator.add_single_detected_image_info(
    'b', {'detection_boxes': gt, 'detection_scores': [0.9], 'detection_classes': [1]}
  )
  evaluator.add_single_detected_image_info(
    'a', {'detection_boxes': gt, 'detection_scores': [0.8], 'detection_classes': [1]}
  )
  assert evaluator.evaluate()[ap_key('cat')] == pytest.approx(0.5)


def test_repeated_image_ids_and_clear():
  evaluator = PascalDetectionEvaluator(CATS)
  gt = {'groundtruth_boxes': row(1), 'groundtruth_classes': [1]}
  evaluator.add_single_ground_truth_image_info(7, gt)
  with pytest.raises(ValueError, match='already added'):
    evaluator.add_single_ground_truth_image_info(7, gt)
  evaluator.add_single_detected_image_info(
    7, {'detection_boxes': row(1), 'detection_scores': [1.0], 'detection_classes': [1]}
  )
  # A second set of detections for the same image is ignored (warning), as in the OD API.
  evaluator.add_single_detected_image_info(
    7, {'detection_boxes': row(1), 'detection_scores': [2.0], 'detection_classes': [1]}
  )
  assert evaluator.evaluate()[ap_key('cat')] == 1.0
  evaluator.clear()
  assert math.isnan(evaluator.evaluate()[MAP])
  evaluator.add_single_ground_truth_image_info(7, gt)  # allowed again after clear()
  assert evaluator.evaluate()[ap_key('cat')] == 0.0


def test_od_api_drops_invalid_detection_boxes():
  # An inverted box (ymin > ymax) is removed, not counted as a FP: AP stays 1.
  gt = row(1)
  metrics = evaluate(gt, [1], [[10, 0, 0, 10], gt[0]], [0.9, 0.8], [1, 1])
  assert metrics[ap_key('cat')] == 1.0


# --- normalised boxes and VOCEvaluation ------------------------------------------------


def test_voc_categories_and_pixel_conversion():
  from mtssl_tf.data.detection import VOC_CLASSES

  categories = voc_metrics.voc_categories()
  assert len(categories) == 20 and categories[0] == {'id': 1, 'name': VOC_CLASSES[0]}
  assert categories[-1] == {'id': 20, 'name': 'tvmonitor'}
  assert voc_metrics.voc_categories(['a', 'b']) == [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]
  # VOC 000005-like box x1=48, y1=240, x2=195, y2=371 in a 353 x 500 image, as our readers store it.
  height, width = 500, 353
  normalised = np.array([[(240 - 1) / height, (48 - 1) / width, 371 / height, 195 / width]], np.float32)
  pixels = voc_metrics.normalized_to_voc_pixels(normalised, height, width)
  np.testing.assert_allclose(pixels, [[240, 48, 371, 195]], atol=1e-4)
  np.testing.assert_array_equal(
    voc_metrics.normalized_to_voc_pixels(normalised, height, width, round_to_pixel=True), [[240, 48, 371, 195]]
  )


def test_voc_evaluation_end_to_end():
  evaluation = VOCEvaluation(['cat', 'dog'])
  # 128 x 128 image (binary fractions, exact in float32). cat GT: VOC pixels 1..16, i.e.
  # normalised [0, 0, 1/8, 1/8]; the detection is half as wide ([0, 0, 1/8, 1/16]).
  # od_api: absolute [0, 0, 16, 16] vs [0, 0, 16, 8] -> IoU 0.5: TP at 0.5, FP at 0.75.
  # voc07: pixels [1, 1, 16, 16] vs [1, 1, 16, 8] -> 16 x 8 / 256 = 0.5, not > 0.5: FP.
  # dog: a perfect detection (AP 1 everywhere).
  evaluation.add_image(
    '000001',
    (128, 128, 3),
    groundtruth_boxes=np.array([[0, 0, 0.125, 0.125], [0.5, 0.5, 0.9, 0.9]], np.float32),
    groundtruth_classes=np.array([0, 1]),
    detection_boxes=np.array([[0, 0, 0.125, 0.0625], [0.5, 0.5, 0.9, 0.9]], np.float32),
    detection_scores=np.array([0.9, 0.8], np.float32),
    detection_classes=np.array([0, 1]),
    groundtruth_difficult=np.array([False, False]),
  )
  results = evaluation.evaluate()
  assert results['PascalBoxes_PerformanceByCategory/AP@0.5IOU/cat'] == 1.0
  assert results['PascalBoxes_PerformanceByCategory/AP@0.75IOU/cat'] == 0.0
  assert results['PascalBoxes_PerformanceByCategory/AP@0.5IOU_VOC07_11point/cat'] == 0.0
  assert results['PascalBoxes_Precision/mAP@0.5IOU'] == 1.0
  assert results['PascalBoxes_Precision/mAP@0.75IOU'] == 0.5
  assert results[MAP07] == pytest.approx(0.5)
  assert results['PascalBoxes_PerformanceByCategory/AP@0.75IOU_VOC07_11point/cat'] == 0.0
  assert results['PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point'] == pytest.approx(0.5)
  assert 'VOC2007' in results['conventions'] and '>= the threshold' in results['conventions']
  assert isinstance(results['conventions'], str)
  with pytest.raises(ValueError, match='detection_classes'):
    evaluation.add_image('x', (10, 10), np.zeros((0, 4)), [], [[0, 0, 1, 1]], [0.5], [2])
  evaluation.clear()
  assert math.isnan(evaluation.evaluate()[MAP])


def test_normalized_boxes_need_image_shape():
  evaluator = PascalDetectionEvaluator(CATS, convention=VOC07, normalized_boxes=True)
  with pytest.raises(ValueError, match='original_image_spatial_shape'):
    evaluator.add_single_ground_truth_image_info(1, {'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [1]})


# --- malformed inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
  'groundtruth,field',
  [
    ({'groundtruth_classes': [1]}, 'groundtruth_boxes'),
    ({'groundtruth_boxes': [[0, 0, 1, 1]]}, 'groundtruth_classes'),
    ({'groundtruth_boxes': [[0, 0, 1]], 'groundtruth_classes': [1]}, 'groundtruth_boxes'),
    ({'groundtruth_boxes': [[0, 0, 1, np.nan]], 'groundtruth_classes': [1]}, 'groundtruth_boxes'),
    ({'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [1, 2]}, 'groundtruth_classes'),
    ({'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [4]}, 'groundtruth_classes'),
    ({'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [0]}, 'groundtruth_classes'),
    ({'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [1.5]}, 'groundtruth_classes'),
    (
      {'groundtruth_boxes': [[0, 0, 1, 1]], 'groundtruth_classes': [1], 'groundtruth_difficult': [True, False]},
      'groundtruth_difficult',
    ),
  ],
)
def test_bad_groundtruth(groundtruth, field):
  with pytest.raises(ValueError, match=field):
    PascalDetectionEvaluator(CATS).add_single_ground_truth_image_info('x', groundtruth)


@pytest.mark.parametrize(
  'detections,field',
  [
    ({'detection_scores': [1.0], 'detection_classes': [1]}, 'detection_boxes'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_classes': [1]}, 'detection_scores'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_scores': [1.0]}, 'detection_classes'),
    ({'detection_boxes': [0, 0, 1, 1], 'detection_scores': [1.0], 'detection_classes': [1]}, 'detection_boxes'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_scores': [1.0, 0.5], 'detection_classes': [1]}, 'detection_scores'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_scores': [np.nan], 'detection_classes': [1]}, 'detection_scores'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_scores': [1.0], 'detection_classes': []}, 'detection_classes'),
    ({'detection_boxes': [[0, 0, 1, 1]], 'detection_scores': [1.0], 'detection_classes': [9]}, 'detection_classes'),
  ],
)
def test_bad_detections(detections, field):
  with pytest.raises(ValueError, match=field):
    PascalDetectionEvaluator(CATS).add_single_detected_image_info('x', detections)


def test_bad_constructor_arguments():
  with pytest.raises(ValueError, match='convention'):
    PascalDetectionEvaluator(CATS, convention='voc12')
  with pytest.raises(ValueError, match='1-based'):
    PascalDetectionEvaluator([{'id': 0, 'name': 'background'}])
  with pytest.raises(ValueError, match='unique'):
    PascalDetectionEvaluator([{'id': 1, 'name': 'a'}, {'id': 1, 'name': 'b'}])
  with pytest.raises(ValueError, match='categories'):
    PascalDetectionEvaluator([{'name': 'a'}])
  with pytest.raises(ValueError, match='matching_iou_threshold'):
    PascalDetectionEvaluator(CATS, matching_iou_threshold=1.5)


# --- brute force cross-check and speed -------------------------------------------------


def reference_ap(images, class_id, convention, threshold):
  """Straight loops over the written-out rules, for one class (an independent implementation)."""
  npos = sum(int(np.sum((gt_c == class_id) & ~gt_d)) for gt_b, gt_c, gt_d, *_ in images.values())
  if npos == 0:
    return float('nan')
  dets = []
  for image_id, (_, _, _, det_b, det_s, det_c) in images.items():
    for box, score, cls in zip(det_b, det_s, det_c):
      if cls == class_id and (convention == VOC07 or (box[0] < box[2] and box[1] < box[3])):
        dets.append((-score, len(dets), image_id, box))
  dets.sort(key=lambda d: (d[0], d[1]))
  used = {image_id: set() for image_id in images}
  flags = []
  extra = 1.0 if convention == VOC07 else 0.0
  for _, _, image_id, box in dets:
    gt_b, gt_c, gt_d = images[image_id][:3]
    best, best_j = -1.0, -1
    for j in range(len(gt_b)):
      if gt_c[j] != class_id:
        continue
      g = gt_b[j]
      ih = max(min(box[2], g[2]) - max(box[0], g[0]) + extra, 0.0)
      iw = max(min(box[3], g[3]) - max(box[1], g[1]) + extra, 0.0)
      union = (box[2] - box[0] + extra) * (box[3] - box[1] + extra) + (g[2] - g[0] + extra) * (g[3] - g[1] + extra)
      value = ih * iw / (union - ih * iw)
      if value > best:
        best, best_j = value, j
    ok = best > threshold if convention == VOC07 else best >= threshold
    if ok and gt_d[best_j]:
      continue
    if ok and best_j not in used[image_id]:
      used[image_id].add(best_j)
      flags.append(True)
    else:
      flags.append(False)
  tp = fp = 0
  precision, recall = [], []
  for flag in flags:
    tp += flag
    fp += not flag
    precision.append(tp / (tp + fp))
    recall.append(tp / npos)
  if not flags:
    return 0.0
  if convention == VOC07:
    return sum(max([p for p, r in zip(precision, recall) if r >= t], default=0.0) / 11 for t in np.arange(0, 1.1, 0.1))
  area, previous = 0.0, 0.0
  for i, r in enumerate(recall):
    area += (r - previous) * max(precision[i:])
    previous = r
  return area


def random_images(rng, num_images, num_classes=3, ties=False):
  images = {}
  for image in range(num_images):
    n = rng.integers(0, 6)
    top_left = rng.integers(1, 60, size=(n, 2)).astype(float)
    gt_b = np.concatenate([top_left, top_left + rng.integers(5, 30, size=(n, 2))], axis=1)
    gt_c = rng.integers(1, num_classes + 1, size=n)
    gt_d = rng.random(n) < 0.2
    m = rng.integers(0, 12)
    # Detections: jittered ground truth (some duplicates) plus clutter; ties=True rounds scores.
    source = gt_b[rng.integers(0, n, size=m)] if n else rng.integers(1, 60, size=(m, 4)).astype(float)
    det_b = source + rng.integers(-2, 3, size=(m, 4))  # widths stay >= 1
    det_c = np.where(rng.random(m) < 0.8, gt_c[rng.integers(0, n, size=m)] if n else 1, rng.integers(1, 4, size=m))
    det_s = np.round(rng.random(m), 1) if ties else rng.random(m)
    images[image] = (gt_b, gt_c, gt_d, det_b, det_s, det_c)
  return images


@pytest.mark.parametrize('convention,threshold', [(OD_API, 0.5), (OD_API, 0.75), (VOC07, 0.5)])
def test_matches_brute_force(convention, threshold):
  # The reference breaks ties by insertion order, as 'voc07' does; 'od_api' follows numpy's
  # unstable sort (see test_tied_scores), so it is checked on distinct scores.
  images = random_images(np.random.default_rng(0), 60, ties=convention == VOC07)
  evaluator = PascalDetectionEvaluator(CATS, threshold, convention)
  for image_id, (gt_b, gt_c, gt_d, det_b, det_s, det_c) in images.items():
    evaluator.add_single_ground_truth_image_info(
      image_id, {'groundtruth_boxes': gt_b, 'groundtruth_classes': gt_c, 'groundtruth_difficult': gt_d}
    )
    evaluator.add_single_detected_image_info(
      image_id, {'detection_boxes': det_b, 'detection_scores': det_s, 'detection_classes': det_c}
    )
  aps = evaluator.average_precisions()
  expected = [reference_ap(images, c, convention, threshold) for c in (1, 2, 3)]
  np.testing.assert_allclose(aps, expected, rtol=1e-12, atol=1e-12)
  assert 0.0 < np.nanmean(aps) < 1.0


def test_many_detections():
  rng = np.random.default_rng(1)
  evaluation = VOCEvaluation()
  for image in range(1000):
    gt = rng.random((3, 2)) * 0.5
    gt_boxes = np.concatenate([gt, gt + 0.3], axis=1)
    det = rng.random((50, 2)) * 0.5
    evaluation.add_image(
      image,
      (375, 500),
      gt_boxes,
      rng.integers(0, 20, size=3),
      np.concatenate([det, det + 0.3], axis=1),
      rng.random(50),
      rng.integers(0, 20, size=50),
    )
  results = evaluation.evaluate()
  assert 0.0 <= results[MAP] <= 1.0 and 0.0 <= results[MAP07] <= 1.0


# --- one AP rule per convention at both IoU thresholds ------------------------------------

# One 100 x 100 image, class 'cat', two ground-truth boxes (VOC pixels 1..40 and 51..90).
# Detections by score: D1 = G1 exactly (IoU 1), D2 far from both (a false positive), D3
# on G2. With D3 = G2 (IoU 1), at 0.5 and 0.75 alike: precision [1, 1/2, 2/3], recall
# [1/2, 1/2, 1]. All-point AP: 1/2 x 1 + 1/2 x 2/3 = 5/6. 11-point AP: t = 0.0..0.5 (6
# thresholds) reach precision 1, t = 0.6..1.0 (5) reach 2/3: (6 + 5 x 2/3) / 11 = 28/33.
# With D3 narrower (x2 = 74: width 24 of 40, IoU 0.6 in both conventions) it is still a
# TP at 0.5 but a FP at 0.75, where recall stays 1/2: all-point 1/2, 11-point 6/11.
TOY_GT = np.array([[0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]])
TOY_SCORES = np.array([0.9, 0.8, 0.7])


def toy_results(d3_xmax: float, conventions=(VOC07, OD_API)):
  evaluation = VOCEvaluation(['cat'], conventions=conventions)
  detections = np.array([[0.0, 0.0, 0.4, 0.4], [0.0, 0.6, 0.2, 0.8], [0.5, 0.5, 0.9, d3_xmax]])
  evaluation.add_image('toy', (100, 100), TOY_GT, [0, 0], detections, TOY_SCORES, [0, 0, 0])
  return evaluation.evaluate()


@pytest.mark.numerics
def test_both_thresholds_use_the_conventions_ap_rule():
  # AP sums a few products of fractions: float64 rounding is ~1e-16, so 1e-12 is ample.
  exact = toy_results(0.9)
  narrow = toy_results(0.74)
  for threshold in (0.5, 0.75):
    assert exact[voc_metrics.mean_ap_key(VOC07, threshold)] == pytest.approx(28 / 33, abs=1e-12)
    assert exact[voc_metrics.mean_ap_key(OD_API, threshold)] == pytest.approx(5 / 6, abs=1e-12)
  assert narrow[voc_metrics.mean_ap_key(VOC07, 0.5)] == pytest.approx(28 / 33, abs=1e-12)
  assert narrow[voc_metrics.mean_ap_key(OD_API, 0.5)] == pytest.approx(5 / 6, abs=1e-12)
  assert narrow[voc_metrics.mean_ap_key(VOC07, 0.75)] == pytest.approx(6 / 11, abs=1e-12)
  assert narrow[voc_metrics.mean_ap_key(OD_API, 0.75)] == pytest.approx(1 / 2, abs=1e-12)
  assert voc_metrics.mean_ap_key(VOC07, 0.75) == 'PascalBoxes_Precision/mAP@0.75IOU_VOC07_11point'
  assert voc_metrics.mean_ap_key(OD_API, 0.75) == 'PascalBoxes_Precision/mAP@0.75IOU'


def test_voc_evaluation_conventions_are_a_choice():
  only_voc07 = toy_results(0.9, conventions=(VOC07,))
  assert voc_metrics.mean_ap_key(VOC07, 0.75) in only_voc07
  assert not any(key.startswith('PascalBoxes') and '_VOC07_11point' not in key for key in only_voc07)
  for bad in ((), ('voc12',), (VOC07, VOC07)):
    with pytest.raises(ValueError, match='convention'):
      VOCEvaluation(['cat'], conventions=bad)
