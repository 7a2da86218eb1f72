"""The task registry's input convention: which runs' trunks read harmonized input at evaluation."""

import pytest

from mtssl_tf.configs import override
from mtssl_tf.tasks import build_tasks, input_convention
from mtssl_tf.train.experiment import ExperimentConfig


@pytest.mark.parametrize(
  'tasks, expected',
  [
    ({}, 'rgb'),
    ({'relative_position': {'enabled': True}}, 'rgb'),
    ({'relative_position': {'enabled': True, 'harmonize': True}}, 'harmonized'),
    # Colorization always feeds L replicated, whatever its own `harmonize` says.
    ({'colorization': {'enabled': True}}, 'harmonized'),
    ({'relative_position': {'enabled': True, 'harmonize': True}, 'colorization': {'enabled': True}}, 'harmonized'),
    ({'relative_position': {'enabled': True}, 'colorization': {'enabled': True}}, 'rgb'),
    ({'relative_position': {'enabled': False}, 'colorization': {'enabled': True}}, 'harmonized'),
    ({'no_such_task': {'enabled': True}}, 'rgb'),
  ],
)
def test_input_convention_of_a_run(tasks, expected):
  assert input_convention(tasks) == expected


def test_input_convention_agrees_with_the_built_tasks():
  # The config-only rule and the tasks' own `harmonized_input` (what export uses) agree.
  for harmonize in (False, True):
    cfg = ExperimentConfig()
    section = {'relative_position': {'enabled': True, 'harmonize': harmonize}, 'colorization': {'enabled': True}}
    override(cfg, {'tasks': section})
    tasks = build_tasks(cfg.tasks, 16)
    built = 'harmonized' if all(t.harmonized_input for t in tasks.values()) else 'rgb'
    assert input_convention(section) == built
