"""VOC07 classification by linear SVMs on frozen features, full and low-shot (Goyal et al. 2019).

The benchmark of Goyal, Mahajan, Gupta & Misra, "Scaling and Benchmarking
Self-Supervised Visual Representation Learning" (ICCV 2019), as released
in facebookresearch/fair_self_supervision_benchmark (tools/svm/, extra_scripts/) and
VISSL (vissl/utils/svm_utils/):

* Targets per image and class (`extra_scripts/create_voc_data_files.py`): 1 when a
  non-difficult object of the class is in the image, -1 (ignore) when only
  difficult ones are, 0 otherwise. Our VOC reader gives boxes with classes and
  'difficult' flags; an image's targets follow from them exactly as the VOC07 devkit
  derives its classification ground truth.
* Features: the frozen trunk on a centre crop, endpoint `endpoint` average-pooled
  to `pool_grid` x `pool_grid` (Goyal / VISSL pool ResNet-50 res4 to 3 x 3 x 1024 =
  9216 dims; here block 3's output after the trunk's closing BN-ReLU, 'final', the
  counterpart of res4's post-ReLU output), then L2-normalised (their
  `normalize_features`: x / (|x| + 1e-5)).
* One-vs-rest `LinearSVC(C, class_weight={1: 2, -1: 1}, loss='squared_hinge',
  penalty='l2', dual=True, tol=1e-4, max_iter=2000, intercept_scaling=1)` per class
  (`train_svm_kfold.py`). Training labels: 1 -> +1, 0 -> -1; as in their script,
  ignore (-1) images stay in training as negatives.
* Costs (`svm_helper.parse_cost_list` with the README's list): 1e-7, 1e-6, ..., 10,
  100 and 0.5^k for k = 4..19; per class the cost with the best mean 3-fold
  cross-validation AP on trainval (`cross_val_score(..., cv=3,
  scoring='average_precision')`: unshuffled stratified folds, deterministic).
  With fewer positives or negatives than folds, the folds shrink to that count; a
  class with a single positive cannot be cross-validated and gets C = 1
  (LinearSVC's default, `choose_cost`).
* Test AP: VOC07 11-point AP per class over images whose target is not -1, scores
  ranked descending (ties: file order), via `voc_metrics.precision_recall` and
  `eleven_point_average_precision`; mAP over classes with test positives.

Low-shot (`voc07_lowshot`, `extra_scripts/create_voc_low_shot_samples.py`,
`train_svm_low_shot.py`, `aggregate_low_shot_svm_stats.py`): for each sample count
k in (1, 2, 4, 8, 16, 32, 64, 96) and each of 5 independent draws, every class
independently gets k positive images and (classes - 1) x k negative images of
trainval (label 0 for that class; ignore images are never drawn), all other images
ignored for that class's SVM. Draws are seeded (`lowshot_sample`); where a pool is
smaller than asked (miniature data) all of it is taken. An SVM is trained for every
cost on each draw; per k, the reported mAP is the mean (and std) over draws at the
cost whose mean test mAP is best, as Goyal et al.'s aggregation script picks it
(on test, as they did).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.data.detection import VOC_CLASSES, detection_dataset
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import voc_metrics
from mtssl_tf.evaluation.knn import check_feature_fields, extract, feature_fn, test_view
from mtssl_tf.evaluation.protocol import Column, Context, Protocol

# fair_self_supervision_benchmark tools/svm/README: --costs_list, plus svm_helper.parse_cost_list's 0.5^4 .. 0.5^19.
COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(0.5**k for k in range(4, 20))
LOWSHOT_COUNTS = (1, 2, 4, 8, 16, 32, 64, 96)  # Goyal et al.'s k_values.
LOWSHOT_DRAWS = 5  # Their --num_samples.
IGNORE, ABSENT, PRESENT = -1, 0, 1


@dataclasses.dataclass
class VocSourcesConfig(Config):
  """Where VOC07 classification data comes from; shared by the SVM and fine-tuning protocols.

  Attributes:
    train_source: VOC trainval (`voc:<VOCdevkit>:trainval` or `tfds:voc/2007:trainval`);
      '' = the synthetic world's 'detection_trainval'.
    test_source: VOC test; '' = the world's 'detection_test'.
    data_dir: tensorflow-datasets data directory.
    num_classes: classes (VOC: 20).
  """

  train_source: str = ''
  test_source: str = ''
  data_dir: str = ''
  num_classes: int = len(VOC_CLASSES)


@dataclasses.dataclass
class SvmConfig(VocSourcesConfig):
  """VOC07 linear SVMs (module docstring); shared by `voc07_svm` and `voc07_lowshot`.

  The data fields come from `VocSourcesConfig`.

  Attributes:
    image_size: shorter side images are resized to.
    crop_size: side of the centre crop.
    endpoint: trunk endpoint ('final' = block 3 after BN-ReLU).
    pool_grid: average pooling grid (3: Goyal's 3x3 of res4).
    batch_size: images per forward pass.
    costs: SVM costs C swept.
    folds: cross-validation folds (Goyal: 3).
    max_iter: LinearSVC iterations (Goyal: 2000).
    counts: low-shot positives per class.
    draws: independent low-shot draws per count.
    seed: low-shot draws.
  """

  image_size: int = 256
  crop_size: int = 224
  endpoint: str = 'final'
  pool_grid: int = 3
  batch_size: int = 50
  costs: Tuple[float, ...] = COSTS
  folds: int = 3
  max_iter: int = 2000
  counts: Tuple[int, ...] = LOWSHOT_COUNTS
  draws: int = LOWSHOT_DRAWS
  seed: int = 0

  def validate(self) -> None:
    check_feature_fields(self, 'svm')
    if not self.costs or min(self.costs) <= 0:
      raise ConfigError(f'svm.costs: need positive costs, got {list(self.costs)}')
    if self.folds < 2 or self.max_iter < 1 or self.draws < 1 or self.num_classes < 1:
      raise ConfigError('svm.folds >= 2, svm.max_iter, svm.draws and svm.num_classes >= 1 are required')
    if not self.counts or min(self.counts) < 1:
      raise ConfigError(f'svm.counts: need positive sample counts, got {list(self.counts)}')


# ----------------------------------------------------------------------------- data


def image_targets(classes: tf.Tensor, difficult: tf.Tensor, num_classes: int) -> tf.Tensor:
  """int32 [num_classes]: 1 present (a non-difficult box), -1 ignore (only difficult boxes), 0 absent."""
  boxes = tf.one_hot(tf.cast(classes, tf.int32), num_classes)  # [N, C]; N may be 0.
  easy = tf.reduce_sum(boxes * (1.0 - tf.cast(difficult, tf.float32))[:, None], axis=0)
  any_box = tf.reduce_sum(boxes, axis=0)
  return tf.where(easy > 0, PRESENT, tf.where(any_box > 0, IGNORE, ABSENT))


def voc_split(cfg: SvmConfig, spec: str) -> tf.data.Dataset:
  """A VOC split as batches {'image': uint8 centre crops, 'targets': int32 [B, classes]}, in file order."""

  def view(x):
    return {
      'image': test_view(x['image'], cfg.image_size, cfg.crop_size),
      'targets': image_targets(x['classes'], x['difficult'], cfg.num_classes),
    }

  ds = detection_dataset(spec, ReadOptions(data_dir=cfg.data_dir or None)).map(view)
  return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)


def normalize(features: np.ndarray) -> np.ndarray:
  """Goyal et al.'s `normalize_features`: rows divided by (L2 norm + 1e-5), float64."""
  features = np.asarray(features, np.float64)
  return features / (np.linalg.norm(features, axis=1) + 1e-5)[:, None]


# ----------------------------------------------------------------------------- SVMs and AP


def classification_ap(scores: np.ndarray, targets: np.ndarray) -> float:
  """VOC07 11-point AP of one class: target -1 ignored, scores descending (stable); NaN without positives."""
  keep = targets != IGNORE
  scores, positive = np.asarray(scores, np.float64)[keep], targets[keep] == PRESENT
  if not positive.any():
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  precision, recall = voc_metrics.precision_recall(positive[order], positive.sum())
  return voc_metrics.eleven_point_average_precision(precision, recall)


def _svm(cost: float, max_iter: int):
  from sklearn.svm import LinearSVC

  # Goyal et al. train_svm_kfold.py / VISSL svm_trainer.py settings.
  return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty='l2', loss='squared_hinge',
                   tol=1e-4, dual=True, max_iter=max_iter)  # fmt: skip


