r"""FLOPs per example of each task's trunk + head pass, and parameter counts, for the GPU plan.

Counts with TensorFlow's graph profiler (`tf.compat.v1.profiler`, float_operation: a
multiply-add is 2 FLOPs; convolutions, matmuls and elementwise ops of known shape) on
the forward pass of one example at the config's input sizes and output strides; a
training step is taken as 3x the forward pass (backward = 2x forward, the usual
estimate). Parameters are counted from the built variables (trainable and batch-norm
statistics separately). No data is read and nothing is trained.

It then projects (a projection, not a measurement) each task's step time on a GPU of
each of `--gpus` at `--utilisation` of its peak, and the parameter-server traffic of the
config's workers per task in both accumulation modes: `parameter_server` moves the
weights (trunk + the task's head, float32) from and the gradients to the parameter
servers every step, `worker` once per closure of `aggregate_steps` steps. Parameter
servers needed = total traffic / (`--nic_gbit` x `--nic_efficiency`), traffic split
evenly over them (variables sharded by size):

    .venv/bin/python benchmarks/flops.py --config=configs/train/rp_col_ex_ms.yaml --tasks=jigsaw
    .venv/bin/python benchmarks/flops.py --config=configs/train/rp_col_ex_ms.yaml --gpus=H100-bf16:989 \
      --override=tasks.relative_position.aggregate_steps=64
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mtssl_tf.bin.flags import config_from_flags, define_config_flags  # noqa: E402
from mtssl_tf.configs import override  # noqa: E402
from mtssl_tf.tasks import build_tasks  # noqa: E402
from mtssl_tf.tasks.multitask import MultiTaskModel  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402

define_config_flags()
flags.DEFINE_list('tasks', [], 'Tasks to enable on top of the config (e.g. jigsaw, with its defaults).')
flags.DEFINE_list(
  'gpus',
  ['A100-bf16:312', 'A100-tf32:156', 'H100-bf16:989'],
  'name:dense peak TFLOP/s of each GPU to project for (NVIDIA data sheets, without sparsity).',
)
flags.DEFINE_float('utilisation', 0.35, 'Fraction of the peak a training step reaches (an assumption).')
flags.DEFINE_float('nic_gbit', 25.0, 'Network bandwidth of one parameter server, Gbit/s each way.')
flags.DEFINE_float('nic_efficiency', 0.8, 'Fraction of the NIC bandwidth gRPC transfers reach (an assumption).')
FLAGS = flags.FLAGS


def trunk_image_shape(task) -> tuple:
  """(images per example, side) the task sends through the trunk."""
  c = task.config
  for key, per_example in (('tile_size', 9), ('patch_size', None), ('crop_size', 1)):
    if hasattr(c, key) and not (key == 'crop_size' and hasattr(c, 'tile_size')):
      count = per_example or (c.num_views if hasattr(c, 'num_views') else 2)
      return count, getattr(c, key)
  raise ValueError(f'{task.name}: no known input size')


def forward_flops(fn, spec: tf.TensorSpec) -> int:
  """Float operations of one call of `fn` on an input of `spec` (TF graph profiler)."""
  graph = tf.function(fn).get_concrete_function(spec).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def count(variables) -> int:
  return int(sum(np.prod(v.shape) for v in variables))


def main(argv):
  del argv
  cfg = config_from_flags(ExperimentConfig, FLAGS)
  for name in FLAGS.tasks:
    override(cfg, {'tasks': {name: {'enabled': True}}})
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride)
  print(f'trunk: units {list(cfg.trunk.units_per_block)}, width {cfg.trunk.width}')
  print(f'{"task":<22}{"batch":>6}{"input":>12}{"stride":>7}{"trunk GF/ex":>13}{"head GF/ex":>12}'
        f'{"train TF/step":>15}{"head params":>13}')  # fmt: skip
  rows = []
  for name, task in tasks.items():
    model = MultiTaskModel(cfg.trunk, {name: task}, cfg.lasso, precision='float32')
    images, side = trunk_image_shape(task)
    spec = tf.TensorSpec([images, side, side, 3], tf.float32)
    stride = task.output_stride

    def trunk_only(x, model=model, stride=stride):
      return model.trunk_endpoints(x, training=False, output_stride=stride)['final']

    def trunk_and_head(x, model=model, stride=stride, name=name):
      return model.heads[name](trunk_only(x, model, stride), training=False)

    trunk_flops = forward_flops(trunk_only, spec)
    total_flops = forward_flops(trunk_and_head, spec)
    model.heads[name](trunk_only(tf.zeros(spec.shape)), training=False)  # Creates the variables.
    trunk_params = count(model.trunk.trainable_variables)
    trunk_stats = count(model.trunk.non_trainable_variables)
    head_params = count(model.heads[name].trainable_variables)
    step = 3 * total_flops * task.config.batch_size / 1e12
    rows.append((name, task, step, trunk_params + head_params))
    print(f'{name:<22}{task.config.batch_size:>6}{f"{images}x{side}px":>12}{stride:>7}{trunk_flops / 1e9:>13.2f}'
          f'{(total_flops - trunk_flops) / 1e9:>12.2f}{step:>15.3f}{head_params / 1e6:>12.1f}M')  # fmt: skip
  print(f'trunk: {trunk_params / 1e6:.2f}M trainable parameters, {trunk_stats / 1e6:.2f}M batch-norm statistics')
  for gpu in FLAGS.gpus:
    name, peak = gpu.rsplit(':', 1)
    project(rows, name, float(peak))


def project(rows, gpu: str, peak: float) -> None:
  """Prints the projected step times and parameter-server traffic (see the module docstring)."""
  speed = peak * FLAGS.utilisation
  nic = FLAGS.nic_gbit / 8.0 * FLAGS.nic_efficiency  # GB/s per parameter server.
  print(f'\nPROJECTION for {gpu}: {peak:g} TFLOP/s peak at {FLAGS.utilisation:.0%} = {speed:.1f} TFLOP/s; '
        f'NICs {FLAGS.nic_gbit:g} Gbit/s x {FLAGS.nic_efficiency:.0%} = {nic:.2f} GB/s')  # fmt: skip
  print(f'{"task":<22}{"step ms":>8}{"ex/s/GPU":>10}{"MB/step ps":>11}{"MB/step wk":>11}{"workers":>8}'
        f'{"GB/s ps":>9}{"GB/s wk":>9}{"wk NIC ms/closure":>19}')  # fmt: skip
  totals = [0.0, 0.0]
  for name, task, step_tflop, params in rows:
    c = task.config
    seconds = step_tflop / speed
    moved = 2 * 4 * params / 1e6  # MB: float32 weights in, gradients out.
    per_step = (moved, moved / c.aggregate_steps)
    rates = [c.workers * m / 1e3 / seconds for m in per_step]  # GB/s at the parameter servers, compute-bound.
    totals = [t + r for t, r in zip(totals, rates)]
    # A worker's own NIC at the same speed moves one closure's weights and gradients in:
    closure_ms = moved / 1e3 / nic * 1e3
    print(f'{name:<22}{seconds * 1e3:>8.1f}{c.batch_size / seconds:>10.0f}{per_step[0]:>11.0f}{per_step[1]:>11.1f}'
          f'{c.workers:>8}{rates[0]:>9.1f}{rates[1]:>9.1f}{closure_ms:>19.0f}')  # fmt: skip
  for mode, total in zip(('parameter_server', 'worker'), totals):
    print(f'{mode}: {total:.1f} GB/s in total -> {total / nic:.0f} parameter servers to keep every GPU busy')


if __name__ == '__main__':
  app.run(main)
