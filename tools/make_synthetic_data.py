"""Writes the synthetic world: the project's datasets, generated, in their real formats.

    python tools/make_synthetic_data.py --output_dir=/tmp/world --preset=small
    python tools/make_synthetic_data.py --output_dir=/tmp/world --preset=large --seed=1

Prints the source specs to put in configs (e.g. `tfrecord:/tmp/world/images/train-*`).
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.data.synthetic.world import PRESETS, make_world  # noqa: E402

flags.DEFINE_string('output_dir', None, 'Where to write the world.')
flags.DEFINE_enum('preset', 'small', sorted(PRESETS), 'Sizes: tiny (tests), small (default run), large (benchmarks).')
flags.DEFINE_integer('seed', 0, 'Generation seed; the same seed writes the same data.')
flags.DEFINE_bool('force', False, 'Regenerate even if a matching world exists.')
flags.mark_flag_as_required('output_dir')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  manifest = make_world(FLAGS.output_dir, FLAGS.preset, FLAGS.seed, FLAGS.force)
  print(json.dumps(manifest, indent=2))


if __name__ == '__main__':
  app.run(main)
