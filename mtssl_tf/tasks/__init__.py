"""Self-supervised tasks: the explicit registry and the config holding one entry per task.

Adding a task: its module (config, preprocessing, head, loss, metrics), its test, an
entry in `TASKS` and a field in `TasksConfig`. Trainers only use `build_tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from mtssl_tf.configs.base import Config
from mtssl_tf.tasks.base import Task
from mtssl_tf.tasks.colorization import ColorizationConfig, ColorizationTask
from mtssl_tf.tasks.exemplar import ExemplarConfig, ExemplarTask
from mtssl_tf.tasks.jigsaw import JigsawConfig, JigsawTask
from mtssl_tf.tasks.motion_segmentation import MotionSegmentationConfig, MotionSegmentationTask
from mtssl_tf.tasks.relative_position import RelativePositionConfig, RelativePositionTask

TASKS = {
  RelativePositionTask.name: RelativePositionTask,
  ColorizationTask.name: ColorizationTask,
  ExemplarTask.name: ExemplarTask,
  MotionSegmentationTask.name: MotionSegmentationTask,
  JigsawTask.name: JigsawTask,
}


@dataclasses.dataclass
class TasksConfig(Config):
  """One config per task; `enabled` selects the tasks a run trains."""

  relative_position: RelativePositionConfig = dataclasses.field(default_factory=RelativePositionConfig)
  colorization: ColorizationConfig = dataclasses.field(default_factory=ColorizationConfig)
  exemplar: ExemplarConfig = dataclasses.field(default_factory=ExemplarConfig)
  motion_segmentation: MotionSegmentationConfig = dataclasses.field(default_factory=MotionSegmentationConfig)
  jigsaw: JigsawConfig = dataclasses.field(default_factory=JigsawConfig)


def build_tasks(tasks_config: TasksConfig, trunk_output_stride: int) -> Dict[str, Task]:
  """The enabled tasks, in registry order (which fixes their lasso rows)."""
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
