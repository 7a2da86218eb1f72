"""mtssl-eval: transfer evaluations of a pre-trained trunk (Doersch & Zisserman 2017, §5).

    mtssl-eval --eval=linear --init=runs/demo --model_dir=runs/demo
    mtssl-eval --eval=detection --init=runs/demo/saved_model --config=configs/eval/detection_voc07.yaml
    mtssl-eval --eval=depth --init=random --model_dir=runs/random
    mtssl-eval --eval=supervised --config=configs/eval/supervised_imagenet.yaml --model_dir=runs/labels

`--init` is 'random', a checkpoint, a pre-training run's folder or a SavedModel. Data
sources left empty in the config read the synthetic world (generated on first use),
so every evaluation runs out of the box. Results go to
<model_dir>/eval/<name>/results.json, TensorBoard summaries beside them; gather
them with tools/results_table.py.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf.bin.flags import define_config_flags  # noqa: E402
from mtssl_tf.configs import ConfigError  # noqa: E402
from mtssl_tf.data.sources import DataError  # noqa: E402
from mtssl_tf.evaluation import protocols  # noqa: E402  (names only: no TensorFlow import)

define_config_flags()
flags.DEFINE_enum('eval', None, list(protocols.names()), 'Which evaluation protocol to run (the registry, '
                  'mtssl_tf/evaluation/protocols.py; BUILD.md lists what each measures).')  # fmt: skip
flags.DEFINE_string('init', '', "Trunk source: 'random', checkpoint, run dir or SavedModel (overrides the config).")
flags.mark_flag_as_required('eval')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  from mtssl_tf.evaluation import runner  # After flag parsing: imports TensorFlow.

  try:
    cfg = runner.load_eval_config(FLAGS.config, FLAGS.override, FLAGS.init)
    model_dir = os.path.abspath(FLAGS.model_dir or os.path.join('runs', f'eval_{FLAGS.eval}'))
    results = runner.run(FLAGS.eval, cfg, model_dir)
  except (ConfigError, DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print(json.dumps(runner.headline(FLAGS.eval, results), indent=2))
  print(f'results: {os.path.join(model_dir, "eval", FLAGS.eval, "results.json")}')
  print(f'TensorBoard: tensorboard --logdir {os.path.join(model_dir, "eval")}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
