"""mtssl-summary: build the trunk from a config, run it on generated images, report it.

mtssl-summary                                   # ResNet-101 block 3, output stride 16
mtssl-summary --config=configs/trunk/tiny.yaml --override=trunk.output_stride=8
"""

from __future__ import annotations

import sys

from absl import app, flags

from mtssl_tf.bin.flags import config_from_flags, define_config_flags
from mtssl_tf.configs import ConfigError, save_config
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.trunk.summary import summarize_trunk

FLAGS = flags.FLAGS
define_config_flags()


def main(argv):
  del argv
  try:
    cfg = config_from_flags(ExperimentConfig, FLAGS)
  except ConfigError as e:
    sys.exit(f'config error: {e}')
  if FLAGS.model_dir:
    print(f'resolved config written to {save_config(cfg, FLAGS.model_dir)}')
  print(summarize_trunk(cfg).report())


def run():
  app.run(main)


if __name__ == '__main__':
  run()
