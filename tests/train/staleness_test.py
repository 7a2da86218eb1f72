"""Fresh gradients in 'hybrid' mode: a task's workers wait for its update (§4; admission.py, closures_per_worker)."""

import json
import os

import pytest
from tiny_configs import TINY_TRUNK, tiny_relative_position

from mtssl_tf.configs import override, validate_all
from mtssl_tf.train.experiment import ExperimentConfig

STEPS = 8
PACE = 0.2  # Seconds per step at least: the coordinator's round trip ends well inside one step.


def _config(world_dir, workers=1, aggregate_steps=1, **train):
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': TINY_TRUNK,
    'runtime': {'precision': 'float32'},
    'tasks': {'relative_position': tiny_relative_position(workers=workers, aggregate_steps=aggregate_steps)},
    'train': dict(total_steps=STEPS, world_preset='tiny', world_dir=world_dir, cost_tick=1e6, export=False, **train),
  })  # fmt: skip
  validate_all(cfg)
  return cfg


def _applied(run):
  with open(os.path.join(run, 'taken.json.updates'), encoding='utf-8') as f:
    return json.load(f)


@pytest.mark.scenario
@pytest.mark.parametrize('closures_per_worker', [1, 2])
def test_without_waiting_one_closure_per_worker_reads_the_last_update(closures_per_worker, paced_train, tmp_path):
  run = tmp_path / 'run'
  cfg = _config(str(tmp_path / 'world'), closures_per_worker=closures_per_worker, wait_for_update=False)
  result, taken = paced_train(cfg, run, {'relative_position': PACE})
  applied = _applied(run)
  assert result['relative_position']['updates'] == len(applied) == len(taken) == STEPS  # K_t = 1, one worker.
  assert result['relative_position']['stale_steps'] is None and {t['epoch'] for t in taken} == {-1}
  # Step i + 1 began (worker clock) after update i had been applied (coordinator clock; one host, one clock).
  fresh = [taken[i + 1]['start'] > applied[i]['end'] for i in range(STEPS - 1)]
  if closures_per_worker == 1:
    assert all(fresh), fresh
  else:
    # Two in flight: the next step was queued on the worker and began while the coordinator fetched and applied.
    assert not all(fresh), fresh


@pytest.mark.scenario
def test_a_queued_step_waits_for_the_update(paced_train, tmp_path):
  # Two closures per worker, the second queued on the worker: it waits there for the update of the first.
  run = tmp_path / 'run'
  result, taken = paced_train(_config(str(tmp_path / 'world'), closures_per_worker=2), run, {'relative_position': PACE})
  assert [t['epoch'] for t in taken] == list(range(STEPS))  # Step i read the weights of update i, exactly.
  assert result['relative_position']['stale_steps'] == 0
  assert result['relative_position']['updates'] == STEPS


@pytest.mark.scenario
def test_more_workers_than_places_wait_for_their_tasks_update(paced_train, tmp_path):
  # Three workers, K_t = 2: each update takes two steps, so one worker waits every round (§4: "applies the
  # accumulated update while all workers wait"). Without waiting, the third step of the first round would
  # read the initial weights and land in the second update, one update old.
  run = tmp_path / 'run'
  cfg = _config(str(tmp_path / 'world'), workers=3, aggregate_steps=2)
  result, taken = paced_train(cfg, run, {'relative_position': PACE})
  rp = result['relative_position']
  assert rp['updates'] == len(_applied(run)) == STEPS // 2 and rp['steps'] == STEPS
  # Taken in finishing order: update u's two steps were admitted in epoch u, i.e. read the weights of update u.
  assert [t['epoch'] for t in taken] == [u for u in range(STEPS // 2) for _ in range(2)]
  assert rp['stale_steps'] == 0
  # Someone waited in every round after the first (three workers, two places), and no wait timed out.
  assert sum(t['waited'] > PACE / 2 for t in taken) >= STEPS // 2 - 1
  assert max(t['waited'] for t in taken) < cfg.train.wait_timeout_seconds


def test_closures_per_worker_and_wait_timeout_must_be_positive():
  cfg = ExperimentConfig()
  cfg.train.closures_per_worker = 0
  with pytest.raises(Exception, match='train.closures_per_worker: must be >= 1, got 0'):
    validate_all(cfg)
  cfg = ExperimentConfig()
  cfg.train.wait_timeout_seconds = 0
  with pytest.raises(Exception, match='train.wait_timeout_seconds: must be positive, got 0'):
    validate_all(cfg)
