"""Places linear probes (Noroozi Table 5): scene labels and the protocol from the binary with the tiny config."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from mtssl_tf.evaluation import places
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scene_label_is_the_largest_non_difficult_box():
  boxes = np.array([[0, 0, 0.9, 0.9], [0, 0, 0.5, 0.5], [0, 0, 0.2, 0.6]], np.float32)
  classes = np.array([3, 7, 1])
  assert places.scene_label(classes, boxes, np.array([False, False, False])) == 3
  assert places.scene_label(classes, boxes, np.array([True, False, False])) == 7  # The largest is difficult.
  assert places.scene_label(classes, boxes, np.array([True, True, True])) == 3  # All difficult: any box.
  assert places.scene_label(np.zeros([0], int), np.zeros([0, 4]), np.zeros([0], bool)) == -1


def test_binary_runs_the_tiny_config(tmp_path, tiny_world):
  folder = tmp_path / 'student'
  model = models.build_model('alexnet', 5, 56, width=0.125)
  tf.train.Checkpoint(model=model).save(str(folder / 'checkpoints' / 'ckpt'))
  (folder / META).write_text(json.dumps({'architecture': 'alexnet', 'num_classes': 5, 'input_size': 56,
                                         'kwargs': {'width': 0.125}}))  # fmt: skip
  root = tiny_world['sources']['images_train'][len('tfrecord:') :].split('/images/')[0]
  out = tmp_path / 'out'
  cmd = [
    sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--eval=places_linear', f'--init={folder}', f'--model_dir={out}',
    f'--config={os.path.join(REPO, "configs", "eval", "places_linear_tiny.yaml")}', '--override=world_preset=tiny',
    f'--override=world_dir={root}',
    *[f'--override=places_linear.{k}' for k in ('steps=2', 'image_size=64', 'crop_size=56', 'batch_size=4',
                                                'eval_batch_size=4')],
  ]  # fmt: skip
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / 'eval' / 'places_linear' / 'results.json').read_text())
  assert set(results['probes']) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}
  assert all(0.0 <= results[f'conv{i}_top1'] <= results[f'conv{i}_top5'] <= 1.0 for i in range(1, 6))
  # The tiny world's 16 VOC scenes split 8 / 8, each labelled by a VOC class index.
  labels = results['scene_labels']
  assert labels['train_images'] + labels['validation_images'] == 16 and results['counts']['steps'] == 2
  assert '"conv1_top1"' in result.stdout
