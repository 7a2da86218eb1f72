"""Per task: input pipeline examples/s per core vs decode+resize, and train-step speed.

Input pipelines run on a private one-thread tf.data pool (figures are per core) over
the same synthetic images as a plain TFRecord decode+resize baseline measured in the
same run. Train steps run the task's full step (trunk + head + loss + gradients +
RMSProp) with the tiny trunk and with the paper's ResNet-101 block-3 trunk; the
figure is images through the trunk per second (a relative-position example is two
images, a jigsaw example nine). Run on demand:

    .venv/bin/python benchmarks/task_pipelines.py --config=configs/pretext/tiny.yaml
    .venv/bin/python benchmarks/task_pipelines.py --config=configs/pretext/tiny.yaml --full_trunk=false
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.bin.flags import config_from_flags, define_config_flags  # noqa: E402
from mtssl_tf.configs import TrunkConfig  # noqa: E402
from mtssl_tf.data.images import ReadOptions  # noqa: E402
from mtssl_tf.data.synthetic.world import make_world  # noqa: E402
from mtssl_tf.tasks import build_tasks  # noqa: E402
from mtssl_tf.tasks.multitask import MultiTaskModel  # noqa: E402
from mtssl_tf.train import rmsprop  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402

define_config_flags()
flags.DEFINE_integer('examples', 400, 'Examples timed per input pipeline.')
flags.DEFINE_integer('train_steps', 5, 'Timed train steps per task and trunk.')
flags.DEFINE_bool('full_trunk', True, 'Also time train steps with the ResNet-101 block-3 trunk.')
flags.DEFINE_string('world_dir', None, 'Synthetic world (default: a temporary one).')
FLAGS = flags.FLAGS


def _one_core(ds):
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _rate(ds, count):
  it = iter(_one_core(ds))
  next(it)  # Start-up (file open, tracing) is not throughput.
  start = time.perf_counter()
  for _ in range(count):
    next(it)
  return count / (time.perf_counter() - start)


def _baseline(pattern, size):
  spec = {'image/encoded': tf.io.FixedLenFeature([], tf.string)}

  def fn(x):
    image = tf.io.decode_jpeg(tf.io.parse_single_example(x, spec)['image/encoded'], channels=3)
    return tf.image.resize(image, [size, size])

  return tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)).repeat().map(fn)


def _train_rate(trunk_cfg, task, batch, steps):
  model = MultiTaskModel(trunk_cfg, {task.name: task}, ExperimentConfig().lasso)
  model.build_all({task.name: batch})
  optimizer = rmsprop.from_config(ExperimentConfig().train, {task.name: model.task_variables(task.name)})

  @tf.function
  def step(b):
    total, _, _, grads, variables = model.compute_gradients(task.name, b)
    optimizer.apply(task.name, zip(grads, variables))
    return total

  step(batch).numpy()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(batch)
  loss.numpy()
  images = int(task.trunk_images(batch).shape[0])
  return images * steps / (time.perf_counter() - start), images


def main(argv):
  del argv
  print(f'CPU: {hardware.describe_cpu()}')
  cfg = config_from_flags(ExperimentConfig, FLAGS)
  world = make_world(FLAGS.world_dir or tempfile.mkdtemp(prefix='mtssl_world_'), 'small')
  sources = world['sources']
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride)
  base = statistics.median(
    _rate(_baseline(sources['images_train'].split(':', 1)[1], 224), FLAGS.examples) for _ in range(3)
  )
  print(f'baseline decode+resize to 224 px: {base:.1f} img/s/core (small world, 128 px JPEGs)')
  print(f'{"task":<22}{"examples/s/core":>16}{"vs baseline":>13}{"tiny img/s":>12}{"full img/s":>12}')
  full = TrunkConfig()
  for name, task in tasks.items():
    source = sources.get(f'{name}_train', sources['images_train'])
    rate = _rate(task.dataset(ReadOptions(), source, seed=0).unbatch(), FLAGS.examples)
    batch = next(iter(task.dataset(ReadOptions(), source, seed=0)))
    tiny_rate, _ = _train_rate(cfg.trunk, task, batch, FLAGS.train_steps)
    full_rate = _train_rate(full, task, batch, FLAGS.train_steps)[0] if FLAGS.full_trunk else float('nan')
    print(f'{name:<22}{rate:>16.1f}{rate / base:>13.2f}{tiny_rate:>12.1f}{full_rate:>12.1f}')


if __name__ == '__main__':
  app.run(main)
