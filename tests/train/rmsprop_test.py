"""Per-task RMSProp: matches TF1 and Keras RMSProp, keeps slots per task, checkpoints exactly."""

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.train.rmsprop import PerTaskRMSProp

GRADS = [np.array([0.5, -1.0, 2.0], np.float32), np.array([-0.1, 0.3, 0.0], np.float32)] * 2


def _run(optimizer, var, task='a'):
  for g in GRADS:
    optimizer.apply(task, [(tf.constant(g), var)])
  return var.numpy()


def test_tf1_variant_equals_tf1_rmsprop():
  ours_var = tf.Variable([1.0, 2.0, 3.0])
  ours = _run(PerTaskRMSProp({'a': [ours_var]}, 0.01, 0.9, 0.9, 1e-3, 'tf1'), ours_var)
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    var = tf.compat.v1.Variable([1.0, 2.0, 3.0], use_resource=True)
    grad = tf.compat.v1.placeholder(tf.float32, [3])
    step = tf.compat.v1.train.RMSPropOptimizer(0.01, 0.9, 0.9, 1e-3).apply_gradients([(grad, var)])
    sess.run(tf.compat.v1.global_variables_initializer())
    for g in GRADS:
      sess.run(step, {grad: g})
    reference = sess.run(var)
  np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_keras_variant_equals_keras_rmsprop():
  ours_var = tf.Variable([1.0, 2.0, 3.0])
  ours = _run(PerTaskRMSProp({'a': [ours_var]}, 0.01, 0.9, 0.9, 1e-3, 'keras'), ours_var)
  var = tf.Variable([1.0, 2.0, 3.0])
  keras = tf.keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
  for g in GRADS:
    keras.apply_gradients([(tf.constant(g), var)])
  np.testing.assert_allclose(ours, var.numpy(), rtol=1e-5)


def test_tasks_keep_separate_slots_and_checkpoint_exactly(tmp_path):
  shared = tf.Variable([1.0, 1.0])
  head_a, head_b = tf.Variable([0.0]), tf.Variable([0.0])
  opt = PerTaskRMSProp({'a': [shared, head_a], 'b': [shared, head_b]}, variant='tf1')
  opt.apply('a', [(tf.constant([10.0, 10.0]), shared), (tf.constant([1.0]), head_a)])
  opt.apply('b', [(tf.constant([0.1, 0.1]), shared), (None, head_b)])
  ms_a, _ = opt.slots('a', shared)
  ms_b, _ = opt.slots('b', shared)
  assert not np.allclose(ms_a.numpy(), ms_b.numpy())  # Each task saw its own gradient scale.
  np.testing.assert_allclose(ms_a.numpy(), 0.9 + 0.1 * 100.0, rtol=1e-6)
  np.testing.assert_allclose(opt.slots('b', head_b)[0].numpy(), [1.0])  # None gradient: untouched.
  assert int(opt.iterations['a']) == 1 and int(opt.iterations['b']) == 1
  path = tf.train.Checkpoint(opt=opt, shared=shared).save(str(tmp_path / 'ckpt'))
  saved = [v.numpy() for v in opt.variables]
  opt.apply('a', [(tf.constant([5.0, 5.0]), shared), (tf.constant([2.0]), head_a)])
  tf.train.Checkpoint(opt=opt, shared=shared).restore(path).assert_consumed()
  for got, want in zip(opt.variables, saved):
    np.testing.assert_array_equal(got.numpy(), want)


def test_apply_inside_switch_case_in_tf_function():
  shared = tf.Variable([1.0])
  opt = PerTaskRMSProp({'a': [shared], 'b': [shared]}, variant='keras')

  @tf.function
  def step(task_id):
    branches = [lambda t=t: opt.apply(t, [(tf.constant([1.0]), shared)]) for t in ('a', 'b')]
    return tf.switch_case(task_id, branches)

  step(tf.constant(1))
  assert int(opt.iterations['b']) == 1 and int(opt.iterations['a']) == 0


def test_unknown_variant():
  with pytest.raises(ValueError, match='variant'):
    PerTaskRMSProp({'a': []}, variant='adam')
