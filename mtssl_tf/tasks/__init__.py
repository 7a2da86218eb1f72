"""Self-supervised tasks: the explicit registry and the config holding one entry per task.

Adding a task: its module (config class, preprocessing, head, loss, metrics), its test and
an entry in `TASKS`. `TasksConfig` is derived from `TASKS` (a field per task, named by the
task and typed by its `config_class`), so the two cannot disagree. Trainers only use
`build_tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Type

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.configs.experiment import TrunkConfig
from mtssl_tf.tasks.base import Task, TaskConfig
from mtssl_tf.tasks.colorization import ColorizationTask
from mtssl_tf.tasks.exemplar import ExemplarTask
from mtssl_tf.tasks.jigsaw import JigsawTask
from mtssl_tf.tasks.motion_segmentation import MotionSegmentationTask
from mtssl_tf.tasks.relative_position import RelativePositionTask
from mtssl_tf.trunk import registry

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


def check_trunk(tasks_config: Config, trunk: TrunkConfig) -> None:
  """Every enabled task can train on `trunk` (`Task.trunk_problem`).

  Raises:
    ConfigError: naming the task and `trunk.kind`, and why.
  """
  for name, cls in TASKS.items():
    task_config = getattr(tasks_config, name)
    if not task_config.enabled:
      continue
    problem = cls.trunk_problem(task_config, trunk)
    if problem:
      raise ConfigError(f'tasks.{name}: cannot train on trunk.kind {trunk.kind!r}: {problem}')


def build_tasks(tasks_config: Config, trunk_output_stride: int, trunk: Optional[TrunkConfig] = None) -> Dict[str, Task]:
  """The enabled tasks, in registry order (which fixes their lasso rows), from a `TasksConfig`.

  Args:
    tasks_config: a `TasksConfig`.
    trunk_output_stride: the trunk's configured output stride (ResNet-v2's `trunk.output_stride`).
    trunk: the trunk the tasks run on: checked (`check_trunk`), and a fixed-stride trunk's own
      stride replaces `trunk_output_stride`. None: the default ResNet-v2, unchecked.

  Raises:
    ConfigError: an enabled task cannot train on `trunk`.
  """
  if trunk is not None:
    check_trunk(tasks_config, trunk)
    trunk_output_stride = registry.fixed_stride(trunk) or trunk_output_stride
  return {
    name: cls(getattr(tasks_config, name), trunk_output_stride, trunk)
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
