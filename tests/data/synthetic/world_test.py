"""The synthetic world: written once in the real formats, reused, readable by the readers."""

import os

import pytest

from mtssl_tf.data import images
from mtssl_tf.data.synthetic import world


def test_tiny_world_is_written_read_and_reused(tmp_path):
  manifest = world.make_world(str(tmp_path), 'tiny', seed=3)
  assert manifest['preset'] == 'tiny' and manifest['seed'] == 3
  sources = manifest['sources']
  train = list(images.image_dataset(sources['images_train']).as_numpy_iterator())
  assert len(train) == world.PRESETS['tiny'].train_images
  assert len(list(images.image_dataset(sources['images_folder']).as_numpy_iterator())) == 20
  stamp = os.path.getmtime(tmp_path / 'world.json')
  again = world.make_world(str(tmp_path), 'tiny', seed=3)
  assert again == manifest and os.path.getmtime(tmp_path / 'world.json') == stamp
  other = world.make_world(str(tmp_path), 'tiny', seed=4)  # A different seed regenerates.
  assert other['seed'] == 4


def test_unknown_preset():
  with pytest.raises(ValueError, match="preset 'huge'"):
    world.make_world('/nonexistent', 'huge')


def test_concurrent_requests_write_the_world_once(tmp_path, monkeypatch):
  # Two grid cells starting together (run_grid --parallel) ask for the same world: the
  # second waits on the lock, then reuses the first's manifest instead of rewriting files.
  import threading

  writes = []
  original = world._image_parts

  def counted(*args):
    writes.append(1)
    return original(*args)

  monkeypatch.setattr(world, '_image_parts', counted)
  results = []
  threads = [threading.Thread(target=lambda: results.append(world.make_world(str(tmp_path), 'tiny'))) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(writes) == 1 and len(results) == 2 and results[0] == results[1]
  assert 'scene_images' in results[0]['sources']
