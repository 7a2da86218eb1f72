"""`list:` image sources as Places ships them (Places365-Standard's txt lists, Places205's csv), end to end."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.data import images
from mtssl_tf.data.pipeline import SKIPPED_KEY, SKIPPED_SOURCES_KEY
from mtssl_tf.data.sources import DataError, Source, parse_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jpeg(path, side: int, value: int = 128) -> None:
  """A tiny flat JPEG whose side identifies it (sizes survive decoding exactly)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = tf.fill([side, side + 1, 3], tf.constant(value, tf.uint8))
  tf.io.write_file(path, tf.io.encode_jpeg(image))


def _read(spec, options=None):
  return list(images.image_dataset(spec, options).as_numpy_iterator())


def _places365(tmp_path):
  """Places365-Standard's layout: data_256/<letter>/<class>[/<sub>]/<n>.jpg, '/'-led list; flat val_256."""
  root = tmp_path / 'places365'
  train = [('/a/airfield/00000001.jpg', 0, 20), ('/a/apartment_building/outdoor/00000001.jpg', 8, 21),
           ('/b/bedroom/00000002.jpg', 3, 22)]  # fmt: skip
  for rel, _, side in train:
    _jpeg(str(root / 'data_256') + rel, side)
  (root / 'places365_train_standard.txt').write_text(''.join(f'{r} {label}\n' for r, label, _ in train) + '\n')
  _jpeg(str(root / 'val_256' / 'Places365_val_00000001.jpg'), 23)
  (root / 'places365_val.txt').write_text('Places365_val_00000001.jpg 165\n')
  return root


def test_parse_list_spec():
  spec = 'list:/d/places365/places365_train_standard.txt@/d/places365/data_256'
  assert parse_source(spec) == Source('list', '/d/places365/places365_train_standard.txt', root='/d/places365/data_256')
  assert parse_source('list:/a@b/l.txt@/r').location == '/a@b/l.txt'  # The root follows the last '@'.
  for bad in ('list:/d/l.txt', 'list:/d/l.txt@', 'list:@/d/root'):
    with pytest.raises(DataError, match='expected list:<list file>@<image root>'):
      parse_source(bad)


def test_places365_lists_read_labels_and_paths(tmp_path):
  root = _places365(tmp_path)
  train = _read(f'list:{root}/places365_train_standard.txt@{root}/data_256')
  # Leading '/' dropped and joined under the root; a nested fine-grained class reads its own label.
  assert [(int(e['label']), e['image'].shape) for e in train] == [(0, (20, 21, 3)), (8, (21, 22, 3)), (3, (22, 23, 3))]
  assert all(e[SKIPPED_KEY] == 0 for e in train)
  val = _read(f'list:{root}/places365_val.txt@{root}/val_256/')  # A trailing '/' on the root is fine.
  assert [(int(e['label']), e['image'].shape) for e in val] == [(165, (23, 24, 3))]


def test_places205_csv_with_label_offset_and_shards(tmp_path):
  root = tmp_path / 'places205'
  rows = [(f'{c}/{name}/{i:08d}.jpg', label) for label, (c, name) in enumerate([('a', 'abbey'), ('b', 'bar')])
          for i in range(3)]  # fmt: skip
  for k, (rel, _) in enumerate(rows):
    _jpeg(str(root / 'images256' / rel), 16 + k)
  csv = root / 'trainvalsplit_places205' / 'train_places205.csv'
  os.makedirs(csv.parent)
  csv.write_text(''.join(f'{rel} {label}\r\n' for rel, label in rows))  # CRLF ends read too.
  spec = f'list:{csv}@{root}/images256'
  elements = _read(spec)
  assert [int(e['label']) for e in elements] == [0, 0, 0, 1, 1, 1]
  assert [e['image'].shape[0] for e in elements] == list(range(16, 22))
  assert [int(e['label']) for e in _read(spec, images.ReadOptions(label_offset=1))] == [-1, -1, -1, 0, 0, 0]
  shards = [[e['image'].shape[0] for e in _read(spec, images.ReadOptions(shard_index=i, num_shards=2))] for i in (0, 1)]
  assert sorted(shards[0] + shards[1]) == list(range(16, 22)) and len(shards[0]) == 3


def test_missing_and_corrupt_images_are_skipped_and_named(tmp_path):
  root = _places365(tmp_path)
  (root / 'data_256' / 'b' / 'bedroom' / '00000003.jpg').write_bytes(b'\xff\xd8\xff\xe0 cut short')
  listing = root / 'places365_train_standard.txt'
  good = listing.read_text()
  listing.write_text('/z/zoo/00000009.jpg 7\n/b/bedroom/00000003.jpg 3\n' + good)
  elements = _read(f'list:{listing}@{root}/data_256')
  assert [int(e['label']) for e in elements] == [0, 8, 3]  # The two bad entries are gone, the rest read.
  assert [int(e[SKIPPED_KEY]) for e in elements] == [2, 2, 2]  # Each later element carries the count so far.
  named = sorted(s.decode() for s in elements[-1][SKIPPED_SOURCES_KEY] if s)
  assert named == [f'{root}/data_256/b/bedroom/00000003.jpg: truncated JPEG (no end-of-image marker)',
                   f'{root}/data_256/z/zoo/00000009.jpg: unreadable file']  # fmt: skip


