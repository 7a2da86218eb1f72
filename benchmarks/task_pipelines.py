r"""Per task: input pipeline examples/s per core vs decode+resize, and train-step speed.

Input pipelines run on a private one-thread tf.data pool (figures are per core) over
the same synthetic images as a plain TFRecord decode+resize baseline measured in the
same run. Train steps run the task's full step (trunk + head + loss + gradients +
RMSProp) with the tiny trunk and with the paper's ResNet-101 block-3 trunk; the
figure is images through the trunk per second (a relative-position example is two
images, a jigsaw example nine). Run on demand:

    .venv/bin/python benchmarks/task_pipelines.py --config=configs/pretext/tiny.yaml
    .venv/bin/python benchmarks/task_pipelines.py --config=configs/pretext/tiny.yaml --full_trunk=false

Pipeline rates are given two ways: per wall second, and per CPU second of this process
(its threads' CPU time, which other jobs on a shared machine inflate much less). To
compare with an older version in the same run, extract its package and pass its root;
each round then measures this tree and that one (in a subprocess) one after the other,
each against its own baseline:

    mkdir /tmp/before && git archive <commit> mtssl_tf | tar -x -C /tmp/before
    .venv/bin/python benchmarks/task_pipelines.py --config=configs/pretext/tiny.yaml --train_steps=0 \
      --rounds=5 --before_dir=/tmp/before

and at paper scale (the paper's task configs on ImageNet-sized JPEGs held in memory):

    .venv/bin/python benchmarks/task_pipelines.py --config=configs/train/rp_col_ex_ms.yaml \
      --override=tasks.jigsaw.enabled=true --image_size=375x500 --train_steps=0 --examples=150
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
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
flags.DEFINE_integer('train_steps', 5, 'Timed train steps per task and trunk (0: input pipelines only).')
flags.DEFINE_integer('rounds', 3, 'Timed rounds per pipeline; the median is reported.')
flags.DEFINE_list('tasks', [], 'Tasks to measure (default: every enabled task).')
flags.DEFINE_bool('full_trunk', True, 'Also time train steps with the ResNet-101 block-3 trunk.')
flags.DEFINE_string('world_dir', None, 'Synthetic world (default: a temporary one).')
flags.DEFINE_string('before_dir', None, 'Root of an older mtssl_tf tree to measure in the same rounds.')
flags.DEFINE_string(
  'image_size',
  '',
  'HxW (e.g. 375x500, ImageNet-like): time the pipelines on synthetic JPEGs of this size held in memory '
  "(decode + the task's preprocessing, no reader) instead of the small world's TFRecords; the baseline "
  'decodes the same JPEGs. Tasks reading other data (motion segmentation) are skipped.',
)
flags.DEFINE_bool('pipelines_json', False, 'Internal: print one round of pipeline rates as JSON and exit.')
FLAGS = flags.FLAGS


def _one_core(ds):
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _rate(ds, count):
  """(examples per wall second, examples per CPU second of this process)."""
  it = iter(_one_core(ds))
  next(it)  # Start-up (file open, tracing) is not throughput.
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(it)
  return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


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


def _synthetic_jpegs(height, width, count=16):
  """JPEG bytes of smooth colourful images with noise (~85 kB at 375x500, quality 90)."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:height, 0:width] / height
  encoded = []
  for i in range(count):
    waves = np.stack([np.sin(x * (3 + i) + y), np.cos(y * (2 + i) - x), np.sin((x + y) * (1 + i))], -1)
    image = np.clip(waves * 0.4 + 0.5 + rng.normal(0.0, 0.06, waves.shape), 0.0, 1.0) * 255.0
    encoded.append(tf.io.encode_jpeg(tf.constant(image.astype(np.uint8)), quality=90))
  return tf.data.Dataset.from_tensor_slices(tf.stack(encoded)).repeat()


def _in_memory_round(tasks):
  """One round on `--image_size` JPEGs: decode + preprocess, against decode + resize."""
  jpegs = _synthetic_jpegs(*(int(v) for v in FLAGS.image_size.split('x')))
  decode = lambda encoded: tf.io.decode_jpeg(encoded, channels=3)  # noqa: E731
  rates = {'baseline': _rate(jpegs.map(lambda e: tf.image.resize(decode(e), [224, 224])), FLAGS.examples)}
  for name, task in tasks.items():
    if task.WORLD_SOURCE != 'images_train':
      continue
    ds = task.combine(jpegs.map(lambda e: {'image': decode(e)})).enumerate()
    ds = ds.map(lambda i, example, task=task: task.preprocess(example, tf.stack([tf.constant(0, tf.int64), i])))
    rates[name] = _rate(ds, FLAGS.examples)
  return rates


