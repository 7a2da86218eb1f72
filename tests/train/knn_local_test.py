"""The kNN monitor on by default, in the local trainer, compiled once, and in the background (no cluster)."""

import glob
import json
import os

import pytest
import tensorflow as tf

from mtssl_tf.configs import LassoConfig, load_config, override, validate_all
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import TasksConfig, build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import knn
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.train.local import LocalTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(bank_size=24, query_size=12, batch_size=8, k=[5, 20])


def _event_tags(folder):
  """tag -> steps, over every event file of a folder."""
  tags = {}
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_the_monitor_is_on_by_default():
  cfg = ExperimentConfig()
  validate_all(cfg)
  assert cfg.knn.enabled and cfg.knn.background and cfg.knn.every_ticks == 1
  demo = load_config(ExperimentConfig, [os.path.join(ROOT, 'mtssl_tf', 'configs', 'local_demo.yaml')])
  assert demo.knn.enabled


def test_a_run_without_a_world_and_without_sources_has_no_monitor(tmp_path):
  cfg = ExperimentConfig()
  for field in ('relative_position', 'colorization', 'exemplar', 'jigsaw', 'motion_segmentation'):
    getattr(cfg.tasks, field).data.source = 'tfrecord:/nonexistent/*'
  assert knn.monitor_for_run(cfg, str(tmp_path)) is None
  cfg.knn.enabled = False
  assert knn.monitor_for_run(cfg, str(tmp_path)) is None


def test_a_run_that_reaches_a_tick_decodes_the_images_at_start(tmp_path, tiny_world):
  cfg = ExperimentConfig()
  sources = tiny_world['sources']
  override(cfg, {
    'knn': dict(SMALL, bank_source=sources['images_train'], query_source=sources['images_validation']),
    'tasks': {'relative_position': {'enabled': True}},
    'train': {'total_steps': 8},
  })  # fmt: skip
  cfg.train.cost_tick = 100.0  # 8 steps of cost 1 reach no tick: nothing starts.
  assert knn.monitor_for_run(cfg, str(tmp_path / 'a'))._thread is None
  cfg.train.cost_tick = 4.0
  monitor = knn.monitor_for_run(cfg, str(tmp_path / 'b'))
  monitor.close()  # Waits for the thread, which decoded the images before any tick.
  assert monitor.data is not None and len(monitor.data[0]) == 36 and knn.read_ticks(str(tmp_path / 'b')) == []


def _local_run(tiny_world, tiny_trunk, tmp_path, steps):
  tasks_cfg = TasksConfig()
  override(tasks_cfg, {
    'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                              max_area=4096, min_downsample=4, hidden_units=16),
  })  # fmt: skip
  tasks = build_tasks(tasks_cfg, 16)
  cfg = ExperimentConfig()
  override(cfg, {'knn': SMALL, 'train': {'cost_tick': 2.0}})
  cfg.trunk = tiny_trunk
  validate_all(cfg)
  source = tiny_world['sources']['images_train']
  datasets = {n: t.dataset(ReadOptions(), source, seed=0) for n, t in tasks.items()}
  summary_dir = str(tmp_path / 'train')
  monitor = knn.local_monitor(cfg, summary_dir, tiny_world['sources'])
  trainer = LocalTrainer(MultiTaskModel(tiny_trunk, tasks, LassoConfig()), datasets, cfg.train, summary_dir, monitor)
  trainer.run(steps=steps, log_every=2)
  return monitor, summary_dir


def test_local_trainer_writes_knn_scalars_and_compiles_features_once(tiny_world, tiny_trunk, tmp_path):
  # Cost 1 per step (the task's default), a tick every 2: ticks at steps 2, 4 and 6.
  monitor, summary_dir = _local_run(tiny_world, tiny_trunk, tmp_path, steps=6)
  tags = _event_tags(summary_dir)
  for tag in ('knn/top1_k5', 'knn/top5_k5', 'knn/top1_k20', 'knn/top5_k20', 'knn/seconds'):
    assert tags[tag] == [2, 4, 6], tag
  assert 'relative_position/loss' in tags  # The trainer's own scalars, beside the monitor's.
  with open(os.path.join(summary_dir, 'ticks.jsonl'), encoding='utf-8') as f:
    ticks = [json.loads(line) for line in f]
  assert [t['tick'] for t in ticks] == [1, 2, 3] and all(0 <= t['top1_k20'] <= 1 for t in ticks)
  # Three evaluations of the live trunk, one trace of the feature function (fixed batch shape;
  # 36 images in batches of 8: the last batch is padded, not traced anew).
  assert monitor.traces == 1


def _checkpoint(tmp_path, trunk_config, name):
  model = MultiTaskModel(trunk_config, {}, LassoConfig())
  model.trunk(tf.zeros([1, 64, 64, 3]))
  return tf.train.Checkpoint(model=model).save(os.path.join(str(tmp_path), name, 'tick'))


def test_background_monitor_evaluates_the_newest_tick_and_reports_errors(tmp_path, tiny_trunk, tiny_world):
  checkpoints = [_checkpoint(tmp_path, tiny_trunk, f'c{i}') for i in range(3)]
  cfg = knn.KnnMonitorConfig(**{**SMALL, 'k': (5, 20)})
  validate_all(cfg)
  bank, query = knn.resolve_sources(cfg, tiny_world['sources'])
  out = str(tmp_path / 'run' / 'knn')
  monitor = knn.KnnMonitor(cfg, tiny_trunk, out, bank, query, background=True)
  for tick, path in enumerate(checkpoints, 1):
    assert monitor.on_tick(path, 10 * tick, tick, float(tick)) is None  # Queued: the trainer goes on.
  monitor.close()
  ticks = knn.read_ticks(str(tmp_path / 'run'))
  # Ticks queued while another ran are replaced by the newer one; the last one is always evaluated.
  assert ticks[-1]['tick'] == 3 and len(ticks) + monitor.superseded == 3
  assert ticks[-1]['checkpoint'] == checkpoints[-1] and monitor.traces == 1
  assert _event_tags(out)['knn/top1_k20'] == [t['step'] for t in ticks]

  broken = knn.KnnMonitor(cfg, tiny_trunk, str(tmp_path / 'broken'), bank, query, background=True)
  broken.on_tick(str(tmp_path / 'missing' / 'tick-1'), 10, 1, 1.0)
  with pytest.raises(Exception, match='missing'):
    broken.close()
