"""mtssl-export: a SavedModel of the trunk from a pre-training run's latest checkpoint.

    mtssl-export --model_dir=runs/demo                       # config from runs/demo/config.yaml
    mtssl-export --model_dir=/runs/a --export_dir=/models/a
    mtssl-export --model_dir=runs/rp_h --preprocessing=harmonized   # grey input, when asked

Signatures: `final`, then `block3_units` and (with lasso) `lasso` for a ResNet-v2 trunk or
`endpoints` (every named layer) for AlexNet / VGG16 (`trunk.kind`), on uint8 images;
`saved_model_cli show --dir <export_dir> --all` lists them. The model feeds its
trunk colour by default, harmonized runs too (Doersch §3.3: "so that the network can be
evaluated on color images"); `--preprocessing=harmonized` feeds grey (L replicated),
`as_trained` grey only when every task of the run was harmonized.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.configs import ConfigError, load_config  # noqa: E402
from mtssl_tf.data.sources import DataError  # noqa: E402
from mtssl_tf.train import launch  # noqa: E402
from mtssl_tf.train.experiment import ExperimentConfig  # noqa: E402

flags.DEFINE_string('model_dir', None, 'The pre-training run (holds config.yaml and checkpoints/).')
flags.DEFINE_string('export_dir', '', 'Where to write the SavedModel (default <model_dir>/saved_model).')
flags.DEFINE_multi_string('override', [], 'key.path=value applied over the run config.')
flags.DEFINE_string(
  'preprocessing', 'rgb', "Trunk input: 'rgb' colour (the paper's), 'harmonized' grey, or 'as_trained'."
)
flags.DEFINE_integer(
  'image_size', 0, "Side of the images the signatures take; 0: any (ResNet-v2) or the network's own (AlexNet, VGG16)."
)
flags.mark_flag_as_required('model_dir')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    cfg = load_config(ExperimentConfig, [os.path.join(FLAGS.model_dir, 'config.yaml')], FLAGS.override)
    # Restores the trunk (and lasso) only: the run's task data need not exist any more.
    path = launch.export_latest(
      cfg, FLAGS.model_dir, FLAGS.export_dir, FLAGS.preprocessing, image_size=FLAGS.image_size
    )
    print(f'SavedModel: {path}')
  except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
