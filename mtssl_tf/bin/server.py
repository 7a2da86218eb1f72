"""A PS or worker server process: `python -m mtssl_tf.bin.server --cluster_spec=... --job=ps --index=0`.

Started by `LocalCluster` (mtssl_tf/distribute/cluster.py) for local runs; the library only
builds the command line, so flags stay in this binary.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.distribute.cluster import run_server  # noqa: E402

flags.DEFINE_string('cluster_spec', None, 'JSON {"worker": [...], "ps": [...]}.')
flags.DEFINE_enum('job', None, ['worker', 'ps'], "This server's job.")
flags.DEFINE_integer('index', None, "This server's task index.")
flags.mark_flags_as_required(['cluster_spec', 'job', 'index'])
FLAGS = flags.FLAGS


def main(argv):
  """Runs this process's server until it is killed."""
  del argv
  run_server(json.loads(FLAGS.cluster_spec), FLAGS.job, FLAGS.index)


if __name__ == '__main__':
  app.run(main)
