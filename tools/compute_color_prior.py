"""Computes a colorization prior (distribution over the 313 ab bins) from your images.

    python tools/compute_color_prior.py --source=folder:/photos --output=/tmp/prior.npy
    python tools/compute_color_prior.py --source=tfrecord:/data/train-* --max_images=100000

Counts the nearest bin of every `--stride`-th pixel (in each axis) of each image,
smooths the histogram with a Gaussian over ab (sigma 5, as Zhang et al. 2016; 0
disables) and writes a float64 [313] .npy summing to 1. Use it with
`tasks.colorization.prior_path`. The shipped prior is Zhang's, from ImageNet.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf.data import images  # noqa: E402
from mtssl_tf.tasks import colorization  # noqa: E402

flags.DEFINE_string('source', None, 'Image source spec: folder:<dir>, tfrecord:<glob> or tfds:<name>:<split>.')
flags.DEFINE_string('output', None, 'Where to write the prior (.npy).')
flags.DEFINE_string('data_dir', None, 'tensorflow-datasets data directory (tfds sources).')
flags.DEFINE_integer('max_images', 0, 'Stop after this many images (0: all).')
flags.DEFINE_integer('stride', 4, 'Count every stride-th pixel in each axis.')
flags.DEFINE_float('sigma', 5.0, 'Gaussian smoothing over ab of the histogram (0: none).')
flags.DEFINE_integer('log_every', 1000, 'Log progress every this many images.')
flags.mark_flags_as_required(['source', 'output'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  dataset = images.image_dataset(FLAGS.source, images.ReadOptions(data_dir=FLAGS.data_dir))
  prior, count = colorization.compute_prior(dataset, FLAGS.stride, FLAGS.max_images, FLAGS.log_every, FLAGS.sigma)
  with tf.io.gfile.GFile(FLAGS.output, 'wb') as f:
    np.save(f, prior)
  bins = colorization.load_bins()
  top = np.argsort(prior)[::-1][:5]
  logging.info('%d images -> %s; most frequent bins %s', count, FLAGS.output, [tuple(bins[i]) for i in top])
  print(f'wrote {FLAGS.output} from {count} images')


if __name__ == '__main__':
  app.run(main)
