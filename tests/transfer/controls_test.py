"""Knowledge-transfer controls in the shipped configs: the random network's student trains at lr 0.001."""

import os

import pytest

from mtssl_tf.grid.spec import load_grid
from mtssl_tf.transfer.config import load_transfer_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cell_config(grid, name):
  """The transfer config a grid cell runs with (files and overrides in the runner's order)."""
  cell = grid.cell(name)
  return load_transfer_config(grid.transfer_configs + cell.transfer, grid.transfer_overrides + cell.transfer_overrides)


@pytest.mark.parametrize('grid_file', ['noroozi_paper.yaml', 'mini.yaml'])
def test_random_network_control_trains_at_the_papers_lower_rate(grid_file, monkeypatch):
  monkeypatch.chdir(ROOT)  # Grid files name configs from the project root.
  grid = load_grid(os.path.join('configs', 'grid', grid_file))
  random = _cell_config(grid, 'cc_random')
  # Noroozi et al. 2018 §5: "we decreased the initial learning rate to 0.001" for random pseudo-labels.
  assert random.extract.init == 'random' and random.extract.features == 'network'
  assert random.train.learning_rate == 0.001
  # The other rows keep the dataset config's rate (0.01, bvlc_alexnet's), the supervised student included.
  for name in ('cc_hog', 'cc_supervised'):
    assert _cell_config(grid, name).train.learning_rate == 0.01
  assert _cell_config(grid, 'cc_hog').extract.hog_encoding == 'bag_of_words'


def test_control_file_alone_sets_init_and_rate():
  cfg = load_transfer_config([os.path.join(ROOT, 'configs', 'transfer', 'random_control.yaml')])
  assert (cfg.extract.init, cfg.train.learning_rate) == ('random', 0.001)
