"""The fine-tuning engine: resume, loop, summaries, checkpoints and its errors, on a one-layer model."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.train.finetune import FineTune


def _events(out_dir):
  """{(tag, step): value} of every scalar in out_dir's event files."""
  found = {}
  for path in glob.glob(os.path.join(out_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  return found


def _setup(out_dir, steps, **kwargs):
  tf.keras.utils.set_random_seed(0)
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))])
  optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
  tune = FineTune('toy', str(out_dir), steps=steps, log_every_steps=2, checkpoint_every_steps=3, progress=False,
                  **kwargs)  # fmt: skip
  start = tune.restore(optimizer, model.trainable_variables, model=model)

  @tf.function
  def step_fn(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(batch['x'])[:, 0] - batch['y']))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, {'loss': loss}

  return tune, start, model, step_fn


def _data(scale=1.0):
  x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32)) * scale
  return tf.data.Dataset.from_tensor_slices({'x': x, 'y': y}).batch(8).repeat()


@pytest.mark.numerics
def test_trains_logs_checkpoints_and_resumes(tmp_path):
  tune, start, model, step_fn = _setup(tmp_path, 5)
  assert start == 0
  stats = tune.fit(step_fn, _data(), schedule=0.1)
  assert tune.step == 5 and stats['steps_trained'] == 5 and stats['num_skipped_train'] == 0
  # Checkpoints every 3 steps and at the last: ckpt-3, ckpt-5.
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith('ckpt-5')
  events = _events(str(tmp_path))
  # Windows end at steps 2, 4 and 5: means, the rate and steps/s under `toy/`.
  assert {('toy/loss', s) for s in (2, 4, 5)} <= set(events) and events[('toy/learning_rate', 4)] == pytest.approx(0.1)
  assert ('toy/steps_per_second', 5) in events
  weights = [v.numpy() for v in model.trainable_variables]
  # A rerun with more steps restores step 5 (weights and momentum) and trains 3 more.
  tune, start, model, step_fn = _setup(tmp_path, 8)
  assert start == 5
  for restored, saved in zip(model.trainable_variables, weights):
    np.testing.assert_array_equal(restored.numpy(), saved)  # Same bytes: a restore, not a recomputation.
  assert tune.fit(step_fn, _data(), schedule=0.1)['steps_trained'] == 3 and tune.step == 8
  # The fit learns: the last window's loss is well below the first one's (margin, not a value).
  events = _events(str(tmp_path))
  assert events[('toy/loss', 8)] < 0.8 * events[('toy/loss', 2)]  # About 0.53 here.


def test_per_step_summaries(tmp_path):
  tune, _, _, step_fn = _setup(tmp_path, 4, summary_every_steps=1)
  tune.fit(step_fn, _data(), schedule=lambda step: 0.1 / (1.0 + float(step)))
  events = _events(str(tmp_path))
  assert {('toy/loss', s) for s in range(1, 5)} <= set(events)
  # The rate a step used is the schedule at the iteration count before it.
  assert events[('toy/learning_rate', 3)] == pytest.approx(0.1 / 3)


def test_errors_name_the_step_and_the_checkpoint(tmp_path):
  tune, _, _, step_fn = _setup(tmp_path / 'nan', 4)
  with pytest.raises(FloatingPointError, match='toy: non-finite loss at step 1'):
    tune.fit(step_fn, _data(scale=np.inf))
  tune, _, _, step_fn = _setup(tmp_path / 'short', 4)
  with pytest.raises(ValueError, match=r'toy: the training source yields no batch \(step 3 of 4\)'):
    tune.fit(step_fn, _data().take(2))
  # A checkpoint of another model does not fit: the error names it and how to start afresh.
  tune, _, _, step_fn = _setup(tmp_path / 'other', 1)
  tune.fit(step_fn, _data())
  wide = tf.keras.Sequential([tf.keras.layers.Dense(4, input_shape=(3,))])
  other = FineTune('toy', str(tmp_path / 'other'), steps=2, log_every_steps=1, checkpoint_every_steps=1)
  with pytest.raises(ValueError, match='does not fit this config'):
    other.restore(tf.keras.optimizers.SGD(0.1), wide.trainable_variables, model=wide)
