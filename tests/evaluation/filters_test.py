"""Figure 4 filters: grid layout and shape, per-filter normalisation, the protocol from the binary."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.evaluation import filters
from mtssl_tf.transfer import models
from mtssl_tf.transfer.student import META


def _kernel():
  # 5 filters of 2x3 RGB: filter n is n * 10 + a ramp 0..17, except filter 2 (constant) and filter 4 (negated ramp).
  ramp = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
  kernel = np.stack([n * 10 + ramp for n in range(5)], -1)
  kernel[..., 2] = 7.0
  kernel[..., 4] = -ramp
  return kernel, ramp


@pytest.mark.numerics
def test_each_filter_is_normalised_on_its_own():
  kernel, ramp = _kernel()
  out = filters.normalise_filters(kernel)
  assert out.shape == (5, 2, 3, 3)
  # Ramp 0..17 -> ramp / 17 whatever the offset (filters 0, 1, 3); these are float32 roundings of exact
  # ratios, so equal to 1e-7.
  for n in (0, 1, 3):
    np.testing.assert_allclose(out[n], ramp / 17.0, atol=1e-7)
  np.testing.assert_array_equal(out[2], 0.5)  # Constant filter: mid-grey.
  np.testing.assert_allclose(out[4], 1.0 - ramp / 17.0, atol=1e-7)


@pytest.mark.numerics
def test_grid_layout_shape_and_cells():
  kernel, ramp = _kernel()
  image = filters.filter_grid(kernel, columns=0, upscale=3, padding=1)
  # 5 filters -> ceil(sqrt(5)) = 3 columns, 2 rows; cells (2*3 + 1) x (3*3 + 1), plus the outer padding.
  assert image.shape == (2 * 7 + 1, 3 * 10 + 1, 3) and image.dtype == np.uint8
  expected = np.round(ramp / 17.0 * 255.0).astype(np.uint8).repeat(3, 0).repeat(3, 1)
  # Filter 3 sits at row 1, column 0: top = 1 + 7, left = 1.
  np.testing.assert_array_equal(image[8:14, 1:10], expected)
  np.testing.assert_array_equal(image[1:7, 1:10], expected)  # Filter 0.
  assert (image[1:7, 21:30] == 128).all()  # Filter 2, constant: round(0.5 * 255).
  # Borders and the empty sixth cell are white.
  assert (image[0] == 255).all() and (image[:, 10] == 255).all() and (image[8:14, 21:30] == 255).all()
  wide = filters.filter_grid(kernel, columns=5, upscale=1, padding=0)
  assert wide.shape == (2, 15, 3)
  grey = filters.filter_grid(np.ones([3, 3, 8, 4]) * np.arange(8)[None, None, :, None], upscale=1, padding=0)
  assert grey.shape == (6, 6, 3) and (grey[..., 0] == grey[..., 1]).all()  # Not RGB: grey input mean.
  with pytest.raises(ValueError, match='kernel'):
    filters.filter_grid(np.zeros([3, 3, 3]))


def _student(folder):
  model = models.build_model('alexnet', 5, 56, width=0.125)
  tf.train.Checkpoint(model=model).save(os.path.join(folder, 'checkpoints', 'ckpt'))
  with open(os.path.join(folder, META), 'w') as f:
    json.dump({'architecture': 'alexnet', 'num_classes': 5, 'input_size': 56, 'kwargs': {'width': 0.125}}, f)
  return model


def test_binary_draws_a_students_conv1(tmp_path):
  model = _student(str(tmp_path / 'student'))
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'mtssl_tf.bin.evaluate', '--eval=filters', f'--init={tmp_path / "student"}',
         f'--model_dir={out}', '--override=filters.upscale=2']  # fmt: skip
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / 'eval' / 'filters' / 'results.json').read_text())
  kernel = model.convs['conv1'].kernel.numpy()
  assert results['shape'] == list(kernel.shape)  # 11 x 11 x 3 (12 filters at width 1/8).
  png = tf.io.decode_png(tf.io.read_file(results['png'])).numpy()
  np.testing.assert_array_equal(png, filters.filter_grid(kernel, upscale=2))
  assert any(name.startswith('events.out') for name in os.listdir(out / 'eval' / 'filters'))
  # The grid's hook draws the same image.
  path = filters.write_student_filters(str(tmp_path / 'student'), str(tmp_path / 'hook.png'))
  assert tf.io.decode_png(tf.io.read_file(path)).shape == filters.filter_grid(kernel).shape


def test_grid_draws_one_filter_figure_per_trained_transfer_cell(tmp_path):
  from mtssl_tf.grid import figures

  model = _student(str(tmp_path / 'cc_a' / 'student'))
  os.makedirs(tmp_path / 'cc_b' / 'student')  # Not trained yet: left out.
  written = figures.student_filter_figures(['cc_a', 'cc_b'], str(tmp_path), str(tmp_path / 'figures'))
  assert written == [str(tmp_path / 'figures' / 'noroozi_figure4_cc_a.png')]
  png = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
  np.testing.assert_array_equal(png, filters.filter_grid(model.convs['conv1'].kernel.numpy()))
