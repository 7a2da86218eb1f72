"""mtssl-export: a SavedModel of the trunk from a pre-training run's latest checkpoint.

    mtssl-export --model_dir=runs/demo                       # config from runs/demo/config.yaml
    mtssl-export --model_dir=/runs/a --export_dir=/models/a

Signatures: `final`, `block3_units` and (with lasso) `lasso`, on uint8 images of any
size; `saved_model_cli show --dir <export_dir> --all` lists them.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.configs import ConfigError, ExperimentConfig, load_config  # noqa: E402
from mtssl_tf.data.sources import DataError  # noqa: E402
from mtssl_tf.train import launch  # noqa: E402

flags.DEFINE_string('model_dir', None, 'The pre-training run (holds config.yaml and checkpoints/).')
flags.DEFINE_string('export_dir', '', 'Where to write the SavedModel (default <model_dir>/saved_model).')
flags.DEFINE_multi_string('override', [], 'key.path=value applied over the run config.')
flags.mark_flag_as_required('model_dir')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    cfg = load_config(ExperimentConfig, [os.path.join(FLAGS.model_dir, 'config.yaml')], FLAGS.override)
    prepared = launch.prepare(cfg)
    print(f'SavedModel: {launch.export_latest(cfg, FLAGS.model_dir, prepared.sources, FLAGS.export_dir)}')
  except (ConfigError, DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
