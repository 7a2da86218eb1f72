"""mtssl-train: multi-task self-supervised pre-training under ParameterServerStrategy.

    mtssl-train                                   # built-in demo: local cluster, synthetic world
    mtssl-train --config=configs/train/rp_col_ex_ms.yaml --model_dir=/runs/a
    TF_CONFIG='{"cluster": {...}, "task": {"type": "ps", "index": 0}}' mtssl-train --config=...

Without TF_CONFIG it supervises a local cluster (servers and coordinator as
subprocesses talking over 127.0.0.1; TensorFlow's servers listen on all interfaces,
so by default they run in a private network namespace that only has `lo`, see
--private_network). With TF_CONFIG it plays the role the file names: 'ps' and
'worker' serve, 'chief' coordinates. See BUILD.md for cluster launches.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf.bin.flags import define_config_flags  # noqa: E402
from mtssl_tf.configs import ConfigError, load_config  # noqa: E402
from mtssl_tf.configs.presets import DEMO_CONFIG  # noqa: E402
from mtssl_tf.data.sources import DataError  # noqa: E402
from mtssl_tf.distribute.private_net import PrivateNetworkError  # noqa: E402
from mtssl_tf.train import launch  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402

define_config_flags()
flags.DEFINE_bool('export', True, 'Export a SavedModel of the trunk after training.')
flags.DEFINE_integer('max_restarts', 3, 'Local cluster: coordinator restarts allowed after a server failure.')
flags.DEFINE_string('cluster_spec', None, 'Internal: JSON cluster spec of a coordinator started by the supervisor.')
flags.DEFINE_enum(
  'private_network',
  'auto',
  ['auto', 'on', 'off'],
  'Local cluster: run servers and coordinator in a private network namespace (Linux) so that other hosts cannot '
  'reach the unauthenticated TensorFlow servers. auto: where possible, else warn; on: fail if impossible; off: never.',
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  files = FLAGS.config or [DEMO_CONFIG]
  try:
    cfg = load_config(ExperimentConfig, files, FLAGS.override)
  except ConfigError as e:
    sys.exit(f'config error: {e}')
  model_dir = os.path.abspath(FLAGS.model_dir or os.path.join('runs', 'demo'))
  tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  role = tf_config.get('task', {}).get('type')
  if role in ('ps', 'worker'):
    from mtssl_tf.distribute.cluster import run_server

    cluster = {k: v for k, v in tf_config['cluster'].items() if k in ('ps', 'worker')}
    run_server(cluster, role, int(tf_config['task'].get('index', 0)))
    return
  # The run is set up once per process (issue 15): the tasks built here and what `prepare`
  # read are what the cluster check, the supervisor, the trainer and the export use.
  try:
    tasks = launch.enabled_tasks(cfg)
    if FLAGS.cluster_spec or role == 'chief':
      spec = json.loads(FLAGS.cluster_spec) if FLAGS.cluster_spec else tf_config['cluster']
      spec = {k: v for k, v in spec.items() if k in ('ps', 'worker')}
      launch.check_cluster(cfg, spec, tasks)
      launch.write_run_config(cfg, model_dir)
      code = launch.coordinator_main(cfg, model_dir, spec, launch.prepare(cfg, tasks))
      if code == launch.EXIT_CLUSTER_FAILURE:
        # After a cluster failure TF's coordinator threads still hold the dead servers' channels, and
        # tearing them down at interpreter exit can abort the process (TF 2.20: "terminate called ...",
        # SIGABRT, seen once in CI after a parameter server was killed). The run's state is its last
        # checkpoint, so exit without the teardown: the supervisor sees the code and restarts.
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
      if code:
        sys.exit(code)
    else:
      launch.prepare(cfg, tasks)  # Config and data errors surface before any server starts.
      launch.write_run_config(cfg, model_dir)
      config_argv = [f'--config={os.path.abspath(f)}' for f in files] + [f'--override={o}' for o in FLAGS.override]
      result = launch.supervise_local(
        cfg, model_dir, config_argv, FLAGS.max_restarts, private_network=FLAGS.private_network, tasks=tasks
      )
      print('per task:', json.dumps(result))
  except (ConfigError, DataError, PrivateNetworkError) as e:
    sys.exit(f'error: {e}')
  if FLAGS.export and role != 'worker':
    export_dir = launch.export_latest(cfg, model_dir, tasks=tasks)
    print(f'checkpoints: {model_dir}/checkpoints (compute ticks: {model_dir}/ticks)')
    print(f'TensorBoard: tensorboard --logdir {model_dir}')
    print(f'SavedModel:  {export_dir}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
