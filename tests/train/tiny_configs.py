"""The trainer tests' tiny trunk and relative-position task: one set of values, imported by their tests.

(A module beside the tests; tests/train/conftest.py puts this folder on sys.path.)
"""

# Units (1, 1, 2), width 8: as the `tiny_trunk` fixture of tests/conftest.py, as a config override.
TINY_TRUNK = {'units_per_block': [1, 1, 2], 'width': 8}


def tiny_relative_position(**overrides):
  """The relative-position task config (a dict for `override`), with `overrides` applied."""
  return {**dict(enabled=True, batch_size=2, patch_size=16, gap=4, jitter=1, min_area=4096, max_area=4096,
                 min_downsample=4, hidden_units=16), **overrides}  # fmt: skip
