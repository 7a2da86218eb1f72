"""The coordinator's bookkeeping (`mtssl_tf/train/progress.py`)."""

import pytest

from mtssl_tf.train.progress import Tally, Window


def test_window_means_drop_padding_and_totals_carry_over():
  window = Window(['a', 'b'])
  window.add('a', 1.0, [0.5, 7.0, 0.0, 0.0], steps=2)  # Two metrics, padded to four.
  window.add('a', 3.0, [1.5, 9.0, 0.0, 0.0], steps=2)
  # Means of two values that are sums of powers of two: exact in float64.
  assert window.means('a', ['accuracy', 'x']) == {'loss': 2.0, 'accuracy': 1.0, 'x': 8.0}
  assert window.means('b', []) is None  # Nothing reported: no entry rather than a NaN.
  following = Window(['a', 'b'], window)
  following.add('b', 1.0, [0.0] * 4)
  assert following.total_steps == {'a': 4, 'b': 1} and following.losses['a'] == []


def test_tally_busy_fraction_over_the_pools_span():
  tally = Tally(['a', 'b'])
  tally.add('a', began=10.0, ended=14.0, waited=0.5)
  tally.add('a', began=12.0, ended=20.0, waited=0.25)
  # 12 s in closures over a 10 s span of 2 workers.
  assert tally.busy_fraction('a', workers=2) == pytest.approx(0.6, abs=1e-4)
  assert tally.closures == {'a': 2, 'b': 0} and tally.waited['a'] == 0.75
  assert tally.busy_fraction('b', workers=1) == 0.0  # No closure: no span.
