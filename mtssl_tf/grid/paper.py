"""The numbers the two papers report, for every row the grid reproduces.

Doersch & Zisserman 2017 (`TABLES`, keys 'table1'..'table4'):

Each table row is (ImageNet, PASCAL, NYU): ImageNet frozen linear recall@5 in %
(Table 1: top-1 in %), PASCAL VOC07 Faster R-CNN mAP in %, NYU depth % of pixels with
max(d_gt/d_p, d_p/d_gt) < 1.25. Tables 2-4 were checked against the paper's text;
Table 1's cells did not survive the text extraction available to this project and are
transcribed from the published PDF (`TABLE1_VERIFIED` is False until someone checks
them against it again).

Noroozi et al. 2018 (`CC_TABLES`, keys 'cc_table1'..'cc_table6'), copied from the
paper's text: Table 1 (number of k-means clusters) and Table 2 (which dataset is
clustered, which is pseudo-labelled) report PASCAL VOC07 classification mAP after
fine-tuning the AlexNet student (`voc07_cls`, where a grid cell evaluates it; the grid
also shows the per-layer linear probes of the student, Table 4's protocol: ImageNet
top-1 of a linear classifier on each frozen conv layer); Table 3 reports VOC07
classification mAP, detection mAP (single- and multi-scale test) and VOC12
segmentation mIoU of the fine-tuned AlexNet (`CC_TABLE3_COLUMNS`); Table 5 the Places top-1
of a linear classifier on each frozen conv layer of the student (`places_linear`), Table 6
ImageNet top-1 of AlexNet frozen through each layer, the rest retrained (`nonlinear`).
Tables 3, 5 and 6 read a cell's evaluations (`CC_EVAL_COLUMNS`).

Compute model (§4 "Implementation details"): cost = per-task step count x a per-task
constant, snapshots every ~2.4K GPU-hours; Tables 2-4 use tick 7 (16.8K GPU-hours).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

# GPU-hours of one epoch (§4): ImageNet for RP, Col, Ex; the video dataset for MS.
EPOCH_GPU_HOURS = {
  'relative_position': 350.0,
  'colorization': 90.0,
  'exemplar': 60.0,
  'motion_segmentation': 400.0,
}
TICK_GPU_HOURS = 2400.0
# Tables 2-4: "checkpoints were taken after 16.8K GPU hours, equivalent to checkpoint 7".
EVAL_TICK = 7
EVAL_GPU_HOURS = EVAL_TICK * TICK_GPU_HOURS

# Table titles, and which ImageNet metric each table reports.
TITLES = {
  'table1': 'Table 1: single tasks (ImageNet top-1)',
  'table2': 'Table 2: combinations of tasks (ImageNet top-5)',
  'table3': 'Table 3: harmonization (ImageNet top-5)',
  'table4': 'Table 4: lasso (ImageNet top-5)',
}
IMAGENET_METRIC = {'table1': 'top1', 'table2': 'top5', 'table3': 'top5', 'table4': 'top5'}

Triple = Tuple[float, float, float]

TABLES: Dict[str, Dict[str, Triple]] = {
  # ImageNet top-1 (not top-5) here, as the paper's caption says.
  'table1': {
    'RP': (36.21, 66.75, 80.55),
    'Col': (39.62, 65.47, 76.79),
    'Ex': (31.51, 60.94, 69.57),
    'MS': (27.62, 61.13, 74.24),
    'ImageNet labels': (69.30, 74.17, 80.06),
  },
  'table2': {
    'RP': (59.21, 66.75, 80.54),
    'RP+Col': (66.64, 68.75, 79.87),
    'RP+Ex': (65.24, 69.44, 78.70),
    'RP+MS': (63.73, 68.81, 78.72),
    'RP+Col+Ex': (68.65, 69.48, 80.17),
    'RP+Col+Ex+MS': (69.30, 70.53, 79.25),
    'ImageNet labels': (85.10, 74.17, 80.06),
  },
  # The paper prints RP's NYU number as 80.23 here and 80.54 in Table 2; both kept as printed.
  'table3': {
    'RP': (59.21, 66.75, 80.23),
    'RP / H': (62.33, 66.15, 80.39),
    'RP+Col': (66.64, 68.75, 79.87),
    'RP+Col / H': (68.08, 68.26, 79.69),
  },
  'table4': {
    'No Lasso': (69.30, 70.53, 79.25),
    'Eval Only Lasso': (70.18, 68.86, 79.41),
    'Pre-train Only Lasso': (68.09, 68.49, 78.96),
    'Pre-train & Eval Lasso': (69.44, 68.98, 79.45),
  },
}
# Table 1's numbers are not in the text extraction, but the text's claims about them
# are, and `table1_claims` checks them (a test does): partly verified, not verified.
TABLE1_VERIFIED = False

# Noroozi et al. 2018 (copied from the paper's text, ../seeds 003).
CC_TITLES = {
  'cc_table1': 'Noroozi Table 1: number of clusters (student probes, top-1; paper: VOC07 classification mAP)',
  'cc_table2': 'Noroozi Table 2: clustering / pseudo-label domains (student probes, top-1; paper: VOC07 cls. mAP)',
  'cc_table3': 'Noroozi Table 3: PASCAL VOC fine-tuning of the AlexNet (cls. mAP, det. mAP SS / MS, seg. mIoU)',
  'cc_table4': 'Noroozi Table 4: linear probes of the student per layer (ImageNet top-1)',
  'cc_table5': 'Noroozi Table 5: Places linear probes per layer of the frozen AlexNet (Places top-1)',
  'cc_table6': 'Noroozi Table 6: nonlinear probes, AlexNet frozen through each layer (ImageNet top-1, 10 crops)',
}
CC_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
# Table 3's columns: (evaluation, result key) of VOC07 classification mAP, detection mAP single- and
# multi-scale test, VOC12 segmentation mean IoU; `None` where the paper prints '-'.
CC_TABLE3_COLUMNS = (
  ('VOC07 cls. mAP (%)', 'voc07_cls', 'mAP'),
  ('VOC07 det. mAP SS (%)', 'detection', 'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'),
  ('VOC07 det. mAP MS (%)', 'detection', 'multiscale_PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point'),
  ('VOC12 seg. mIoU (%)', 'voc12_seg', 'mIoU'),
)
# The tables read from evaluations: (column title, evaluation, result key) per column. Table 5's keys are
# `places_linear`'s (one probe per conv layer), Table 6's `nonlinear`'s (one network per last frozen layer; a
# config that freezes fewer layers leaves the others' columns empty).
CC_EVAL_COLUMNS: Dict[str, Tuple[Tuple[str, str, str], ...]] = {
  'cc_table3': CC_TABLE3_COLUMNS,
  'cc_table5': tuple((f'Places {layer} top-1 (%)', 'places_linear', f'{layer}_top1') for layer in CC_LAYERS),
  'cc_table6': tuple(
    (f'{layer} frozen top-1 (%)', 'nonlinear', f'{layer}_top1') for layer in CC_LAYERS + ('fc6', 'fc7')
  ),
}
CC_TABLES: Dict[str, Dict[str, Tuple[Optional[float], ...]]] = {
  # Row label = the number of clusters; value = (VOC07 classification mAP,).
  'cc_table1': {'500': (69.1,), '1000': (69.5,), '2000': (69.9,), '5000': (69.9,), '10000': (70.0,)},
  # Row label = 'clustering on / pseudo-labels on'.
  'cc_table2': {'ImageNet / ImageNet': (69.9,), 'ImageNet / Places': (68.4,), 'Places / ImageNet': (68.3,)},
  # conv1..conv5 top-1. 'Random' is a random AlexNet; the paper's CC on a random network's
  # features "yields the same performance ... as random initialization" (§5, item 5).
  'cc_table4': {
    'Supervised': (19.3, 36.3, 44.2, 48.3, 50.5),
    'CC+HOG': (16.8, 27.4, 20.7, 32.0, 29.1),
    'Random': (11.6, 17.1, 16.9, 16.3, 14.1),
    'Jigsaw++': (18.2, 28.7, 34.1, 33.2, 28.0),
    'CC+Jigsaw++': (18.9, 30.5, 35.7, 35.4, 32.2),
    'CC+vgg-Jigsaw++': (19.2, 32.0, 37.3, 37.1, 34.6),
  },
  # (cls., det. SS, det. MS, seg.); the rows of Noroozi's own methods and controls (the other papers' rows
  # are theirs). 'Distillation' is §5 item 6's text (conv4-5 regression, AlexNet teacher 69.8): 58.5 cls.
  'cc_table3': {
    'Supervised': (79.9, 59.1, 59.8, 48.0),
    'CC+HOG': (70.2, 53.2, 53.5, 39.2),
    'Random': (53.3, 43.4, None, 19.8),
    'Jigsaw++': (69.8, 55.5, 55.7, 38.1),
    'CC+Context-ColorDrop': (67.9, 52.8, 53.4, None),
    'CC+Context-ColorProjection': (66.7, 51.5, 51.8, None),
    'CC+Jigsaw++': (69.9, 55.0, 55.8, 40.0),
    '[37]+vgg-Jigsaw++': (70.6, 54.8, 55.2, 38.0),
    'CC+vgg-Context': (68.0, 53.0, 53.5, None),
    'CC+vgg-Jigsaw++': (72.5, 56.5, 57.2, 42.6),
    'Distillation': (58.5, None, None, None),
  },
  # conv1..conv5 Places205 top-1 of linear probes (the Table 4 protocol on Places); 'Supervised' is the paper's
  # "ImageNet labels" row, 'Places labels' an AlexNet trained on Places' labels.
  'cc_table5': {
    'Places labels': (22.1, 35.1, 40.2, 43.3, 44.6),
    'Supervised': (22.7, 34.8, 38.4, 39.4, 38.7),
    'CC+HOG': (20.3, 30.0, 31.8, 32.5, 29.8),
    'Random': (15.7, 20.3, 19.8, 19.1, 17.5),
    'Jigsaw++': (22.0, 31.2, 34.3, 33.9, 22.9),
    'CC+Jigsaw++': (22.5, 33.0, 36.2, 36.1, 34.0),
    'CC+vgg-Jigsaw++': (22.9, 34.2, 37.5, 37.1, 34.4),
  },
  # conv1..conv5, fc6, fc7: ImageNet top-1 with the network frozen through that layer, the rest retrained
  # (None where the paper prints '-' or nothing; its Supervised row is one number, 57.3, in every conv column).
  'cc_table6': {
    'Supervised': (57.3, 57.3, 57.3, 57.3, 57.3, None, None),
    'Random': (48.5, 41.0, 34.8, 27.1, 12.0, None, None),
    'Jigsaw++': (54.7, 52.9, 50.3, 46.1, 35.4, None, None),
    'CC+vgg-Context': (55.0, 52.0, 48.2, 44.3, 37.9, 29.1, 20.3),
    'CC+Jigsaw++': (55.3, 52.2, 51.4, 47.6, 41.1, 33.9, 25.9),
    'CC+vgg-Jigsaw++': (55.9, 55.1, 52.4, 49.5, 43.9, 37.3, 27.9),
  },
}
ALL_TABLES = tuple(TABLES) + tuple(sorted(CC_TABLES))

# Other numbers the text states (§6.1, §6.2).
PASCAL_MAP_075 = {'RP+Col+Ex+MS': 43.91, 'ImageNet labels': 44.27}
RANDOM_RESNET_IMAGENET_TOP5 = 10.5


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of a paper table.

  Attributes:
    table: 'table1'..'table4'.
    label: the row's name as printed.
    imagenet: ImageNet frozen linear, % (`imagenet_metric`: 'top1' or 'top5').
    pascal: VOC07 mAP at IoU 0.5, %.
    nyu: NYU depth % of pixels under 1.25.
    imagenet_metric: 'top1' (Table 1) or 'top5'.
    verified: the numbers were checked against the paper text in this project.
  """

  table: str
  label: str
  imagenet: float
  pascal: float
  nyu: float
  imagenet_metric: str
  verified: bool = True


