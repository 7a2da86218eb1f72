"""VOC 2007 detection readers on a generated VOCdevkit; tfds conversion on a hand-made example."""

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import detection
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.data.pipeline import SKIPPED_KEY
from mtssl_tf.data.sources import DataError
from mtssl_tf.data.synthetic.classification import odd_images
from mtssl_tf.data.synthetic.detection import write_detection_part, write_vocdevkit


@pytest.fixture(scope='module')
def devkit(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc')
  written = write_vocdevkit(str(root), 16, size=36, seed=3)
  return str(root / 'VOCdevkit'), {w['id']: w for w in written}


def _read(spec, options=None):
  return list(detection.detection_dataset(spec, options).as_numpy_iterator())


def _copy(devkit, tmp_path):
  root, written = devkit
  shutil.copytree(root, tmp_path / 'VOCdevkit')
  return str(tmp_path / 'VOCdevkit'), written


def test_classes_are_the_standard_twenty_in_order():
  assert len(detection.VOC_CLASSES) == 20
  assert detection.VOC_CLASSES[0] == 'aeroplane' and detection.VOC_CLASSES[-1] == 'tvmonitor'
  assert list(detection.VOC_CLASSES) == sorted(detection.VOC_CLASSES)


def test_synthetic_devkit_reads_back_exactly(devkit):
  root, written = devkit
  seen = []
  for split in ('trainval', 'test'):
    elements = _read(f'voc:{root}:{split}')
    assert [e['image_id'].decode() for e in elements] == sorted(i for i, w in written.items() if w['split'] == split)
    for e in elements:
      w = written[e['image_id'].decode()]
      scene = w['scene']
      height, width = scene.image.shape[:2]
      assert e['image'].shape == (height, width, 3) and e['image'].dtype == np.uint8
      # 1-based inclusive VOC corners -> (y1 - 1) / H, y2 / H: the scene's 0-based exclusive box / size.
      expected = scene.boxes / np.asarray([height, width, height, width], np.float32)
      assert e['boxes'].dtype == np.float32 and np.array_equal(e['boxes'], expected)
      assert e['classes'].dtype == np.int64 and np.array_equal(e['classes'], scene.classes)
      assert np.array_equal(e['difficult'], w['difficult'])
      border = (scene.boxes[:, 0] == 0) | (scene.boxes[:, 1] == 0)
      border |= (scene.boxes[:, 2] == height) | (scene.boxes[:, 3] == width)
      assert np.array_equal(e['truncated'], border)
      assert e[SKIPPED_KEY] == 0
      seen.append(e)
  assert len(seen) == 16
  assert any(e['difficult'].any() for e in seen) and any((~e['difficult']).any() for e in seen)
  assert {e['image'].shape[0] > e['image'].shape[1] for e in seen} == {True, False}  # Portrait and landscape.


def test_sharding_partitions_the_images(devkit):
  root, written = devkit
  shards = [
    [e['image_id'] for e in _read(f'voc:{root}:trainval', ReadOptions(shard_index=i, num_shards=3))] for i in range(3)
  ]
  flat = [i for shard in shards for i in shard]
  assert len(flat) == len(set(flat)) == sum(w['split'] == 'trainval' for w in written.values())
  assert all(shards)


def test_voc2007_folder_itself_is_accepted(devkit):
  root, _ = devkit
  assert len(_read(f'voc:{root}/VOC2007:test')) == len(_read(f'voc:{root}:test'))


def test_missing_and_corrupt_images_are_skipped_and_counted(devkit, tmp_path):
  root, written = _copy(devkit, tmp_path)
  ids = sorted(i for i, w in written.items() if w['split'] == 'test')
  images = os.path.join(root, 'VOC2007', 'JPEGImages')
  with open(os.path.join(images, f'{ids[1]}.jpg'), 'wb') as f:
    f.write(odd_images()['truncated_jpeg'])
  os.remove(os.path.join(images, f'{ids[2]}.jpg'))
  elements = _read(f'voc:{root}:test')
  assert [e['image_id'].decode() for e in elements] == [ids[0]] + ids[3:]
  assert [int(e[SKIPPED_KEY]) for e in elements] == [0] + [2] * (len(ids) - 3)


def test_malformed_annotations_fail_naming_the_file(devkit, tmp_path):
  root, written = _copy(devkit, tmp_path)
  first = sorted(i for i, w in written.items() if w['split'] == 'test')[0]
  path = os.path.join(root, 'VOC2007', 'Annotations', f'{first}.xml')
  good = open(path).read()
  with open(path, 'w') as f:
    f.write(good[: len(good) // 2])
  with pytest.raises(DataError, match=f'{first}.xml.* is not valid XML'):
    detection.detection_dataset(f'voc:{root}:test')
  with open(path, 'w') as f:
    f.write(re.sub('<name>[a-z]+</name>', '<name>unicorn</name>', good, count=1))
  with pytest.raises(DataError, match=f"{first}.xml.*unknown class 'unicorn'"):
    detection.detection_dataset(f'voc:{root}:test')
  with open(path, 'w') as f:
    f.write(good.replace('<xmin>', '<xmin>x', 1))
  with pytest.raises(DataError, match=f'{first}.xml.*non-numeric box'):
    detection.detection_dataset(f'voc:{root}:test')
  os.remove(path)
  with pytest.raises(DataError, match=f'{first}.xml.*cannot be read'):
    detection.detection_dataset(f'voc:{root}:test')


def test_parse_annotation_converts_voc_corners(tmp_path):
  xml = (
    '<annotation><size><width>10</width><height>8</height></size>'
    '<object><name>Dog</name><difficult>1</difficult><truncated>0</truncated>'
    '<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>8</ymax></bndbox></object>'
    '<object><name>person</name><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>4</xmax><ymax>5</ymax></bndbox></object>'
    '</annotation>'
  )
  (tmp_path / 'one.xml').write_text(xml)
  parsed = detection.parse_annotation(str(tmp_path / 'one.xml'))
  assert parsed['boxes'].tolist() == [[1, 0, 8, 10], [2, 2, 5, 4]]
  assert parsed['classes'].tolist() == [11, 14]
  assert parsed['difficult'].tolist() == [True, False] and parsed['truncated'].tolist() == [False, False]


def test_bad_sources_fail_clearly(devkit, tmp_path):
  root, _ = devkit
  with pytest.raises(DataError, match=r"split 'val2' not found.*\['test', 'train', 'trainval', 'val'\]"):
    detection.detection_dataset(f'voc:{root}:val2')
  with pytest.raises(DataError, match='does not exist'):
    detection.detection_dataset(f'voc:{tmp_path}/nothing:test')
  with pytest.raises(DataError, match='has no VOC2007/ImageSets/Main'):
    detection.detection_dataset(f'voc:{tmp_path}:test')
  with pytest.raises(DataError, match='expected voc:'):
    detection.detection_dataset(f'folder:{root}')
  with pytest.raises(DataError, match='`tfds build`'):
    detection.detection_dataset('tfds:voc/2007:test', ReadOptions(data_dir=str(tmp_path)))


def test_tfds_example_conversion():
  height, width = 30, 40
  image = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
  corners = np.asarray([[1, 1, 40, 30], [11, 6, 20, 15]], np.float32)  # VOC x1, y1, x2, y2.
  x1, y1, x2, y2 = corners.T
  example = {
    'image': tf.io.encode_png(image),
    'image/filename': tf.constant('000042.jpg'),
    'objects': {
      # tfds divides the raw 1-based corners by the size.
      'bbox': tf.constant(np.stack([y1 / height, x1 / width, y2 / height, x2 / width], -1)),
      'label': tf.constant([0, 19], tf.int64),
      'is_difficult': tf.constant([False, True]),
      'is_truncated': tf.constant([True, False]),
      'pose': tf.constant([4, 4], tf.int64),
    },
  }
  out = {k: v.numpy() for k, v in detection.tfds_example_to_detection(example).items()}
  assert np.array_equal(out['image'], image)
  expected = np.stack([(y1 - 1) / height, (x1 - 1) / width, y2 / height, x2 / width], -1)
  np.testing.assert_allclose(out['boxes'], expected, atol=1e-6)
  assert out['boxes'].dtype == np.float32
  assert out['classes'].tolist() == [0, 19] and out['classes'].dtype == np.int64
  assert out['difficult'].tolist() == [False, True] and out['truncated'].tolist() == [True, False]
  assert out['image_id'] == b'000042'


def test_world_part_manifest(tmp_path):
  class Preset:
    detection_images = 4
    image_size = 32

  sources = write_detection_part(str(tmp_path), Preset(), seed=0)
  assert set(sources) == {'detection_trainval', 'detection_test', 'scene_images', 'segmentation_train',
                          'segmentation_val'}  # fmt: skip
  assert len(_read(sources['detection_trainval'])) + len(_read(sources['detection_test'])) == 4
  # The same scenes as an unlabelled image folder (Noroozi Table 2's second domain in the mini grid).
  assert sources['scene_images'].startswith('folder:') and len(os.listdir(sources['scene_images'][7:])) == 4
