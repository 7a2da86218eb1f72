"""Self-supervised tasks: the explicit registry and the config holding one entry per task.

Adding a task: its module (config class, preprocessing, head, loss, metrics), its test and
an entry in `TASKS`. `TasksConfig` is derived from `TASKS` (a field per task, named by the
task and typed by its `config_class`), so the two cannot disagree. Trainers only use
`build_tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Type

from mtssl_tf.configs.base import Config
from mtssl_tf.tasks.base import Task, TaskConfig
from mtssl_tf.tasks.colorization import ColorizationTask
from mtssl_tf.tasks.exemplar import ExemplarTask
from mtssl_tf.tasks.jigsaw import JigsawTask
from mtssl_tf.tasks.motion_segmentation import MotionSegmentationTask
from mtssl_tf.tasks.relative_position import RelativePositionTask

TASKS = {
  RelativePositionTask.name: RelativePositionTask,
  ColorizationTask.name: ColorizationTask,
  ExemplarTask.name: ExemplarTask,
  MotionSegmentationTask.name: MotionSegmentationTask,
  JigsawTask.name: JigsawTask,
}


def check_registry(tasks: Dict[str, Type[Task]]) -> None:
  """Each entry is keyed by its task's `name` and names a `TaskConfig` subclass as `config_class`.

  Raises:
    TypeError: naming the task whose entry is wrong.
  """
  for key, cls in tasks.items():
    if getattr(cls, 'name', None) != key:
      raise TypeError(f'TASKS[{key!r}]: {cls.__name__}.name is {getattr(cls, "name", None)!r}, not {key!r}')
    config_class = getattr(cls, 'config_class', None)
    if not (isinstance(config_class, type) and issubclass(config_class, TaskConfig)):
      raise TypeError(
        f'TASKS[{key!r}]: {cls.__name__}.config_class must be a TaskConfig subclass, got {config_class!r}'
      )
    if not isinstance(getattr(cls, 'WORLD_SOURCE', None), str):
      raise TypeError(f'TASKS[{key!r}]: {cls.__name__}.WORLD_SOURCE must name a synthetic-world source')


def tasks_config_class(tasks: Dict[str, Type[Task]]) -> Type[Config]:
  """The config with one field per registered task: its name, typed by its `config_class`, in registry order."""
  check_registry(tasks)
  fields = [
    (name, cls.config_class, dataclasses.field(default_factory=cls.config_class)) for name, cls in tasks.items()
  ]
  return dataclasses.make_dataclass(
    'TasksConfig',
    fields,
    bases=(Config,),
    namespace={
      '__module__': __name__,
      '__doc__': 'One config per registered task (`TASKS`); `enabled` selects the tasks a run trains.',
    },
  )


TasksConfig = tasks_config_class(TASKS)


def build_tasks(tasks_config: Config, trunk_output_stride: int) -> Dict[str, Task]:
  """The enabled tasks, in registry order (which fixes their lasso rows), from a `TasksConfig`."""
  return {
    name: cls(getattr(tasks_config, name), trunk_output_stride)
    for name, cls in TASKS.items()
    if getattr(tasks_config, name).enabled
  }


def input_convention(tasks_section: Dict[str, Any]) -> str:
  """'harmonized' if every enabled task of a run fed the trunk colorization's input, else 'rgb'.

  Args:
    tasks_section: a run's `tasks` section as plain data (its config.yaml). The same rule
      as `Task.harmonized_input`, without building the tasks: colorization always
      harmonizes, the others when their `harmonize` is set. A run without enabled tasks
      (or unknown ones) is 'rgb'.
  """
  enabled = {n: t for n, t in tasks_section.items() if isinstance(t, dict) and t.get('enabled')}
  if not enabled or not set(enabled) <= set(TASKS):
    return 'rgb'
  harmonized = all(TASKS[n].ALWAYS_HARMONIZED or bool(t.get('harmonize')) for n, t in enabled.items())
  return 'harmonized' if harmonized else 'rgb'
