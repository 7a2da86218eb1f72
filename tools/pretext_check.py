"""Pretext sanity check: train every enabled task on the synthetic world, report learning.

    python tools/pretext_check.py --config=configs/pretext/tiny.yaml --steps=600

For each task prints the first and last logging window (loss, accuracy or the task's
own metric) so one can see the loss fall and accuracy rise above chance.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mtssl_tf.bin.flags import config_from_flags, define_config_flags  # noqa: E402
from mtssl_tf.data.images import ReadOptions  # noqa: E402
from mtssl_tf.data.synthetic.world import make_world  # noqa: E402
from mtssl_tf.tasks import build_tasks  # noqa: E402
from mtssl_tf.tasks.multitask import MultiTaskModel  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402
from mtssl_tf.train.local import LocalTrainer  # noqa: E402

define_config_flags()
flags.DEFINE_integer('steps', 600, 'Total steps (tasks take turns).')
flags.DEFINE_integer('log_every', 50, 'Per-task steps per logging window.')
flags.DEFINE_string('world_dir', '/tmp/mtssl_world_small', 'Synthetic world location (generated if missing).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cfg = config_from_flags(ExperimentConfig, FLAGS)
  tf.random.set_seed(cfg.runtime.seed)
  world = make_world(FLAGS.world_dir, 'small')
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride)
  defaults = {name: task.world_source(world['sources']) for name, task in tasks.items()}
  datasets = {
    name: t.dataset(ReadOptions(seed=cfg.runtime.seed), defaults[name], cfg.runtime.seed) for name, t in tasks.items()
  }
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso, cfg.runtime.precision)
  # The per-task RMSProp of the config's train.learning_rate and train.rmsprop_*, as mtssl-train's.
  trainer = LocalTrainer(model, datasets, cfg.train, summary_dir=FLAGS.model_dir and f'{FLAGS.model_dir}/train')
  logs = trainer.run(FLAGS.steps, FLAGS.log_every)
  for name, log in logs.items():
    for key, values in log.values.items():
      print(
        f'{name:<20} {key:<18} first {values[0]:.4f}  last {values[-1]:.4f}'
        f'  (task steps {log.steps[0]}-{log.steps[-1]})'
      )


if __name__ == '__main__':
  app.run(main)
