"""mtssl-transfer: knowledge transfer by clustering (Noroozi et al. 2018), one step at a time.

    mtssl-transfer extract --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer cluster --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer assign  --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer train   --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer probe   --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer all     --config=configs/transfer/tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer distill --config=configs/transfer/distill_tiny.yaml --model_dir=runs/transfer_tiny
    mtssl-transfer attention --config=configs/transfer/attention_tiny.yaml --model_dir=runs/transfer_tiny

Each step reads the previous one's output under model_dir (features/, clusters/,
pseudo_labels/, student/) and resumes where it stopped. The controls: HOG features
(--override=extract.features=hog: a bag of HOG words) and a random network
(--config=configs/transfer/random_control.yaml after the dataset's config: random init, lr 0.001).
The distillation baseline (Noroozi Table 3) is its own step, not part of `all`: a student
regressing the extract teacher's conv4-5, into distill/ (evaluated like student/). So is
attention transfer (Table 3 "[37]+vgg-Jigsaw++"): `mtssl-transfer attention` trains a Jigsaw++
AlexNet matching the teacher's attention maps into attention/ (evaluated like a Jigsaw++ run).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402

from mtssl_tf.bin.flags import define_config_flags  # noqa: E402

STEPS = ('extract', 'cluster', 'assign', 'train', 'probe')
EXTRA_STEPS = ('distill', 'attention')  # Run by name only.
define_config_flags()
FLAGS = flags.FLAGS


def _headline(step: str, result: dict) -> dict:
  if step == 'extract':
    return {k: result.get(k) for k in ('rows', 'dims', 'shards', 'complete')}
  if step in ('cluster', 'assign'):
    sizes = {k: v for k, v in result['sizes'].items() if k != 'sizes'}
    return dict(sizes, agreement=result.get('agreement'), skipped=result.get('skipped'))
  if step in ('train', 'distill', 'attention'):
    return {k: result.get(k) for k in ('steps', 'first_window', 'last_window', 'saved_model')}
  return {layer: probe['top1'] for layer, probe in result['probes'].items()}


def main(argv):
  steps = argv[1:]
  if len(steps) != 1 or steps[0] not in STEPS + EXTRA_STEPS + ('all',):
    names = '|'.join(STEPS + EXTRA_STEPS)
    sys.exit(f'usage: mtssl-transfer {names}|all [--config=...] [--override=...] [--model_dir=...]')
  logging.set_verbosity(logging.INFO)
  from mtssl_tf.configs import ConfigError, save_config
  from mtssl_tf.data.sources import DataError
  from mtssl_tf.transfer import assign, attention, config, distill, extract, student  # After flags: imports TF.

  run = {'extract': extract.run_extract, 'cluster': assign.run_cluster, 'assign': assign.run_assign,
         'train': student.run_train, 'probe': student.run_probe, 'distill': distill.run_distill,
         'attention': attention.run_attention}  # fmt: skip
  model_dir = os.path.abspath(FLAGS.model_dir or os.path.join('runs', 'transfer'))
  try:
    cfg = config.world_sources(config.load_transfer_config(FLAGS.config, FLAGS.override))
    save_config(cfg, model_dir, 'transfer_config.yaml')
    for step in STEPS if steps[0] == 'all' else steps:
      result = run[step](cfg, model_dir)
      print(f'{step}:', json.dumps(_headline(step, result), default=float))
  except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  folder = config.OUTPUTS[steps[0] if steps[0] in EXTRA_STEPS else 'train']
  print(f'outputs: {model_dir}; TensorBoard: tensorboard --logdir {os.path.join(model_dir, folder)}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
