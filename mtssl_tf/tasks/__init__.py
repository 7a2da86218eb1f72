"""Self-supervised tasks. `TASKS` is the explicit registry: name -> Task class."""

from mtssl_tf.tasks.exemplar import ExemplarTask
from mtssl_tf.tasks.relative_position import RelativePositionTask

TASKS = {
  RelativePositionTask.name: RelativePositionTask,
  ExemplarTask.name: ExemplarTask,
}
