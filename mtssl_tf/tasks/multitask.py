"""The multi-task model: one trunk, a head per task, optional lasso mixing.

`MultiTaskModel.task_step_outputs(name, batch)` runs one task end to end (trunk at
the task's output stride, lasso mix or final features, head, loss + the task's lasso
penalty); `compute_gradients` wraps it in a tape. Only one head is active per step,
as in Doersch & Zisserman §3.1; summing gradients over steps of different tasks
optimises the sum of the task losses.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import tensorflow as tf

from mtssl_tf import hardware
from mtssl_tf.configs.experiment import LassoConfig, TrunkConfig
from mtssl_tf.tasks.base import Task
from mtssl_tf.trunk import lasso as lasso_lib
from mtssl_tf.trunk import registry
from mtssl_tf.trunk.lasso import LassoMix
from mtssl_tf.trunk.registry import build_trunk


class MultiTaskModel(tf.keras.Model):
  """Trunk + heads (+ lasso). Variables are created by `build_all`."""

  def __init__(
    self,
    trunk_config: TrunkConfig,
    tasks: Mapping[str, Task],
    lasso_config: LassoConfig,
    precision: str = 'float32',
    **kwargs,
  ):
    """Creates the model.

    Args:
      trunk_config: the shared trunk (any `TrunkConfig.kind`, built by `mtssl_tf.trunk.registry`).
      tasks: task name -> Task, in a fixed order (the lasso rows follow it).
      lasso_config: whether heads read a lasso mix of block-3 units.
      precision: Keras dtype policy for trunk and heads; 'auto' is resolved for this machine
        (`mtssl_tf.hardware.resolve_precision`).
      **kwargs: passed to tf.keras.Model.
    """
    super().__init__(**kwargs)
    precision = hardware.resolve_precision(precision)
    self.trunk_config = trunk_config
    self.tasks = dict(tasks)
    self.task_names: List[str] = list(tasks)
    # Object path `model/trunk` whatever the kind, so checkpoints of ResNet-v2 runs restore unchanged.
    self.trunk = build_trunk(trunk_config, precision)
    self.heads = {name: task.build_head(dtype=precision) for name, task in self.tasks.items()}
    self.lasso = None
    self.lasso_norms = {}
    self.mix_norm = lasso_config.mix_norm
    if lasso_config.enabled:
      if not self.trunk.supports_lasso:  # `ExperimentConfig.validate` says so first for configs.
        raise ValueError(f'lasso.enabled: mixes ResNet-v2 block-3 units; trunk.kind {trunk_config.kind!r} has none')
      self.lasso = LassoMix(
        len(tasks), trunk_config.units_per_block[2], lasso_config.l1_weight, lasso_config.init,
        consumer_names=self.task_names, name='lasso',
      )  # fmt: skip
      if self.mix_norm == 'per_consumer':  # Else the mix goes through the trunk's own closing BN (lasso.py).
        self.lasso_norms = {
          name: lasso_lib.consumer_norm(self.mix_norm, f'{name}_lasso_bn', precision) for name in tasks
        }

  def trunk_endpoints(self, images: tf.Tensor, training: bool, output_stride: Optional[int] = None):
    """The trunk's endpoints; without `final` when lasso mixes go through its closing BatchNorm instead."""
    final = self.lasso is None or self.mix_norm == 'per_consumer'
    return self.trunk(images, training=training, output_stride=output_stride, final=final)

  def mix_features(self, name: str, endpoints: Mapping[str, tf.Tensor], training: bool) -> tf.Tensor:
    """What task `name`'s head reads from its lasso mix of the block-3 units in `endpoints`."""
    mixed = self.lasso(self.trunk.block3_units(endpoints), consumer=name)
    return lasso_lib.head_input(mixed, self.lasso_norms.get(name), self.trunk, training)

  def features(self, name: str, images: tf.Tensor, training: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """Trunk features for task `name` and its lasso penalty (0 without lasso)."""
    endpoints = self.trunk_endpoints(images, training, self.tasks[name].output_stride)
    if self.lasso is None:
      return endpoints['final'], tf.constant(0.0)
    return self.mix_features(name, endpoints, training), self.lasso.penalty(name)

  def task_step_outputs(self, name: str, batch: Dict[str, tf.Tensor], training: bool = True):
    """Runs task `name` on a batch.

    Returns:
      (total loss = task loss + lasso penalty, task loss, head outputs).
    """
    task = self.tasks[name]
    features, penalty = self.features(name, task.trunk_images(batch), training)
    outputs = self.heads[name](features, training=training)
    task_loss = task.loss(outputs, batch)
    return task_loss + penalty, task_loss, outputs

  def task_variables(self, name: str) -> List[tf.Variable]:
    """Trainable variables a step of task `name` updates: trunk, its head, lasso."""
    variables = list(self.trunk.trainable_variables) + list(self.heads[name].trainable_variables)
    if self.lasso is not None:
      variables += list(self.lasso.trainable_variables)
      if name in self.lasso_norms:
        variables += list(self.lasso_norms[name].trainable_variables)
    return variables

  def compute_gradients(self, name: str, batch: Dict[str, tf.Tensor], sources: Optional[List[tf.Tensor]] = None):
    """One task's loss and gradients on one batch.

    Args:
      name: the task.
      batch: its batch.
      sources: tensors the forward pass reads in place of `task_variables(name)`, one
        per variable (a weight snapshot, `mtssl_tf.train.snapshot`); gradients are
        taken with respect to them. None: with respect to the variables.

    Returns:
      (total loss, task loss, outputs, gradients, variables), gradients aligned with variables.
    """
    variables = self.task_variables(name)
    with tf.GradientTape() as tape:
      if sources is not None:
        tape.watch(sources)
      total, task_loss, outputs = self.task_step_outputs(name, batch, training=True)
    grads = tape.gradient(total, variables if sources is None else sources)
    return total, task_loss, outputs, grads, variables

  def build_shared(self, image_size: int = 64) -> None:
    """Creates the trunk's and lasso's variables (not the heads') from a blank image: no task data is read.

    Enough to restore and export the trunk (`mtssl_tf.train.launch.export_latest`); a
    restore creates the heads' variables later, if they are ever built.
    """
    size = max(image_size, registry.min_input_size(self.trunk_config))  # AlexNet / VGG16: their layers' minimum.
    images = tf.zeros([1, size, size, 3])
    for name in self.task_names if self.lasso is not None else self.task_names[:1]:
      self.features(name, images, training=False)

  def build_all(self, batches: Mapping[str, Dict[str, tf.Tensor]]) -> Dict[str, object]:
    """Creates every variable by running each task once in inference mode; returns each task's head outputs."""
    return {name: self.task_step_outputs(name, batch, training=False)[2] for name, batch in batches.items()}

  def call(self, inputs, training=None):
    """Runs the trunk only: {'image': [N, H, W, 3]} -> endpoints (for export and probes)."""
    images = inputs['image'] if isinstance(inputs, dict) else inputs
    return self.trunk(images, training=training)