def paper_row(table: str, label: str) -> Optional[PaperRow]:
  """The paper's row `label` of `table`, or None when the paper has no such row.

  Raises:
    KeyError: unknown table name.
  """
  if table not in TABLES:
    raise KeyError(f'unknown paper table {table!r}; choose one of {sorted(TABLES)}')
  values = TABLES[table].get(label)
  if values is None:
    return None
  return PaperRow(table, label, *values, IMAGENET_METRIC[table], verified=table != 'table1' or TABLE1_VERIFIED)


def table1_claims() -> Dict[str, bool]:
  """The §6.1 statements about Table 1, evaluated on the transcribed `TABLES['table1']`.

  Each is a sentence of the paper's text; all True means the transcription agrees with
  everything the text says about it (not that every digit is right).
  """
  t = TABLES['table1']
  tasks = ('RP', 'Col', 'Ex', 'MS')
  return {
    'Col wins ImageNet-frozen': max(tasks, key=lambda k: t[k][0]) == 'Col',
    'RP wins PASCAL': max(tasks, key=lambda k: t[k][1]) == 'RP',
    'RP wins NYU': max(tasks, key=lambda k: t[k][2]) == 'RP',
    'RP on par with labels on NYU': abs(t['RP'][2] - t['ImageNet labels'][2]) < 1.0,
    'labels 74.2 on PASCAL': round(t['ImageNet labels'][1], 1) == 74.2,
    'PASCAL gap to labels 7.5': round(t['ImageNet labels'][1] - t['RP'][1], 1) in (7.4, 7.5),
    'MS worst on ImageNet': min(tasks, key=lambda k: t[k][0]) == 'MS',
    'Ex worst on PASCAL': min(tasks, key=lambda k: t[k][1]) == 'Ex',
    'Ex worst on NYU': min(tasks, key=lambda k: t[k][2]) == 'Ex',
  }


def gpu_hours_per_step(task: str, batch_size: int, epoch_images: int = 1_281_167) -> float:
  """GPU-hours of one worker step of `task` at `batch_size` under the paper's cost model.

  Args:
    task: a key of `EPOCH_GPU_HOURS`.
    batch_size: examples per worker step.
    epoch_images: examples per epoch (ImageNet train by default; for motion
      segmentation the paper does not give its video dataset's size).
  """
  return EPOCH_GPU_HOURS[task] * batch_size / epoch_images