def _fit(cost: float, features: np.ndarray, labels: np.ndarray, max_iter: int):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # ConvergenceWarning at tiny costs: the sweep expects some.
    return _svm(cost, max_iter).fit(features, labels)


def cross_validated_ap(cost: float, features: np.ndarray, labels: np.ndarray, folds: int, max_iter: int) -> float:
  """Mean `folds`-fold cross-validation AP (sklearn's average_precision, as Goyal et al.), or NaN if impossible."""
  from sklearn.model_selection import cross_val_score

  folds = min(folds, int((labels == 1).sum()), int((labels == -1).sum()))
  if folds < 2:
    return float('nan')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return float(
      np.mean(cross_val_score(_svm(cost, max_iter), features, labels, cv=folds, scoring='average_precision'))
    )


def choose_cost(cv_ap: Sequence[float], costs: Sequence[float]) -> float:
  """The cost of best cross-validation AP (first on ties, as np.argmax); 1.0 when none could be cross-validated."""
  cv_ap = np.asarray(cv_ap, np.float64)
  if np.all(np.isnan(cv_ap)):
    return 1.0  # LinearSVC's default C: a named fallback for a class with a single positive.
  return float(costs[int(np.nanargmax(cv_ap))])


def train_labels(targets: np.ndarray) -> np.ndarray:
  """SVM labels of one class column: 1 -> +1, else -1 (Goyal et al. keep ignore images as negatives)."""
  return np.where(targets == PRESENT, 1, -1)


