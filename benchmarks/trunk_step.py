"""Forward+backward throughput of our trunk vs Keras' ResNet101V2 cut at conv4_block23_out.

Both networks get the same input batch and the same loss; runs alternate between them
so machine noise hits both alike, and the result is reported as a ratio measured in
this run (ours / Keras, higher is better). Run on demand, never in tests:

    .venv/bin/python benchmarks/trunk_step.py                 # fp32 and mixed_bfloat16
    .venv/bin/python benchmarks/trunk_step.py --image_size=224 --batch_size=8 --rounds=5

Both dependency lines (TF 2.15.1 and TF 2.20 + tf-keras) in one run, as the ratio current / reference:
benchmarks/trunk_step_lines.py (`make benchmark-lines`) runs this script under each line's venv in turn.
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.configs import TrunkConfig  # noqa: E402
from mtssl_tf.trunk.resnet_v2 import build_trunk, copy_keras_weights  # noqa: E402

flags.DEFINE_integer('batch_size', 8, 'Images per step.')
flags.DEFINE_integer('image_size', 128, 'Square input side.')
flags.DEFINE_integer('steps', 3, 'Timed steps per round.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds (ours, Keras); the median is reported.')
flags.DEFINE_list(
  'precisions', ['float32', 'mixed_bfloat16'], "Dtype policies to compare ('auto': this machine's choice)."
)
flags.DEFINE_integer('output_stride', 32, "Our trunk's output stride (32 = the same computation as Keras).")
flags.DEFINE_bool('json', False, 'Also print the results as one JSON line, last (read by trunk_step_lines.py).')
FLAGS = flags.FLAGS


def _train_step(model, read_output):
  variables = model.trainable_variables

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      out = tf.cast(read_output(model(images, training=True)), tf.float32)
      loss = tf.reduce_mean(tf.square(out))
    return tape.gradient(loss, variables)

  return step


def _time(step, images, steps):
  start = time.perf_counter()
  for _ in range(steps):
    grads = step(images)
  _ = [g.numpy() for g in grads[:1]]  # Wait for the last step.
  return time.perf_counter() - start


def _compare(precision):
  precision = hardware.resolve_precision(precision)
  tf.keras.mixed_precision.set_global_policy(precision)  # Keras applications read the global policy.
  try:
    keras_full = tf.keras.applications.ResNet101V2(weights=None, include_top=False, input_shape=(None, None, 3))
    keras_cut = tf.keras.Model(keras_full.input, keras_full.get_layer('conv4_block23_out').output)
  finally:
    tf.keras.mixed_precision.set_global_policy('float32')
  cfg = TrunkConfig()
  cfg.output_stride = FLAGS.output_stride
  cfg.final_activation = False
  ours = build_trunk(cfg, precision=precision)
  copy_keras_weights(ours, keras_full)
  images = tf.random.uniform([FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3], -1, 1, seed=0)
  steps = {'ours': _train_step(ours, lambda e: e['block3']), 'keras': _train_step(keras_cut, lambda x: x)}
  for step in steps.values():
    _time(step, images, 1)  # Trace and warm up.
  times = {name: [] for name in steps}
  for r in range(FLAGS.rounds):
    # ABBA order: whichever runs second in a round may find caches warm or the CPU hot.
    for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
      times[name].append(_time(steps[name], images, FLAGS.steps))
  rate = {name: FLAGS.batch_size * FLAGS.steps / statistics.median(t) for name, t in times.items()}
  ratios = [k / o for o, k in zip(times['ours'], times['keras'])]
  return rate, statistics.median(ratios), min(ratios), max(ratios)


def _versions():
  """TensorFlow, and the package and version behind tf.keras (keras on TF 2.15, tf_keras on 2.20)."""
  package = tf.keras.layers.Layer.__module__.split('.')[0]
  return {'tensorflow': tf.__version__, 'keras': f'{package} {sys.modules[package].__version__}'}


def main(argv):
  del argv
  print(f'CPU: {hardware.describe_cpu()}')
  auto, why = hardware.explain_precision('auto')
  print(f'precision auto on this machine: {auto} ({why})')
  print(
    f'forward+backward, batch {FLAGS.batch_size}, {FLAGS.image_size} px, our output stride '
    f'{FLAGS.output_stride}, {FLAGS.rounds} rounds x {FLAGS.steps} steps, {os.cpu_count()} CPUs'
  )
  versions = _versions()
  print(f'TensorFlow {versions["tensorflow"]}, tf.keras: {versions["keras"]}')
  print(f'{"precision":<16}{"ours img/s":>12}{"keras img/s":>13}{"ratio":>8}  (min-max over rounds)')
  results = {}
  for precision in FLAGS.precisions:
    rate, ratio, low, high = _compare(precision)
    print(f'{precision:<16}{rate["ours"]:>12.2f}{rate["keras"]:>13.2f}{ratio:>8.2f}  ({low:.2f}-{high:.2f})')
    results[precision] = {'ours': rate['ours'], 'keras': rate['keras'], 'ratio': ratio}
  if FLAGS.json:
    print(json.dumps({'cpu': hardware.describe_cpu(), **versions, 'results': results}))


if __name__ == '__main__':
  app.run(main)
