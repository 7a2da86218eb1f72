"""`train.closures_per_worker`: with 1, a worker's next step starts after its last update was applied."""

import json
import os

import pytest

from mtssl_tf.configs import override, validate_all
from mtssl_tf.train.experiment import ExperimentConfig

STEPS = 8
PACE = 0.2  # Seconds per step at least: the coordinator's round trip ends well inside one step.


def _config(world_dir, closures_per_worker):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},
    'tasks': {'relative_position': dict(enabled=True, batch_size=2, patch_size=16, gap=4, jitter=1, min_area=4096,
                                        max_area=4096, min_downsample=4, hidden_units=16)},
    'train': dict(total_steps=STEPS, world_preset='tiny', world_dir=world_dir, closures_per_worker=closures_per_worker,
                  cost_tick=1e6, export=False),
  })  # fmt: skip
  validate_all(cfg)
  return cfg


@pytest.mark.parametrize('closures_per_worker', [1, 2])
def test_one_closure_per_worker_reads_the_last_update(closures_per_worker, paced_train, tmp_path):
  run = tmp_path / 'run'
  cfg = _config(str(tmp_path / 'world'), closures_per_worker)
  result, taken = paced_train(cfg, run, {'relative_position': PACE})
  with open(os.path.join(run, 'taken.json.updates'), encoding='utf-8') as f:
    applied = json.load(f)
  assert result['relative_position']['updates'] == len(applied) == len(taken) == STEPS  # K_t = 1, one worker.
  # Step i + 1 began (worker clock) after update i had been applied (coordinator clock; one host, one clock).
  fresh = [taken[i + 1]['start'] > applied[i]['end'] for i in range(STEPS - 1)]
  if closures_per_worker == 1:
    assert all(fresh), fresh
  else:
    # Two in flight: the next step was queued on the worker and began while the coordinator fetched and applied.
    assert not all(fresh), fresh


def test_closures_per_worker_must_be_positive():
  cfg = ExperimentConfig()
  cfg.train.closures_per_worker = 0
  with pytest.raises(Exception, match='train.closures_per_worker: must be >= 1, got 0'):
    validate_all(cfg)