def test_malformed_lines_name_file_and_line(tmp_path):
  root = _places365(tmp_path)
  listing = tmp_path / 'bad.txt'
  cases = {
    'a/1.jpg 0\n\na/2.jpg zero\n': 'line 3: expected <path> <label >= 0>',
    'a/1.jpg 0\na/2.jpg\n': 'line 2: expected <path> <label >= 0>',
    'a/1.jpg 0\na/2.jpg 1 extra\n': 'line 2',
    'a/1.jpg 0\na/2.jpg -4\n': 'line 2',
    'a/1.jpg\na/2.jpg 4\n': 'line 2: expected <path> \\(no label',
  }
  for text, message in cases.items():
    listing.write_text(text)
    with pytest.raises(DataError, match=f"image list '{listing}' {message}"):
      images.image_dataset(f'list:{listing}@{root}')
  listing.write_text('\n  \n')
  with pytest.raises(DataError, match='holds no entries'):
    images.image_dataset(f'list:{listing}@{root}')


def test_unlabelled_list_and_missing_paths(tmp_path):
  root = _places365(tmp_path)
  listing = tmp_path / 'test.txt'
  listing.write_text('Places365_val_00000001.jpg\n')  # places365_test.txt's form: paths only.
  assert [int(e['label']) for e in _read(f'list:{listing}@{root}/val_256')] == [-1]
  with pytest.raises(DataError, match=f"image root of list '{listing}' '{root}/nowhere' does not exist"):
    images.image_dataset(f'list:{listing}@{root}/nowhere')
  with pytest.raises(DataError, match=f"image list file '{tmp_path}/none.txt' does not exist"):
    images.image_dataset(f'list:{tmp_path}/none.txt@{root}')


def test_read_image_list_is_plain_python(tmp_path):
  listing = tmp_path / 'l.txt'
  listing.write_text('/a/b/1.jpg 5\n  c/2.jpg\t7  \n')
  paths, labels = images.read_image_list(str(listing))
  assert paths == ['a/b/1.jpg', 'c/2.jpg'] and labels.dtype == np.int64 and labels.tolist() == [5, 7]
  labels[0], paths[0] = 99, 'changed'  # Callers get copies: the parse is cached per file version.
  assert images.read_image_list(str(listing))[1].tolist() == [5, 7]
  listing.write_text('c/3.jpg 2\n')  # A rewritten list (new size and mtime) is parsed again.
  paths, labels = images.read_image_list(str(listing))
  assert paths == ['c/3.jpg'] and labels.tolist() == [2]


def test_places_linear_reads_list_sources_from_the_shipped_config(tmp_path):
  """`mtssl-eval --eval=places_linear` (its runner) with the paper-scale Places205 config on tiny list sources."""
  from mtssl_tf.evaluation import config as eval_config
  from mtssl_tf.evaluation import runner
  from mtssl_tf.transfer import models
  from mtssl_tf.transfer.student import META

  root = tmp_path / 'places205'
  lists = {}
  for split, count in (('train', 12), ('val', 6)):
    rows = [(f'{"abc"[i % 3]}/class{i % 3}/{split}{i:08d}.jpg', i % 3) for i in range(count)]
    for rel, label in rows:
      _jpeg(str(root / 'images256' / rel), 64, value=40 + 80 * label)
    lists[split] = root / f'{split}_places205.csv'
    lists[split].write_text(''.join(f'{rel} {label}\n' for rel, label in rows))
  student = tmp_path / 'student'
  model = models.build_model('alexnet', 5, 56, width=0.125)
  tf.train.Checkpoint(model=model).save(str(student / 'checkpoints' / 'ckpt'))
  (student / META).write_text(json.dumps({'architecture': 'alexnet', 'num_classes': 5, 'input_size': 56,
                                          'kwargs': {'width': 0.125}}))  # fmt: skip
  overrides = [f'places_linear.train_source=list:{lists["train"]}@{root}/images256',
               f'places_linear.validation_source=list:{lists["val"]}@{root}/images256',
               *[f'places_linear.{k}' for k in ('num_classes=3', 'steps=2', 'lr_decay_steps=2', 'image_size=64',
                                                'crop_size=56', 'batch_size=4', 'eval_batch_size=3',
                                                'log_every_steps=1', 'checkpoint_every_steps=2')]]  # fmt: skip
  cfg = eval_config.load_eval_config([os.path.join(REPO, 'configs', 'eval', 'places_linear.yaml')], overrides,
                                     str(student))  # fmt: skip
  results = runner.run('places_linear', cfg, str(tmp_path / 'out'))
  assert set(results['probes']) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}
  assert all(0.0 <= results[f'conv{i}_top1'] <= results[f'conv{i}_top5'] <= 1.0 for i in range(1, 6))
  assert results['protocol']['source'].startswith('list:') and 'scene_labels' not in results
  assert results['counts']['steps'] == 2
