"""The `detection` protocol's test: detect at one scale or at several, merge, score with `voc_metrics`.

Single-scale test (`test_scale`): the detector runs once per image; its detections are scored.

Multi-scale test (`test_scales`, Noroozi et al. 2018 Table 3 "MS"): Fast R-CNN's
(rbgirshick/fast-rcnn lib/fast_rcnn/test.py) builds an image pyramid at the test scales and
pools each selective-search ROI from the one level where the ROI's area is nearest 224 x 224
pixels (`_project_im_rois`), then runs per-class NMS on the scored boxes. With an RPN the
proposals themselves come from each level, so here (a documented choice, the same one as
the RPN in place of selective search, see `detection_convnet`): the detector runs on every
level; a detection found at level i is kept only when i is the level where its box's area
is nearest 224^2 (Fast R-CNN's rule, applied to the detected box instead of the ROI it was
regressed from); the kept detections of all levels are pooled in the original image and
per-class NMS (`detection_nms_iou`) and the `max_detections` cap run once more over them.

With precomputed proposals (`fast_rcnn.FastRCNN`, `proposal_detector`) the test is Fast R-CNN's
own: every proposal is scored at every level, each proposal keeps the scores and boxes of the
level where its area is nearest 224^2, then per-class NMS with the score threshold and the
`max_detections` cap over all classes (`test_net`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.data import pipeline
from mtssl_tf.data.detection import VOC_CLASSES
from mtssl_tf.evaluation import voc_metrics
from mtssl_tf.evaluation.detection_model import FasterRCNN

# lib/fast_rcnn/test.py `_project_im_rois`: a ROI is pooled at the pyramid level where its area is nearest 224^2.
FAST_RCNN_AREA = 224
# Result keys of the multi-scale test: the single-scale key with this prefix.
MULTISCALE_PREFIX = 'multiscale_'

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # Normalised boxes [N, 4], scores [N], 0-based classes [N].


def detections_to_normalized(boxes: np.ndarray, image_shape: np.ndarray) -> np.ndarray:
  """Pixel boxes of the resized image -> normalised [ymin, xmin, ymax, xmax] clipped to [0, 1]."""
  height, width = float(image_shape[0]), float(image_shape[1])
  return np.clip(np.asarray(boxes, np.float64) / np.array([height, width, height, width]), 0.0, 1.0)


def nearest_area_level(boxes: np.ndarray, level_shapes: np.ndarray) -> np.ndarray:
  """For normalised boxes [N, 4], the pyramid level [N] where each box's pixel area is nearest 224^2.

  Args:
    boxes: normalised [ymin, xmin, ymax, xmax].
    level_shapes: [L, 2] resized (height, width) of each level.
  """
  boxes, shapes = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(level_shapes, np.float64)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  pixel_areas = areas[:, None] * (shapes[:, 0] * shapes[:, 1])[None, :]
  return np.abs(pixel_areas - FAST_RCNN_AREA**2).argmin(axis=1)


def merge_levels(levels: Sequence[Detections], level_shapes: np.ndarray, nms_iou: float, max_detections: int):
  """Multi-scale detections -> one set: each level keeps its nearest-224^2 boxes, then per-class NMS and the cap.

  Args:
    levels: each level's (normalised boxes, scores, 0-based classes).
    level_shapes: [L, 2] resized (height, width) of each level.
    nms_iou: per-class NMS IoU (boxes overlapping a better one of their class by more are dropped).
    max_detections: the highest-scoring detections kept.

  Returns:
    (boxes, scores, classes) sorted by decreasing score.
  """
  kept = []
  for i, (boxes, scores, classes) in enumerate(levels):
    keep = nearest_area_level(boxes, level_shapes) == i
    kept.append((np.asarray(boxes, np.float64).reshape(-1, 4)[keep], np.asarray(scores)[keep],
                 np.asarray(classes)[keep]))  # fmt: skip
  boxes, scores, classes = (np.concatenate([k[j] for k in kept]) for j in range(3))
  chosen: List[np.ndarray] = []
  for c in np.unique(classes):
    index = np.flatnonzero(classes == c)
    # IoU is unchanged by scaling the axes, so NMS on normalised boxes is NMS in pixels.
    picked = tf.image.non_max_suppression(boxes[index], scores[index], len(index), iou_threshold=nms_iou).numpy()
    chosen.append(index[picked])
  order = np.concatenate(chosen) if chosen else np.zeros([0], np.int64)
  order = order[np.argsort(-scores[order], kind='stable')][:max_detections]
  return boxes[order], scores[order], classes[order]


def detector(model: FasterRCNN) -> Callable[[tf.Tensor, tf.Tensor], Detections]:
  """(canvas [1, H, W, 3], resized size [1, 2]) -> one image's `Detections`, traced once per canvas shape.

  Share one between the single- and the multi-scale test: a canvas shape both use is traced once.
  """

  @tf.function(autograph=False)  # As the train step: nothing to convert, much faster to trace.
  def detect(images, image_shape):
    return model.detect(images, image_shape)

  def run(images: tf.Tensor, image_shape: tf.Tensor) -> Detections:
    out = {k: v.numpy()[0] for k, v in detect(images, image_shape).items()}
    n = int(out['num_detections'])
    boxes = detections_to_normalized(out['detection_boxes'][:n], image_shape[0].numpy())
    # The model's classes are 1-based (0 is background); ours are 0-based.
    return boxes, out['detection_scores'][:n], out['detection_classes'][:n].astype(np.int64) - 1

  return run


def proposal_scorer(model: Any) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]:
  """`model.scored_boxes` traced once per canvas shape; share one between the single- and multi-scale tests."""
  return tf.function(model.scored_boxes, autograph=False)


def proposal_detector(
  model: Any,
  nms_iou: float,
  score_threshold: float,
  max_detections: int,
  num_levels: int = 0,
  scorer: Optional[Callable[[tf.Tensor, tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]] = None,
) -> Callable[[Dict[str, tf.Tensor]], Detections]:
  """A batch of one image with its proposals (`detection_data` with a store) -> its `Detections` (Fast R-CNN's test).

  Args:
    model: a `fast_rcnn.FastRCNN`.
    nms_iou: per-class NMS IoU (Fast R-CNN TEST.NMS 0.3).
    score_threshold: scores kept above it (`test_net`'s thresh 0.05).
    max_detections: detections kept per image over all classes (100).
    num_levels: 0 for a single-scale batch ('image', 'image_shape', 'proposals'), else the
      pyramid levels of a multi-scale one ('image_<i>', 'image_shape_<i>', 'proposals_<i>').
    scorer: a `proposal_scorer(model)` to reuse (its traces with it); a new one when None.
  """
  scored = scorer or proposal_scorer(model)

  def run(batch: Dict[str, tf.Tensor]) -> Detections:
    keys = [('image', 'image_shape', 'proposals')] if not num_levels else [
      (f'image_{i}', f'image_shape_{i}', f'proposals_{i}') for i in range(num_levels)]  # fmt: skip
    scores, boxes, areas = [], [], []
    for image, shape, rois in keys:
      out = scored(batch[image], batch[shape], batch[rois])
      size = batch[shape][0].numpy()
      scores.append(out['scores'][0].numpy())
      boxes.append(out['boxes'][0].numpy() / np.tile(size, 2))  # Normalised: the levels agree on them.
      pixels = batch[rois][0].numpy()
      areas.append((pixels[:, 2] - pixels[:, 0]) * (pixels[:, 3] - pixels[:, 1]))
    # `_project_im_rois`: each ROI is read at the level where its area is nearest 224^2.
    level = np.argmin(np.abs(np.stack(areas) - FAST_RCNN_AREA**2), axis=0)
    rows = np.arange(level.size)
    scores = np.stack(scores)[level, rows]
    boxes = np.stack(boxes)[level, rows]
    nms = tf.image.combined_non_max_suppression(
      boxes[None], scores[None], max_output_size_per_class=max_detections, max_total_size=max_detections,
      iou_threshold=nms_iou, score_threshold=score_threshold, clip_boxes=False,
    )  # fmt: skip
    n = int(nms.valid_detections[0])
    return (nms.nmsed_boxes[0, :n].numpy(), nms.nmsed_scores[0, :n].numpy(),
            nms.nmsed_classes[0, :n].numpy().astype(np.int64))  # fmt: skip

  return run


def evaluate(
  model: FasterRCNN,
  dataset: tf.data.Dataset,
  progress: bool = True,
  conventions: Sequence[str] = (voc_metrics.VOC07, voc_metrics.OD_API),
  num_levels: int = 0,
  nms_iou: float = 0.3,
  max_detections: int = 100,
  name: str = 'detection',
  detect: Optional[Callable[[tf.Tensor, tf.Tensor], Detections]] = None,
  detect_batch: Optional[Callable[[Dict[str, tf.Tensor]], Detections]] = None,
) -> Dict[str, Any]:
  """Detects on every test image and scores them with `voc_metrics.VOCEvaluation`.

  Args:
    model: the detector.
    dataset: `detection_data.eval_dataset` batches (single scale), or with `num_levels`
      `detection_data.multiscale_eval_dataset` batches.
    progress: log progress lines.
    conventions: mAP conventions, each computed at IoU 0.5 and 0.75.
    num_levels: 0 for the single-scale test, else the number of pyramid levels merged by `merge_levels`.
    nms_iou: the merge's per-class NMS IoU (multi-scale only).
    max_detections: the merge's cap (multi-scale only).
    name: the protocol's name, for messages.
    detect: a `detector(model)` to reuse (its traces with it); a new one when None.
    detect_batch: detects on a whole batch instead (`proposal_detector`); then `detect`,
      `num_levels` and the merge settings are unused.

  Returns:
    The evaluator's metrics (mAP and per-class AP of every convention at IoU 0.5 and
    0.75, 'conventions') and counts.

  Raises:
    ValueError: the test source holds no images.
  """
  detect = detect or (detector(model) if detect_batch is None else None)
  evaluation = voc_metrics.VOCEvaluation(VOC_CLASSES[: model.num_classes], conventions)
  counts = {'num_test_images': 0, 'num_groundtruth_boxes': 0, 'num_difficult_boxes': 0, 'num_detections': 0}
  num_skipped, tick = 0, time.perf_counter()
  for batch in dataset:
    if detect_batch is not None:
      boxes, scores, classes = detect_batch(batch)
    elif num_levels:
      levels = [detect(batch[f'image_{i}'], batch[f'image_shape_{i}']) for i in range(num_levels)]
      shapes = np.stack([batch[f'image_shape_{i}'][0].numpy() for i in range(num_levels)])
      boxes, scores, classes = merge_levels(levels, shapes, nms_iou, max_detections)
    else:
      boxes, scores, classes = detect(batch['image'], batch['image_shape'])
    difficult = batch['difficult'][0].numpy().astype(bool)
    evaluation.add_image(
      batch['image_id'][0].numpy().decode(),
      batch['original_shape'][0].numpy(),
      batch['boxes'][0].numpy(),
      batch['classes'][0].numpy().astype(np.int64),
      boxes,
      scores,
      classes,
      groundtruth_difficult=difficult,
    )
    counts['num_test_images'] += 1
    counts['num_groundtruth_boxes'] += int(difficult.size)
    counts['num_difficult_boxes'] += int(difficult.sum())
    counts['num_detections'] += len(scores)
    num_skipped = max(num_skipped, int(batch[pipeline.SKIPPED_KEY][0]))
    if progress and counts['num_test_images'] % 500 == 0:
      logging.info('%s: detected on %d test images', name, counts['num_test_images'])
  if not counts['num_test_images']:
    raise ValueError(f'{name}: the test source holds no images')
  results = evaluation.evaluate()
  # Strict JSON has no NaN: classes without test ground truth get null.
  results = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in results.items()}
  results.update(counts, num_skipped_test=num_skipped, test_seconds=time.perf_counter() - tick)
  return results


def multiscale_results(results: Dict[str, Any]) -> Dict[str, Any]:
  """A multi-scale test's results under `MULTISCALE_PREFIX` keys, so they sit beside the single-scale ones."""
  return {MULTISCALE_PREFIX + k: v for k, v in results.items()}
