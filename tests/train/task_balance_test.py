"""Tasks of unequal cost do not wait for each other (Doersch & Zisserman 2017, §4; issue 14, item 4).

Step costs come from sleeps inside the worker step (fixture `paced_train`,
tests/train/conftest.py): they use
no CPU, so the paces hold on a busy 2-core machine, where a computed cost would depend
on what else runs.
"""

import numpy as np
import pytest

from mtssl_tf.configs import override, validate_all
from mtssl_tf.train.experiment import ExperimentConfig

# Seconds per step. The fast task's pace is several times its tiny-trunk compute (0.04-0.08 s
# a step measured, more when the other test worker is busy), so its speed is the pace; the
# slow task's is 5x (colorization at stride 8 is ~10x relative position at paper scale).
# At 0.15 s the compute was a quarter of a step and the other test worker's load alone moved
# the ratio below 0.85 once in CI (0.83); at 0.3 s it is at most a sixth.
FAST, SLOW = 0.3, 1.5


def _run(train, root, name, paces, total_steps, order='finished'):
  cfg = ExperimentConfig()
  tasks = {
    'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                              max_area=4096, min_downsample=4, hidden_units=16, aggregate_steps=2),
    'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16),
  }  # fmt: skip
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {n: c for n, c in tasks.items() if n in paces},
    'train': dict(mode='hybrid', total_steps=total_steps, world_preset='tiny', world_dir=str(root / 'world'),
                  log_every_seconds=5.0, checkpoint_every_seconds=1e6, cost_tick=1e6),
  })  # fmt: skip
  validate_all(cfg)
  return train(cfg, root / name, paces, order)


def _rate(ends, lo=-np.inf, hi=np.inf):
  """Closures per second between the first and last end time in [lo, hi]."""
  ends = np.sort([e for e in ends if lo <= e <= hi])
  return (len(ends) - 1) / (ends[-1] - ends[0])


def _together(train, root, name):
  """One run of both tasks (one worker each, exemplar 5x slower per step): the fast task's rate while both run."""
  result, taken = _run(train, root, name, {'relative_position': FAST, 'exemplar': SLOW}, total_steps=60)
  steps = {n: r['steps'] for n, r in result.items()}
  assert sum(steps.values()) == 60  # The exact total_steps ending.
  assert result['relative_position']['updates'] == -(-steps['relative_position'] // 2)  # K = 2, last one partial.
  assert result['exemplar']['updates'] == steps['exemplar']  # K = 1.
  # No result waited behind another closure: each was taken as soon as it finished.
  assert not any(c['held'] for c in taken)
  # The fast task's rate while the slow task runs (its third closure's end to its last one's).
  slow = sorted(c['end'] for c in taken if c['task'] == 1)
  assert len(slow) >= 6
  return _rate([c['end'] for c in taken if c['task'] == 0], slow[2], slow[-1])


@pytest.mark.scenario
def test_fast_task_keeps_its_own_speed_beside_a_5x_slower_task(paced_train, tmp_path):
  # Alone: relative position on its one worker. Rates leave out the start (the worker
  # instantiating the step, the coordinator tracing each task's first update).
  _, alone = _run(paced_train, tmp_path, 'alone', {'relative_position': FAST}, total_steps=30)
  alone_rate = _rate([c['end'] for c in alone[3:]])
  # Together, the fast task keeps its own speed: at least 85% of its rate alone. Taking closures in schedule
  # order (measured with 2 per worker in flight) left it at most 3 steps per slow step: 0.70 of its rate alone;
  # as they finish, 0.95-0.99 (2-core Xeon, the other test worker busy, both dependency lines). No upper
  # bound: on a loaded machine the alone run's compute can exceed the pace (measured 1.28x once), which says
  # nothing about waiting.
  # One more together run if the first falls short: what else runs on the machine only slows a run (CI once
  # measured 0.82, the fast task's closures 0.1 s apart more than alone with every closure taken as it
  # finished, while the other test worker ran a multi-process test), and a run where tasks wait on each other
  # falls short every time (0.70), so a second run tells the machine's load from a regression.
  ratios = []
  for attempt in range(2):
    ratios.append(_together(paced_train, tmp_path, f'both{attempt}') / alone_rate)
    if ratios[-1] >= 0.85:
      break
  assert ratios[-1] >= 0.85, ratios
  print('fast task together / alone:', ', '.join(f'{r:.3f}' for r in ratios))