def _pipeline_round(sources, tasks):
  """One round: {'baseline' or task: [wall rate, CPU rate]}."""
  if FLAGS.image_size:
    return _in_memory_round(tasks)
  rates = {'baseline': _rate(_baseline(sources['images_train'].split(':', 1)[1], 224), FLAGS.examples)}
  for name, task in tasks.items():
    ds = task.dataset(ReadOptions(), task.world_source(sources), seed=0).unbatch()
    rates[name] = _rate(ds, FLAGS.examples)
  return rates


def _before_round(world_dir):
  """One round measured on `--before_dir`'s package, in a subprocess."""
  argv = [sys.executable, os.path.abspath(__file__), '--pipelines_json', f'--world_dir={world_dir}']
  argv += [f'--examples={FLAGS.examples}', f'--image_size={FLAGS.image_size}']
  argv += [f'--config={c}' for c in FLAGS.config or []] + [f'--override={o}' for o in FLAGS.override or []]
  argv += [f'--tasks={",".join(FLAGS.tasks)}'] * bool(FLAGS.tasks)
  env = dict(os.environ, PYTHONPATH=FLAGS.before_dir)
  out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _ratios(rounds):
  """{name: (median wall rate, wall ratio, CPU ratio)}: medians over rounds, ratios to the round's baseline."""
  table = {}
  for name in rounds[0]:
    wall = statistics.median(r[name][0] for r in rounds)
    table[name] = (
      wall,
      statistics.median(r[name][0] / r['baseline'][0] for r in rounds),
      statistics.median(r[name][1] / r['baseline'][1] for r in rounds),
    )
  return table


def main(argv):
  del argv
  cfg = config_from_flags(ExperimentConfig, FLAGS)
  world_dir = FLAGS.world_dir or tempfile.mkdtemp(prefix='mtssl_world_')
  sources = make_world(world_dir, 'small')['sources']
  tasks = {
    name: task
    for name, task in build_tasks(cfg.tasks, cfg.trunk.output_stride).items()
    if not FLAGS.tasks or name in FLAGS.tasks
  }
  if FLAGS.pipelines_json:
    print(json.dumps(_pipeline_round(sources, tasks)))
    return
  print(f'CPU: {hardware.describe_cpu()}')
  after, before = [], []
  for _ in range(FLAGS.rounds):
    after.append(_pipeline_round(sources, tasks))
    if FLAGS.before_dir:
      before.append(_before_round(world_dir))
  versions = [('', _ratios(after))] + ([('before: ', _ratios(before))] if before else [])
  images = f'{FLAGS.image_size} px JPEGs in memory' if FLAGS.image_size else 'small world, 128 px JPEGs'
  for label, table in versions:
    print(f'{label}baseline decode+resize to 224 px: {table["baseline"][0]:.1f} img/s/core ({images})')
  header = f'{"task":<22}{"examples/s/core":>16}{"vs baseline":>13}{"(CPU time)":>12}'
  if before:
    header += f'{"before":>9}{"(CPU time)":>12}'
  print(header + f'{"tiny img/s":>12}{"full img/s":>12}')
  full = TrunkConfig()
  for name, task in tasks.items():
    if name not in versions[0][1]:
      continue
    rate, wall_ratio, cpu_ratio = versions[0][1][name]
    line = f'{name:<22}{rate:>16.1f}{wall_ratio:>13.2f}{cpu_ratio:>12.2f}'
    if before:
      line += f'{versions[1][1][name][1]:>9.2f}{versions[1][1][name][2]:>12.2f}'
    tiny_rate = full_rate = float('nan')
    if FLAGS.train_steps:
      batch = next(iter(task.dataset(ReadOptions(), task.world_source(sources), seed=0)))
      tiny_rate, _ = _train_rate(cfg.trunk, task, batch, FLAGS.train_steps)
      full_rate = _train_rate(full, task, batch, FLAGS.train_steps)[0] if FLAGS.full_trunk else float('nan')
    print(line + f'{tiny_rate:>12.1f}{full_rate:>12.1f}')


if __name__ == '__main__':
  app.run(main)
