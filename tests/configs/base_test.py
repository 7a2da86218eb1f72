"""Config loading: strict keys and types, impossible values, files, overrides, saving."""

import glob
import os

import pytest
import yaml

from mtssl_tf.configs import (
  ConfigError,
  load_config,
  override,
  parse_override,
  save_config,
  to_plain,
)
from mtssl_tf.train.experiment import ExperimentConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_are_the_papers_trunk():
  cfg = load_config(ExperimentConfig)
  assert cfg.trunk.units_per_block == (3, 4, 23)
  assert cfg.trunk.output_stride == 16
  assert cfg.runtime.precision == 'auto'  # Resolved per machine (hardware.resolve_precision).


def test_override_sets_nested_values_and_coerces():
  cfg = load_config(
    ExperimentConfig, overrides=['trunk.units_per_block=[1, 1, 2]', 'lasso.l1_weight=1', 'trunk.output_stride=8']
  )
  assert cfg.trunk.units_per_block == (1, 1, 2)
  assert isinstance(cfg.trunk.units_per_block, tuple)
  assert cfg.lasso.l1_weight == 1.0 and isinstance(cfg.lasso.l1_weight, float)
  assert cfg.trunk.output_stride == 8


@pytest.mark.parametrize(
  'text, fragment',
  [
    ('trunk.outputstride=8', "'trunk.outputstride'; did you mean 'trunk.output_stride'"),
    ('trunks.output_stride=8', "'trunks'; did you mean 'trunk'"),
    ('trunk.output_stride=eight', 'trunk.output_stride: expected an integer'),
    ('trunk.output_stride=16.0', 'trunk.output_stride: expected an integer'),
    ('trunk.output_stride=true', 'trunk.output_stride: expected an integer'),
    ('lasso.enabled=1', 'lasso.enabled: expected true/false'),
    ('trunk.units_per_block=3', 'trunk.units_per_block: expected a list'),
    ('trunk.units_per_block=[1, x, 2]', 'trunk.units_per_block[1]: expected an integer'),
    ('trunk.output_stride=12', 'trunk.output_stride: must be one of (8, 16, 32), got 12'),
    ('trunk.units_per_block=[3, 4]', 'trunk.units_per_block: need three positive unit counts'),
    ('runtime.precision=float16', 'runtime.precision: must be one of'),
    ('lasso.l1_weight=-1', 'lasso.l1_weight: must be >= 0'),
    ('lasso.init=first', 'lasso.init: must be one of'),
    ('trunk=8', 'trunk: expected a mapping'),
  ],
)
def test_bad_overrides_name_the_key(text, fragment):
  with pytest.raises(ConfigError) as e:
    load_config(ExperimentConfig, overrides=[text])
  assert fragment in str(e.value)


def test_lasso_needs_equal_unit_sizes():
  with pytest.raises(ConfigError, match='trunk.output_stride: lasso.enabled'):
    load_config(ExperimentConfig, overrides=['lasso.enabled=true', 'trunk.output_stride=32'])
  assert load_config(ExperimentConfig, overrides=['lasso.enabled=true', 'trunk.output_stride=8']).lasso.enabled


@pytest.mark.parametrize('text', ['trunk.output_stride', '=3', 'trunk..width=3', 'a.b=[1,'])
def test_malformed_override_strings(text):
  with pytest.raises(ConfigError, match='override'):
    parse_override(text)


def test_parse_override_nests_yaml_values():
  assert parse_override('a.b.c=[1, 2]') == {'a': {'b': {'c': [1, 2]}}}
  assert parse_override('a=hello') == {'a': 'hello'}


def test_yaml_errors_name_the_file(tmp_path):
  bad_key = tmp_path / 'bad_key.yaml'
  bad_key.write_text('trunk:\n  output_strid: 8\n')
  with pytest.raises(ConfigError) as e:
    load_config(ExperimentConfig, [str(bad_key)])
  assert str(bad_key) in str(e.value) and 'trunk.output_strid' in str(e.value)

  broken = tmp_path / 'broken.yaml'
  broken.write_text('trunk: [unclosed\n')
  with pytest.raises(ConfigError, match='broken.yaml.*not valid YAML'):
    load_config(ExperimentConfig, [str(broken)])

  with pytest.raises(ConfigError, match='cannot read config file.*missing.yaml'):
    load_config(ExperimentConfig, [str(tmp_path / 'missing.yaml')])

  scalar = tmp_path / 'scalar.yaml'
  scalar.write_text('42\n')
  with pytest.raises(ConfigError, match='scalar.yaml.*must hold a mapping'):
    load_config(ExperimentConfig, [str(scalar)])


def test_files_then_overrides_apply_in_order(tmp_path):
  first = tmp_path / 'a.yaml'
  first.write_text('trunk:\n  output_stride: 8\n  width: 8\n')
  second = tmp_path / 'b.yaml'
  second.write_text('trunk:\n  width: 16\n')
  cfg = load_config(ExperimentConfig, [str(first), str(second)], ['trunk.output_stride=32'])
  assert (cfg.trunk.width, cfg.trunk.output_stride) == (16, 32)


def test_saved_config_reloads_identically(tmp_path):
  cfg = load_config(ExperimentConfig, overrides=['trunk.output_stride=8', 'lasso.enabled=true'])
  path = save_config(cfg, str(tmp_path / 'run'))
  assert path == str(tmp_path / 'run' / 'config.yaml')
  reloaded = load_config(ExperimentConfig, [path])
  assert to_plain(reloaded) == to_plain(cfg)


def test_override_returns_config_for_chaining():
  cfg = ExperimentConfig()
  assert override(cfg, {'demo': {'batch_size': 4}}) is cfg
  assert cfg.demo.batch_size == 4


@pytest.mark.parametrize(
  'path',
  sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '**', '*.yaml'), recursive=True))
  + sorted(glob.glob(os.path.join(REPO_ROOT, 'mtssl_tf', 'configs', '*.yaml'))),
)
def test_shipped_yaml_files_load_and_open_with_their_purpose(path):
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  header = lines[: next(i for i, line in enumerate(lines) if not line.startswith('#'))]
  assert len(header) >= 4, f'{path} must open with a comment header'
  assert any('Command:' in line for line in header) and any('Expected' in line for line in header), path
  assert yaml.safe_load(open(path, encoding='utf-8'))  # Non-empty.
  # Each family of files is the config of its binary; all must load and validate.
  folder = os.path.basename(os.path.dirname(path))
  name = os.path.basename(path)
  if folder == 'eval' or name == 'labels_tiny.yaml':
    from mtssl_tf.evaluation.config import load_eval_config

    assert load_eval_config([path]).trunk.output_stride in (8, 16, 32)
  elif folder == 'transfer':
    from mtssl_tf.transfer.config import load_transfer_config

    # The shipped files name a teacher run the user makes first (e.g. runs/demo); a clean
    # clone has none, so the teacher is overridden here and the rest is checked as shipped.
    assert load_transfer_config([path], ['extract.init=random']).cluster.num_clusters > 0
  elif folder == 'grid' and name in ('mini.yaml', 'paper.yaml', 'noroozi_mini.yaml', 'noroozi_paper.yaml'):
    from mtssl_tf.grid.spec import load_grid

    assert load_grid(path).cells
  else:
    assert load_config(ExperimentConfig, [path]).trunk.output_stride in (8, 16, 32)


def test_config_glob_found_files():
  assert glob.glob(os.path.join(REPO_ROOT, 'configs', '**', '*.yaml'), recursive=True)
