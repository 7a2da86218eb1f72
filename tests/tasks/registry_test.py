"""The task registry: the input convention of a run, TasksConfig derived from TASKS, world sources."""

import dataclasses

import pytest

from mtssl_tf.configs import ConfigError, override
from mtssl_tf.tasks import TASKS, TasksConfig, build_tasks, check_registry, input_convention, tasks_config_class
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


def test_tasks_config_is_the_registry():
  # One field per registered task, in registry order, typed by the task's config_class.
  fields = dataclasses.fields(TasksConfig)
  assert [f.name for f in fields] == list(TASKS)
  config = TasksConfig()
  for name, cls in TASKS.items():
    assert type(getattr(config, name)) is cls.config_class
  with pytest.raises(ConfigError, match="unknown config key 'tasks.no_such_task'"):
    override(ExperimentConfig(), {'tasks': {'no_such_task': {'enabled': True}}})


def test_a_wrong_registry_entry_is_named():
  class Misnamed(TASKS['exemplar']):
    name = 'exemplar_v2'

  with pytest.raises(TypeError, match=r"TASKS\['exemplar'\]: Misnamed.name is 'exemplar_v2'"):
    check_registry({'exemplar': Misnamed})

  class NoConfig(TASKS['exemplar']):
    config_class = dict

  with pytest.raises(TypeError, match=r"TASKS\['exemplar'\]: NoConfig.config_class must be a TaskConfig subclass"):
    tasks_config_class({'exemplar': NoConfig})


def test_each_task_declares_its_world_source(tiny_world):
  sources = tiny_world['sources']
  assert TASKS['motion_segmentation'].world_source(sources) == sources['motion_segmentation_train']
  assert TASKS['relative_position'].world_source(sources) == sources['images_train']
  for cls in TASKS.values():
    assert cls.WORLD_SOURCE in sources, cls.name
  with pytest.raises(KeyError, match="motion_segmentation: the synthetic world has no 'motion_segmentation_train'"):
    TASKS['motion_segmentation'].world_source({'images_train': 'x'})
