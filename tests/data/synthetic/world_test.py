"""The synthetic world: written once in the real formats, reused, readable by the readers."""

import dataclasses
import json
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


def test_a_worker_asking_for_the_world_its_parent_writes_fails_instead_of_hanging(tmp_path, capfd):
  # A script without a __main__ guard: the spawned worker re-runs make_world while its parent holds the lock.
  import multiprocessing

  root = str(tmp_path / 'world')
  with world._exclusive(root):
    child = multiprocessing.get_context('spawn').Process(target=world.make_world, args=(root, 'tiny'))
    child.start()
    child.join(timeout=120)
    alive = child.is_alive()
    if alive:
      child.kill()
  assert not alive, "the worker waited on its parent's lock"
  assert child.exitcode == 1
  assert "if __name__ == '__main__':" in capfd.readouterr().err
  assert not os.path.exists(os.path.join(root, world.MANIFEST))  # The worker wrote nothing.


def test_every_size_has_a_shape_cue_preset():
  from mtssl_tf.data.synthetic.world import default_world_dir

  for name in ('tiny', 'small', 'large'):
    assert world.PRESETS[name].class_cue == 'colour'  # The original worlds keep their names.
    assert world.PRESETS[f'{name}_shape'] == dataclasses.replace(world.PRESETS[name], class_cue='shape')
    assert default_world_dir(name) != default_world_dir(f'{name}_shape')  # Each preset caches its own world.
  with pytest.raises(ValueError, match='class_cue'):
    dataclasses.replace(world.PRESETS['tiny'], class_cue='hue')


def test_shape_world_renders_every_labelled_part_with_its_cue(tmp_path, monkeypatch):
  from mtssl_tf.data.synthetic import classification, depth, detection, scenes

  cues = {}
  for module in (classification, detection, depth):

    def recorded(*args, _name=module.__name__, **kwargs):
      cues.setdefault(_name, set()).add(kwargs.get('class_cue', 'colour'))
      return scenes.render_scene(*args, **kwargs)

    monkeypatch.setattr(module, 'render_scene', recorded)
  manifest = world.make_world(str(tmp_path), 'tiny_shape')
  assert manifest['class_cue'] == 'shape' and manifest['sizes']['class_cue'] == 'shape'
  assert set(cues) == {classification.__name__, detection.__name__, depth.__name__}
  assert all(used == {'shape'} for used in cues.values()), cues
  train = list(images.image_dataset(manifest['sources']['images_train']).as_numpy_iterator())
  assert len(train) == world.PRESETS['tiny_shape'].train_images


def test_another_preset_in_the_same_folder_rewrites_the_world(tmp_path):
  root = str(tmp_path)
  world.make_world(root, 'tiny')
  # Everything the parts wrote is in the folders a rewrite removes.
  assert set(os.listdir(root)) <= set(world._PART_FOLDERS) | {world.MANIFEST, '.lock'}
  # A manifest from before class cues existed still describes (and reuses) its colour world.
  path = tmp_path / world.MANIFEST
  old = json.loads(path.read_text())
  del old['class_cue']
  path.write_text(json.dumps(old))
  stamp = os.path.getmtime(path)
  assert world.make_world(root, 'tiny')['class_cue'] == 'colour' and os.path.getmtime(path) == stamp
  # A shard left by a world with other shard counts would match the new world's glob: it is removed.
  stale = tmp_path / 'images' / 'train-00000-of-00099'
  stale.write_bytes(b'')
  manifest = world.make_world(root, 'tiny_shape')
  assert manifest['preset'] == 'tiny_shape' and manifest['class_cue'] == 'shape' and not stale.exists()
  train = list(images.image_dataset(manifest['sources']['images_train']).as_numpy_iterator())
  assert len(train) == world.PRESETS['tiny_shape'].train_images
