"""Input pipeline throughput per core: each reader and the Lab conversion vs decode+resize.

Every pipeline runs on a private one-thread tf.data pool, so the figures are images/s
per core; the baseline (plain TFRecordDataset -> parse -> decode_jpeg -> resize, what
any tf.data tutorial writes) is measured in the same run on the same files, and each
result is reported as a ratio to it. Run on demand:

    .venv/bin/python benchmarks/input_pipeline.py
    .venv/bin/python benchmarks/input_pipeline.py --num_images=4000 --image_size=320 --rounds=3
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.data import color, decode, depth, detection, images  # noqa: E402
from mtssl_tf.data.motion import reader as motion_reader  # noqa: E402
from mtssl_tf.data.synthetic.classification import write_image_folder, write_image_tfrecords  # noqa: E402
from mtssl_tf.data.synthetic.depth import write_depth_part  # noqa: E402
from mtssl_tf.data.synthetic.detection import write_detection_part  # noqa: E402
from mtssl_tf.data.synthetic.video import write_video_part  # noqa: E402
from mtssl_tf.data.synthetic.world import Preset  # noqa: E402

flags.DEFINE_integer('num_images', 1000, 'Synthetic images written for the run.')
flags.DEFINE_integer('image_size', 256, 'Side of the written images.')
flags.DEFINE_integer('output_size', 224, 'Side every pipeline resizes to.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds; the median is reported.')
FLAGS = flags.FLAGS


def _one_core(ds):
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _resize(image):
  return tf.cast(tf.image.resize(image, [FLAGS.output_size, FLAGS.output_size]), tf.uint8)


def _baseline(pattern):
  files = tf.io.gfile.glob(pattern)
  ds = tf.data.TFRecordDataset(files)
  spec = {'image/encoded': tf.io.FixedLenFeature([], tf.string)}

  def fn(x):
    return _resize(tf.io.decode_jpeg(tf.io.parse_single_example(x, spec)['image/encoded'], channels=3))

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _reader(spec, convert=None):
  def process(record):
    image = _resize(decode.decode_rgb(record['encoded']))
    return {'image': convert(image) if convert else image}

  return images.image_dataset(spec, process=process)


def _resized(ds):
  """A task-format reader's output, resized like every other pipeline."""
  return ds.map(lambda e: _resize(e['image']), num_parallel_calls=tf.data.AUTOTUNE)


def _tfio_lab(image):
  import tensorflow_io as tfio

  return tfio.experimental.color.rgb_to_lab(tf.cast(image, tf.float32) / 255.0)


def _time(ds):
  start = time.perf_counter()
  count = 0
  for _ in _one_core(ds):
    count += 1
  return count / (time.perf_counter() - start)


def main(argv):
  del argv
  print(f'CPU: {hardware.describe_cpu()}')
  root = tempfile.mkdtemp(prefix='mtssl_bench_')
  n = FLAGS.num_images
  write_image_tfrecords(os.path.join(root, 'tfr'), n, num_shards=8, size=FLAGS.image_size)
  write_image_folder(os.path.join(root, 'folder'), n, size=FLAGS.image_size)
  pattern = os.path.join(root, 'tfr', 'train-*')
  # The task readers' formats, from the synthetic world's writers at the same image size.
  # Videos: n / 20 clips of 20 frames (-3 end frames without a full horizon each).
  sizes = Preset(0, 0, 0, FLAGS.image_size, 8, n, n, max(2, n // 20), 20)
  sources = {**write_detection_part(root, sizes, 0), **write_depth_part(root, sizes, 0)}
  sources.update(write_video_part(root, sizes, 0))
  pipelines = {
    'baseline decode+resize (TFRecord)': lambda: _baseline(pattern),
    'reader tfrecord': lambda: _reader(f'tfrecord:{pattern}'),
    'reader folder (3/4 JPEG, 1/4 PNG)': lambda: _reader(f'folder:{os.path.join(root, "folder")}'),
    'reader tfrecord + Lab (ours)': lambda: _reader(f'tfrecord:{pattern}', color.rgb_to_lab),
    'reader tfrecord + L only (ours)': lambda: _reader(f'tfrecord:{pattern}', color.rgb_to_lightness),
    'reader tfrecord + Lab (tfio)': lambda: _reader(f'tfrecord:{pattern}', _tfio_lab),
    'reader VOCdevkit (JPEG + XML)': lambda: _resized(detection.detection_dataset(sources['detection_trainval'])),
    'reader NYU TFRecord (PNG + depth)': lambda: _resized(depth.depth_dataset(sources['depth_train'])),
    'reader NYU .mat (h5py)': lambda: _resized(depth.depth_dataset(sources['depth_test_mat'])),
    'reader motion (JPEG + mask PNG)': lambda: _resized(
      motion_reader.motion_dataset(sources['motion_segmentation_train'])
    ),
  }
  rates = {name: [] for name in pipelines}
  for make in pipelines.values():
    _time(make().take(20))  # Warm-up: tracing, file cache.
  for r in range(FLAGS.rounds):
    for name in list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]:
      rates[name].append(_time(pipelines[name]()))
  base = statistics.median(rates['baseline decode+resize (TFRecord)'])
  print(f'{n} images {FLAGS.image_size} px -> {FLAGS.output_size} px, one tf.data thread, {FLAGS.rounds} rounds')
  print(f'{"pipeline":<40}{"img/s/core":>12}{"vs baseline":>13}')
  for name, values in rates.items():
    rate = statistics.median(values)
    print(f'{name:<40}{rate:>12.1f}{rate / base:>13.2f}')


if __name__ == '__main__':
  app.run(main)