def mean_ap(aps: Sequence[float]) -> float:
  """Mean over classes with an AP (NaN: no test positives or no training positives)."""
  aps = np.asarray(aps, np.float64)
  return float(np.nanmean(aps)) if np.any(~np.isnan(aps)) else float('nan')


def lowshot_sample(targets: np.ndarray, k: int, seed) -> np.ndarray:
  """Goyal et al.'s low-shot draw: per class k positives and (classes - 1) x k negatives, all else ignored.

  Args:
    targets: int [N, C] trainval targets (1 / 0 / -1).
    k: positives per class.
    seed: the draw's seed, an int or a tuple of ints (numpy's default_rng); classes are
      drawn in order from one generator.

  Returns:
    int32 [N, C] targets of the draw: 1, 0 for the drawn images, -1 elsewhere. Where
    a class has fewer images of a kind than asked, all of them are taken.
  """
  rng = np.random.default_rng(seed)
  out = np.full(targets.shape, IGNORE, np.int32)
  num_classes = targets.shape[1]
  for c in range(num_classes):
    for symbol, count in ((PRESENT, k), (ABSENT, (num_classes - 1) * k)):
      pool = np.flatnonzero(targets[:, c] == symbol)
      chosen = rng.choice(pool, size=min(count, len(pool)), replace=False) if len(pool) else pool
      out[chosen, c] = symbol
  return out


# ----------------------------------------------------------------------------- protocols


def _features(ctx: Context) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  cfg: SvmConfig = ctx.section
  features = feature_fn(ctx, cfg.endpoint, cfg.pool_grid)
  train, train_targets, _ = extract(voc_split(cfg, ctx.train_spec), features, label_key='targets')
  test, test_targets, _ = extract(voc_split(cfg, ctx.test_spec), features, label_key='targets')
  return normalize(train), train_targets, normalize(test), test_targets


def _protocol_record(ctx: Context, dims: int) -> Dict[str, Any]:
  cfg: SvmConfig = ctx.section
  return {
    'features': f'{cfg.endpoint} average-pooled to {cfg.pool_grid}x{cfg.pool_grid} ({dims} dims), L2-normalised',
    'view': f'centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
    'svm': 'LinearSVC one-vs-rest, class_weight {1: 2, -1: 1}, squared hinge, L2 (Goyal et al. 2019)',
    'ap': 'VOC07 11-point per class, difficult-only images ignored; mAP over classes with test positives',
    'preprocessing': ctx.preprocessing,
    'init_source': ctx.init,
  }


