"""Synthetic detection data written as a PASCAL VOC 2007 VOCdevkit folder.

`write_vocdevkit` renders scenes (`scenes.render_scene`) into
`<root>/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}`, exactly the
layout `detection.voc_dataset` reads, plus the scenes' per-pixel class masks as
`SegmentationClass/` and `ImageSets/Segmentation/` (`segmentation.py`). Conventions:

* Shape class k is written as VOC class `VOC_CLASSES[k]` (the first ten VOC classes,
  aeroplane..cow), so class ids read back equal the scene's class ids.
* Scene boxes are 0-based pixels with exclusive max; VOC corners are 1-based and
  inclusive, so xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax = y1.
* An object is `difficult` when its box's shorter side is under 10% of the image's
  shorter side, or more than half of its box is covered by nearer objects (VOC
  marks small and heavily occluded objects so); `truncated` when its box touches
  the image border.
* Image sizes vary like VOC's: two of three are landscape (H = s, W = 4s/3), the
  rest portrait. Ids are 000001...; about half go to `test`, the rest to
  `trainval`, which is split in halves into `train` and `val`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Dict, List

import numpy as np

from mtssl_tf.data.detection import VOC_CLASSES
from mtssl_tf.data.synthetic.classification import encode_jpeg
from mtssl_tf.data.synthetic.scenes import Scene, render_scene
from mtssl_tf.data.synthetic.segmentation import write_segmentation

SMALL_FRACTION = 0.1
OCCLUDED_FRACTION = 0.5


def difficult_flags(scene: Scene) -> np.ndarray:
  """bool [N]: small or heavily occluded objects (see the module docstring)."""
  height, width = scene.image.shape[:2]
  flags = []
  for i, (y0, x0, y1, x1) in enumerate(scene.boxes.astype(np.int64)):
    small = min(y1 - y0, x1 - x0) < SMALL_FRACTION * min(height, width)
    # Scene objects are in painter's order, so later masks are nearer ones.
    nearer = scene.masks[i + 1 :, y0:y1, x0:x1].any(axis=0)
    occluded = nearer.mean() > OCCLUDED_FRACTION if nearer.size else False
    flags.append(bool(small or occluded))
  return np.asarray(flags, bool)


def annotation_xml(image_id: str, scene: Scene, difficult: np.ndarray) -> bytes:
  """A VOC 2007 annotation file for `scene`."""
  height, width = scene.image.shape[:2]
  root = ET.Element('annotation')
  ET.SubElement(root, 'folder').text = 'VOC2007'
  ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
  source = ET.SubElement(root, 'source')
  ET.SubElement(source, 'database').text = 'mtssl_tf synthetic world'
  size = ET.SubElement(root, 'size')
  for tag, value in (('width', width), ('height', height), ('depth', 3)):
    ET.SubElement(size, tag).text = str(value)
  ET.SubElement(root, 'segmented').text = '0'
  for (y0, x0, y1, x1), cls, hard in zip(scene.boxes.astype(np.int64), scene.classes, difficult):
    obj = ET.SubElement(root, 'object')
    ET.SubElement(obj, 'name').text = VOC_CLASSES[int(cls)]
    ET.SubElement(obj, 'pose').text = 'Unspecified'
    truncated = y0 == 0 or x0 == 0 or y1 == height or x1 == width
    ET.SubElement(obj, 'truncated').text = str(int(truncated))
    ET.SubElement(obj, 'difficult').text = str(int(hard))
    box = ET.SubElement(obj, 'bndbox')
    for tag, value in (('xmin', x0 + 1), ('ymin', y0 + 1), ('xmax', x1), ('ymax', y1)):
      ET.SubElement(box, tag).text = str(int(value))
  ET.indent(root, space='\t')
  return ET.tostring(root, encoding='utf-8')


def write_vocdevkit(
  root: str, num_images: int, size: int = 96, seed: int = 0, class_cue: str = 'colour'
) -> List[Dict[str, object]]:
  """Writes `num_images` scenes as `<root>/VOCdevkit/VOC2007`.

  Args:
    root: parent of the VOCdevkit folder.
    num_images: images over all splits (at least 2: one trainval, one test).
    size: shorter image side.
    seed: rendering and split seed.
    class_cue: how object classes look (`scenes.CLASS_CUES`).

  Returns:
    Per image: {'id', 'split' ('trainval' or 'test'), 'scene', 'difficult'}, in id order.
  """
  if num_images < 2:
    raise ValueError(f'a VOCdevkit needs at least 2 images (trainval and test), got {num_images}')
  rng = np.random.default_rng(seed)
  voc = os.path.join(root, 'VOCdevkit', 'VOC2007')
  for sub in ('JPEGImages', 'Annotations', os.path.join('ImageSets', 'Main')):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
  test = np.zeros(num_images, bool)
  test[rng.permutation(num_images)[: num_images // 2]] = True
  long = size * 4 // 3
  written = []
  for i in range(num_images):
    image_id = f'{i + 1:06d}'
    height, width = (size, long) if i % 3 != 2 else (long, size)
    scene = render_scene(rng, height, width, max_objects=5, class_cue=class_cue)
    difficult = difficult_flags(scene)
    with open(os.path.join(voc, 'JPEGImages', f'{image_id}.jpg'), 'wb') as f:
      f.write(encode_jpeg(scene.image, quality=95))
    with open(os.path.join(voc, 'Annotations', f'{image_id}.xml'), 'wb') as f:
      f.write(annotation_xml(image_id, scene, difficult))
    written.append({'id': image_id, 'split': 'test' if test[i] else 'trainval', 'scene': scene, 'difficult': difficult})
  trainval = [w['id'] for w in written if w['split'] == 'trainval']
  splits = {
    'trainval': trainval,
    'train': trainval[::2],
    'val': trainval[1::2],
    'test': [w['id'] for w in written if w['split'] == 'test'],
  }
  for name, ids in splits.items():
    with open(os.path.join(voc, 'ImageSets', 'Main', f'{name}.txt'), 'w') as f:
      f.write(''.join(f'{i}\n' for i in ids))
  # Per-pixel class masks from the scenes' own object masks: no random draw, so the above is unchanged.
  write_segmentation(voc, written)
  return written


def write_detection_part(root: str, preset, seed: int) -> Dict[str, str]:
  """The synthetic world's detection part: a VOCdevkit under `<root>/detection`.

  Args:
    root: world root.
    preset: a `world.Preset` (uses `detection_images`, `image_size` and `class_cue`).
    seed: world seed.

  Returns:
    Manifest entries 'detection_trainval' and 'detection_test' (`voc:` specs),
    'segmentation_train' and 'segmentation_val' (`vocseg:` specs of the same images'
    class masks, `segmentation.py`), and 'scene_images': the same scenes as a plain image
    folder (unlabelled), a second image domain beside the object-centred classification images.
  """
  folder = os.path.join(root, 'detection')
  write_vocdevkit(
    folder, preset.detection_images, preset.image_size, seed=seed + 10, class_cue=getattr(preset, 'class_cue', 'colour')
  )
  devkit = os.path.join(folder, 'VOCdevkit')
  return {
    'detection_trainval': f'voc:{devkit}:trainval',
    'detection_test': f'voc:{devkit}:test',
    'segmentation_train': f'vocseg:{os.path.join(devkit, "VOC2007")}:train',
    'segmentation_val': f'vocseg:{os.path.join(devkit, "VOC2007")}:val',
    'scene_images': f'folder:{os.path.join(devkit, "VOC2007", "JPEGImages")}',
  }
