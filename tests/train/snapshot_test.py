"""Weight snapshots: reads of PSS-wrapped variables return one tensor for several steps."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.distribute import ps_values

from mtssl_tf.train import snapshot

# Outcomes depend on floating-point results: CI runs these again with oneDNN off.
pytestmark = pytest.mark.numerics


def _caching_scope():
  # ParameterServerStrategy's own creator (one replica per worker): each variable
  # wrapped in a CachingVariable. No cluster is needed to build such variables.
  return tf.variable_creator_scope(lambda next_creator, **kw: ps_values.CachingVariable(next_creator(**kw)))


def _model():
  tf.keras.utils.set_random_seed(0)
  with _caching_scope():
    model = tf.keras.Sequential([tf.keras.layers.Dense(5), tf.keras.layers.BatchNormalization(momentum=0.5),
                                 tf.keras.layers.Dense(2)])  # fmt: skip
    model.build([None, 3])
  return model


def _loss(model, x):
  return tf.reduce_sum(model(x, training=True) ** 2)


def test_gradients_at_the_snapshot_equal_gradients_of_the_variables():
  model = _model()
  x = tf.random.stateless_normal([8, 3], seed=[1, 2])
  with tf.GradientTape() as tape:
    expected_loss = _loss(model, x)
  expected = tape.gradient(expected_loss, model.trainable_variables)

  @tf.function
  def at_snapshot(x):
    weights = [v.read_value() for v in model.trainable_variables]
    with snapshot.read_from(model.trainable_variables, weights) as sources:
      with tf.GradientTape() as tape:
        tape.watch(sources)
        loss = _loss(model, x)
      return loss, tape.gradient(loss, sources)

  loss, grads = at_snapshot(x)
  assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)


def test_a_loop_reads_the_weights_once_and_batch_norm_statistics_every_step():
  model = _model()
  dense = model.trainable_variables[0]
  moving_mean = model.layers[1].moving_mean
  xs = tf.random.stateless_normal([3, 8, 3], seed=[3, 4]) + 2.0

  @tf.function
  def three_steps(xs):
    weights = [v.read_value() for v in model.trainable_variables]

    def body(i, total):
      with snapshot.read_from(model.trainable_variables, weights) as sources:
        with tf.GradientTape() as tape:
          tape.watch(sources)
          loss = _loss(model, xs[i])
        grad = tape.gradient(loss, sources)[0]
      # A weight change inside the loop must not reach the next step's forward pass.
      with tf.control_dependencies([grad]):
        dense.assign_add(tf.ones_like(dense))
      return i + 1, total + grad

    return tf.while_loop(lambda i, _: i < 3, body, (tf.constant(0), tf.zeros_like(dense)))[1]

  start = dense.numpy()
  total = three_steps(xs).numpy()
  # The same three gradients, each taken at the starting weights, outside any snapshot.
  fresh = _model()
  fresh.set_weights(model.get_weights())
  fresh.trainable_variables[0].assign(start)
  fresh.layers[1].moving_mean.assign(tf.zeros_like(moving_mean))
  expected = 0
  for x in xs:
    with tf.GradientTape() as tape:
      loss = _loss(fresh, x)
    expected += tape.gradient(loss, fresh.trainable_variables[0]).numpy()
  np.testing.assert_allclose(total, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dense.numpy(), start + 3)  # The assigns themselves happened.
  # Batch-norm statistics moved at every step, each update starting from the last:
  # three updates with momentum 0.5 keep 1/8 of the start (0).
  np.testing.assert_allclose(moving_mean.numpy(), fresh.layers[1].moving_mean.numpy(), rtol=1e-4, atol=1e-5)
  assert np.all(np.abs(moving_mean.numpy()) > 0)


def test_other_variables_get_a_fresh_read_whatever_cache_they_hold():
  model = _model()
  moving_mean = model.layers[1].moving_mean
  x = tf.random.stateless_normal([8, 3], seed=[5, 6])

  @tf.function
  def elsewhere():  # A cache left from another graph, as another thread's trace leaves it.
    return moving_mean.read_value() + 0.0

  stale = elsewhere.get_concrete_function().outputs[0]
  moving_mean._cache = stale  # noqa: SLF001
  moving_mean._current_new_cache_scope_count = 10**6  # noqa: SLF001
  others = [v for v in model.variables if not v.trainable]

  @tf.function
  def step(x):
    weights = [v.read_value() for v in model.trainable_variables]
    with snapshot.read_from(model.trainable_variables, weights, others):
      return _loss(model, x)

  assert np.isfinite(step(x).numpy())
  assert np.any(moving_mean.numpy() != 0)  # The update read the variable itself.


def test_plain_variables_are_refused_with_their_name():
  with pytest.raises(TypeError, match="'plain:0' is a ResourceVariable"):
    snapshot.check_supported([tf.Variable(1.0, name='plain')])
  with _caching_scope():
    snapshot.check_supported([tf.Variable(1.0)])