def _json(value):
  """NaN (no AP: a class without positives) as None, so results.json is strict JSON."""
  if isinstance(value, dict):
    return {k: _json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def _scalars(ctx: Context, values: Dict[str, float]) -> None:
  writer = tf.summary.create_file_writer(ctx.out_dir)
  with writer.as_default(step=0):
    for key, value in values.items():
      if np.isfinite(value):
        tf.summary.scalar(f'{ctx.name}/{key}', value)
  writer.flush()


class Voc07SvmProtocol(Protocol):
  """Goyal et al. 2019: linear SVMs on frozen features, VOC07 trainval -> test, cost by 3-fold CV."""

  name = 'voc07_svm'
  summary = 'linear SVMs on frozen L2-normalised features, VOC07 trainval -> test, cost by 3-fold CV (mAP)'
  config_class = SvmConfig
  world_sources = ('detection_trainval', 'detection_test')
  headline = ('mAP',)
  columns = (Column('VOC07 SVM mAP (%)', 'mAP', 100.0),)

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: SvmConfig = ctx.section
    train, train_targets, test, test_targets = _features(ctx)
    aps, chosen, cv = [], [], []
    scores = np.full(test_targets.shape, np.nan)
    for c in range(cfg.num_classes):
      labels = train_labels(train_targets[:, c])
      if not (labels == 1).any():
        aps.append(float('nan'))  # No positive in trainval: no SVM for this class.
        chosen.append(float('nan'))
        cv.append([])
        continue
      cv.append([cross_validated_ap(cost, train, labels, cfg.folds, cfg.max_iter) for cost in cfg.costs])
      chosen.append(choose_cost(cv[-1], cfg.costs))
      scores[:, c] = _fit(chosen[-1], train, labels, cfg.max_iter).decision_function(test)
      aps.append(classification_ap(scores[:, c], test_targets[:, c]))
    names = list(VOC_CLASSES[: cfg.num_classes]) + [str(i) for i in range(len(VOC_CLASSES), cfg.num_classes)]
    results = {
      'mAP': mean_ap(aps),
      'ap': {n: a for n, a in zip(names, aps)},
      'chosen_cost': {n: c for n, c in zip(names, chosen)},
      'cv_ap': {n: a for n, a in zip(names, cv)},
      'costs': list(cfg.costs),
      'protocol': _protocol_record(ctx, train.shape[1]),
      'counts': {'trainval': len(train), 'test': len(test), 'num_classes': cfg.num_classes},
    }
    np.savez(f'{ctx.out_dir}/test_scores.npz', scores=scores, targets=test_targets)
    _scalars(ctx, {'mAP': results['mAP']})
    path = ctx.write_results(_json(results))
    if ctx.progress:
      logging.info('voc07_svm: mAP %.4f over %d test images -> %s', results['mAP'], len(test), path)
    return _json(results)


class Voc07LowShotProtocol(Protocol):
  """Goyal et al. 2019: VOC07 SVMs from 1..96 positives per class, 5 draws, mean +- std of mAP."""

  name = 'voc07_lowshot'
  summary = 'low-shot VOC07 SVMs: 1-96 positives per class, 5 seeded draws, mean +- std mAP'
  config_class = SvmConfig
  world_sources = ('detection_trainval', 'detection_test')
  headline = tuple(f'mAP_k{k}' for k in LOWSHOT_COUNTS)
  columns = tuple(Column(f'VOC07 low-shot k={k} mAP (%)', f'mAP_k{k}', 100.0) for k in (1, 8, 96))

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg: SvmConfig = ctx.section
    train, train_targets, test, test_targets = _features(ctx)
    results: Dict[str, Any] = {'costs': list(cfg.costs), 'per_count': {}}
    for k in cfg.counts:
      # [draws, costs] test mAP; draw d of count k is seeded by (seed, k, d): independent draws.
      maps = np.full([cfg.draws, len(cfg.costs)], np.nan)
      drawn = []
      for d in range(cfg.draws):
        sample = lowshot_sample(train_targets, k, seed=(cfg.seed, k, d))
        drawn.append((sample == PRESENT).sum(0))
        maps[d] = self._draw(cfg, train, sample, test, test_targets)
      mean = np.nanmean(maps, axis=0) if np.any(~np.isnan(maps)) else np.full(len(cfg.costs), np.nan)
      best = int(np.nanargmax(mean)) if np.any(~np.isnan(mean)) else 0
      entry = {
        'mean': float(mean[best]),
        'std': float(np.nanstd(maps[:, best])),
        'cost': float(cfg.costs[best]),
        'draws': [float(m) for m in maps[:, best]],
        # Positives per class actually drawn (fewer than k where trainval has fewer).
        'positives_per_class': np.max(drawn, axis=0).tolist(),
      }
      results['per_count'][str(k)] = entry
      results[f'mAP_k{k}'] = entry['mean']
      results[f'std_k{k}'] = entry['std']
    results['protocol'] = dict(_protocol_record(ctx, train.shape[1]), lowshot=(
      f'{cfg.draws} seeded draws per count; per class k positives and (classes-1)*k negatives; cost = best mean '
      'test mAP over draws (Goyal et al. aggregate_low_shot_svm_stats.py)'))  # fmt: skip
    results['counts'] = {'trainval': len(train), 'test': len(test), 'num_classes': cfg.num_classes}
    _scalars(ctx, {f'mAP_k{k}': results[f'mAP_k{k}'] for k in cfg.counts})
    path = ctx.write_results(_json(results))
    if ctx.progress:
      summary = ', '.join(f'k={k} {results[f"mAP_k{k}"]:.4f}+-{results[f"std_k{k}"]:.4f}' for k in cfg.counts)
      logging.info('voc07_lowshot: %s -> %s', summary, path)
    return _json(results)

  @staticmethod
  def _draw(cfg: SvmConfig, train, sample, test, test_targets) -> List[float]:
    """Test mAP for every cost of SVMs trained on one low-shot draw."""
    out = []
    for cost in cfg.costs:
      aps = []
      for c in range(cfg.num_classes):
        keep = sample[:, c] != IGNORE
        labels = train_labels(sample[keep, c])
        if not (labels == 1).any() or not (labels == -1).any():
          aps.append(float('nan'))
          continue
        scores = _fit(cost, train[keep], labels, cfg.max_iter).decision_function(test)
        aps.append(classification_ap(scores, test_targets[:, c]))
      out.append(mean_ap(aps))
    return out
