"""The grid runner: parsing, checkpoint choice, tables, and a two-cell grid end to end with resume.

The end-to-end grid pre-trains one tiny network (relative position + colorization with
lasso, 20 steps, two compute ticks) through `mtssl-train`'s local cluster and evaluates
it by a 3-step linear probe at the end and at each tick; a second cell reuses that
network with an evaluation lasso (Table 4's two lasso rows). A rerun must skip all of it.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from mtssl_tf.grid import outputs, runner, spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_grid(world_dir):
  world = [f'train.world_dir={world_dir}', 'train.world_preset=tiny']
  return {
    'name': 'test',
    'train_configs': [os.path.join(ROOT, 'configs/grid/tiny_base.yaml')],
    # The tiny world's 64 px images and a width-8 trunk: 20 steps take seconds.
    'train_overrides': world + [
      'trunk.width=8', 'train.total_steps=20', 'train.cost_tick=2.0', 'train.log_every_seconds=5.0',
      'tasks.relative_position.batch_size=4', 'tasks.relative_position.patch_size=16', 'tasks.relative_position.gap=4',
      'tasks.relative_position.jitter=1', 'tasks.relative_position.min_area=4096',
      'tasks.relative_position.max_area=4096', 'tasks.relative_position.min_downsample=4',
      'tasks.relative_position.hidden_units=16', 'tasks.colorization.batch_size=4',
      'tasks.colorization.crop_size=32', 'tasks.colorization.hidden_units=16',
    ],
    'tick_limit': 2,
    # Knowledge transfer at test size: the tiny world's 40 images, 4 clusters, a few steps.
    'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')],
    'transfer_overrides': [
      f'world_dir={world_dir}', 'world_preset=tiny', 'extract.image_size=64', 'extract.crop_size=64',
      'extract.grid=2', 'extract.batch_size=16', 'extract.shard_size=20', 'extract.num_images=40',
      'cluster.num_clusters=4', 'cluster.iterations=5', 'train.width=0.125', 'train.dropout=0.0',
      'train.image_size=64', 'train.crop_size=56', 'train.steps=4', 'train.batch_size=8', 'train.log_every_steps=2',
      'train.checkpoint_every_steps=4', 'train.shuffle_buffer=40', 'probe.image_size=64', 'probe.crop_size=56',
      'probe.steps=3', 'probe.batch_size=8', 'probe.eval_batch_size=10', 'probe.log_every_steps=3',
      'probe.checkpoint_every_steps=3', 'probe.shuffle_buffer=40',
    ],
    'evaluations': {
      'linear': {
        'configs': [os.path.join(ROOT, 'configs/eval/linear_tiny.yaml')],
        'overrides': [f'world_dir={world_dir}', 'world_preset=tiny', 'linear.steps=3', 'linear.probe_endpoints=[]',
                      'linear.image_size=64', 'linear.crop_size=56'],
      },
    },
    'cells': [
      {'name': 'rp_col_lasso', 'rows': {'table4': 'Pre-train Only Lasso'},
       'train': [os.path.join(ROOT, 'configs/grid/rp_col.yaml')], 'train_overrides': ['lasso.enabled=true'],
       'evaluate': ['linear'], 'ticks': ['linear']},
      {'name': 'rp_col_lasso_eval_lasso', 'rows': {'table4': 'Pre-train & Eval Lasso'}, 'pretrained': 'rp_col_lasso',
       'evaluate': ['linear'], 'eval_overrides': ['linear.use_lasso=true']},
      # Clusters of the first cell's width-8 trunk (the YAML's width-16 trunk must give way).
      {'name': 'cc', 'rows': {'cc_table1': '2000', 'cc_table2': 'ImageNet / ImageNet'}, 'teacher': 'rp_col_lasso',
       'transfer': []},
    ],
  }  # fmt: skip


@pytest.fixture(scope='module')
def grid_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('grid')
  data = _tiny_grid(str(root / 'world'))
  path = root / 'grid.yaml'
  path.write_text(yaml.safe_dump(data))
  lines = []
  report = runner.run_grid(spec.load_grid(str(path)), str(root / 'out'), log=lines.append)
  return {'root': root, 'data': data, 'report': report, 'log': '\n'.join(lines), 'out': str(root / 'out')}


@pytest.mark.scenario
def test_two_cells_run_end_to_end(grid_run):
  report, out = grid_run['report'], grid_run['out']
  assert not report.failures, grid_run['log']
  ran = set(report.ran)
  assert {'rp_col_lasso/pretrain', 'rp_col_lasso/eval_linear', 'rp_col_lasso_eval_lasso/eval_linear'} <= ran
  assert set(report.stage_seconds) == ran and report.wall_seconds >= max(report.stage_seconds.values()) - 0.1
  assert 'min of stage time' in grid_run['log']
  tick_runs = [r for r in ran if r.startswith('rp_col_lasso/tick-')]
  assert len(tick_runs) == 2, ran  # tick_limit: the last two ticks.
  for cell in ('rp_col_lasso', 'rp_col_lasso_eval_lasso'):
    with open(os.path.join(out, cell, 'eval', 'linear', 'results.json')) as f:
      assert 0.0 <= json.load(f)['top5'] <= 1.0
  # The reusing cell evaluated the first cell's network: it has no pre-training of its own.
  assert not os.path.exists(os.path.join(out, 'rp_col_lasso_eval_lasso', 'checkpoints'))
  assert '[test] cell 2/3: rp_col_lasso_eval_lasso' in grid_run['log']
  assert '[test] 3/3 cells' in grid_run['log']
  assert 'cc/transfer' in ran
  with open(os.path.join(out, 'cc', 'transfer_config.yaml')) as f:
    transfer = yaml.safe_load(f)
  assert transfer['extract']['init'] == os.path.join(out, 'rp_col_lasso')  # checkpoint: latest = the run dir.
  assert transfer['extract']['trunk']['width'] == 8 and transfer['cluster']['num_clusters'] == 4


@pytest.mark.scenario
def test_tables_have_the_paper_layout_and_numbers(grid_run):
  out = grid_run['out']
  assert set(grid_run['report'].tables) == {'table4', 'cc_table1', 'cc_table2', 'all'}
  with open(os.path.join(out, 'tables', 'table4.csv'), newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0][:3] == ['Pre-training', 'Cell', 'ImageNet top-5 (%)']
  assert [r[0] for r in rows[1:]] == ['Pre-train Only Lasso', 'Pre-train & Eval Lasso']
  # Our top-5 with the paper's beside it; detection was not run: just the paper's mAP.
  assert rows[1][2].endswith('[68.09]') and rows[1][2] != '[68.09]'
  assert rows[2][2].endswith('[69.44]')
  assert rows[1][rows[0].index('VOC07 mAP@0.5 11-pt (%)')] == '[68.49]'
  markdown = open(os.path.join(out, 'tables', 'table4.md')).read()
  assert '## Table 4' in markdown and 'Table 4).' in markdown
  # Noroozi's Table 1: the student's probe top-1 per layer, the paper's VOC mAP beside.
  with open(os.path.join(out, 'tables', 'cc_table1.csv'), newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['Row', 'Cell'] + [f'conv{i} top-1 (%)' for i in range(1, 6)] + ['VOC07 cls. mAP (%)']
  assert rows[1][:2] == ['2000', 'cc'] and rows[1][-1] == '[69.90]'
  assert all(0.0 <= float(v) <= 100.0 for v in rows[1][2:7])
  assert 'Noroozi et al. 2018, Table 2' in open(os.path.join(out, 'tables', 'cc_table2.md')).read()


@pytest.mark.scenario
def test_figures_from_the_grid(grid_run):
  figures = grid_run['report'].figures
  names = sorted(os.path.basename(p) for p in figures)
  assert names == ['figure3.png', 'figure4_rp_col_lasso.png', 'figure5_cc.png', 'noroozi_figure4_cc.png'], grid_run[
    'log'
  ]
  series = outputs.collect_ticks(spec.parse_grid(grid_run['data']), grid_run['out'])
  points = series['ImageNet top-5 (%)']['rp_col_lasso']
  assert len(points) == 2 and points[0][0] < points[1][0]  # Compute grows from tick to tick.
  assert os.listdir(os.path.join(grid_run['out'], 'figures', 'tensorboard'))


@pytest.mark.scenario
def test_rerun_skips_finished_cells_and_reports_a_failing_one(grid_run):
  data = dict(grid_run['data'])
  # A cell whose evaluation must fail: its trunk source does not exist.
  data['cells'] = data['cells'] + [{'name': 'broken', 'init': str(grid_run['root'] / 'nowhere'),
                                    'evaluate': ['linear']}]  # fmt: skip
  path = grid_run['root'] / 'grid_rerun.yaml'
  path.write_text(yaml.safe_dump(data))
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, 'tools', 'run_grid.py'), f'--grid={path}', f'--output_dir={grid_run["out"]}'],
    capture_output=True, text=True, cwd=ROOT, timeout=900,  # A hang guard only: under load 19 it took over 120 s.
  )  # fmt: skip
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(os.path.join(grid_run['out'], 'grid_report.json')) as f:
    report = json.load(f)
  assert report['ran'] == []  # Everything that had finished was skipped, nothing re-run.
  assert {'rp_col_lasso/pretrain', 'rp_col_lasso/eval_linear', 'rp_col_lasso_eval_lasso/eval_linear',
          'cc/transfer'} <= set(report['skipped'])  # fmt: skip
  assert [(f['cell'], f['stage']) for f in report['failures']] == [('broken', 'eval_linear')]
  assert 'broken: eval_linear FAILED' in proc.stdout and 'Pre-train Only Lasso' in proc.stdout


def test_parse_errors_name_the_problem(tmp_path):
  cell = {'name': 'a', 'train': [os.path.join(ROOT, 'configs/grid/rp.yaml')]}
  cases = {
    'unknown grid keys': {'cells': [cell], 'bogus': 1},
    "cell 'a': unknown keys": {'cells': [dict(cell, colour=1)]},
    "pretrained: no cell 'z'": {'cells': [cell, {'name': 'b', 'pretrained': 'z'}]},
    'duplicate cell names': {'cells': [cell, cell]},
    'unknown table': {'cells': [dict(cell, rows={'table9': 'RP'})]},
    'ticks': {'cells': [dict(cell, ticks=['linear'])]},
    "give train": {'cells': [{'name': 'a'}]},
    'not found': {'cells': [dict(cell, train=['no/such.yaml'])]},
    "'latest' or 'tick:<k>'": {'cells': [cell], 'checkpoint': 'best'},
    "teacher: no cell 'z'": {'cells': [cell, {'name': 'b', 'teacher': 'z', 'transfer': []}],
                             'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')]},
    'need a transfer key': {'cells': [cell, {'name': 'b', 'teacher': 'a'}]},
    "not \\['init'\\]": {'cells': [{'name': 'b', 'transfer': [], 'init': 'random'}]},
    "no config files here or in the grid's transfer_configs": {'cells': [{'name': 'b', 'transfer': []}]},
    "transfer_step 'train': choose from all, distill, attention": {
      'cells': [{'name': 'b', 'transfer': [], 'transfer_step': 'train'}],
      'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')]},
    'transfer_step need a transfer key': {'cells': [cell, {'name': 'b', 'train': cell['train'],
                                                           'transfer_step': 'distill'}]},
    # A mistyped placeholder would reach the binaries unreplaced, as a literal folder name.
    "evaluations.detection.overrides: 'd.c={outputdir}/p' names {outputdir}; the only placeholder is {output_dir}": {
      'cells': [cell], 'evaluations': {'detection': {'overrides': ['d.c={outputdir}/p']}}},
    "cell 'a': eval_overrides: .* names {cell}, {out}": {
      'cells': [dict(cell, eval_overrides=['x={out}/{cell}/{output_dir}'])]},
    "evaluations.voc07_cls.seeds: \\[1, 2, 1\\] repeats a seed": {
      'cells': [cell], 'evaluations': {'voc07_cls': {'seeds': [1, 2, 1]}}},
    'evaluations.voc07_cls.seeds: expected a list of seeds': {
      'cells': [cell], 'evaluations': {'voc07_cls': {'seeds': 3}}},
    'evaluations.knn.seeds: the knn evaluation has no knn.seed': {
      'cells': [cell], 'evaluations': {'knn': {'seeds': [1]}}},
    "evaluations.voc07_cls: unknown keys \\['seed'\\]": {
      'cells': [cell], 'evaluations': {'voc07_cls': {'seed': [1]}}},
  }  # fmt: skip
  for message, data in cases.items():
    with pytest.raises(spec.GridError, match=message.replace('(', r'\(').replace('{', r'\{')):
      spec.parse_grid(data, str(tmp_path))


def test_shipped_grids_parse_and_cover_every_paper_row():
  from mtssl_tf.grid import paper

  doersch = {(t, label) for t, rows in paper.TABLES.items() for label in rows}
  # Table 3 also read with the other evaluation input: the /H networks fed grey (their pre-training input).
  grey = {('table3', 'RP / H, grey eval'), ('table3', 'RP+Col / H, grey eval')}
  cc = {(t, label) for t in ('cc_table1', 'cc_table2') for label in paper.CC_TABLES[t]}
  cc |= {('cc_table4', label) for label in ('CC+HOG', 'Random', 'Supervised')}
  # Noroozi at paper scale: every row of Tables 1-4 with his teachers (Distillation and [37]+vgg-Jigsaw++ through
  # their transfer_step).
  table3 = set(paper.CC_TABLES['cc_table3'])
  noroozi = cc | {('cc_table3', label) for label in table3}
  noroozi |= {('cc_table4', label) for label in ('CC+Jigsaw++', 'CC+vgg-Jigsaw++')}
  # Table 5: every row ('Places labels': the student trained on Places205's labels).
  noroozi |= {('cc_table5', label) for label in paper.CC_TABLES['cc_table5']}
  noroozi |= {('cc_table6', label) for label in ('CC+vgg-Jigsaw++', 'CC+Jigsaw++', 'CC+vgg-Context', 'Random',
                                                 'Jigsaw++', 'Supervised')}  # fmt: skip
  # The miniatures: Doersch's tables plus Tables 1, 2, 4 from a ResNet teacher (mini), and Table 3's headline.
  headline = {'CC+vgg-Jigsaw++', 'CC+Jigsaw++', 'Jigsaw++', 'Random', 'Supervised', 'Distillation', '[37]+vgg-Jigsaw++'}
  expected = {
    'mini': doersch | grey | cc | {('cc_table4', 'CC+RP+Col+Ex+MS')},
    'paper': doersch | grey,
    'noroozi_paper': noroozi,
    'noroozi_mini': {('cc_table3', label) for label in headline}
    | {('cc_table4', label) for label in ('CC+vgg-Jigsaw++', 'CC+Jigsaw++', 'Supervised')}
    | {
      ('cc_table5', label)
      for label in ('CC+vgg-Jigsaw++', 'CC+Jigsaw++', 'Jigsaw++', 'Random', 'Supervised', 'Places labels')
    }  # fmt: skip
    | {('cc_table6', label) for label in ('CC+vgg-Jigsaw++', 'CC+Jigsaw++', 'Jigsaw++', 'Random', 'Supervised')},
  }
  for name, rows in expected.items():
    grid = spec.load_grid(os.path.join(ROOT, 'configs', 'grid', f'{name}.yaml'))
    covered = {(t, label) for c in grid.cells for t, label in c.rows.items()}
    assert covered == rows, (name, rows - covered, covered - rows)
  assert spec.load_grid(os.path.join(ROOT, 'configs', 'grid', 'paper.yaml')).checkpoint == 'tick:7'


def test_table1_reports_top1_first(tmp_path):
  run = tmp_path / 'out' / 'rp' / 'eval' / 'linear'
  run.mkdir(parents=True)
  (run / 'results.json').write_text(json.dumps({'top1': 0.25, 'top5': 0.5}))
  grid = spec.parse_grid({'cells': [{'name': 'rp', 'rows': {'table1': 'RP', 'table2': 'RP'},
                                       'train': [os.path.join(ROOT, 'configs/grid/rp.yaml')]}]})  # fmt: skip
  header, rows = outputs.table_rows(grid, str(tmp_path / 'out'), 'table1')
  assert header[2] == 'ImageNet top-1 (%)' and rows[0][2] == '25.00 [36.21]' and rows[0][3] == '50.00'
  header, rows = outputs.table_rows(grid, str(tmp_path / 'out'), 'table2')
  assert header[2] == 'ImageNet top-5 (%)' and rows[0][2] == '50.00 [59.21]' and rows[0][3] == '25.00'


def test_table1_transcription_agrees_with_the_text():
  from mtssl_tf.grid import paper

  claims = paper.table1_claims()
  assert len(claims) == 9 and all(claims.values()), claims


def test_cells_run_after_the_cells_they_reuse(tmp_path):
  rp = os.path.join(ROOT, 'configs/grid/rp.yaml')
  tiny = os.path.join(ROOT, 'configs/transfer/tiny.yaml')
  grid = spec.parse_grid({
    'transfer_configs': [tiny],
    'cells': [
      {'name': 'reuse', 'pretrained': 'b', 'evaluate': ['linear']},
      {'name': 'cc', 'teacher': 'b', 'transfer': []},
      {'name': 'a', 'train': [rp]},
      {'name': 'b', 'train': [rp]},
    ],
  })  # fmt: skip
  assert [c.name for c in runner._dependencies_first(grid.cells)] == ['b', 'reuse', 'cc', 'a']
  with pytest.raises(ValueError, match='parallel'):
    runner.run_grid(grid, str(tmp_path), parallel=0)


def test_every_pre_training_cell_and_row_file_makes_a_valid_config():
  from mtssl_tf.configs import load_config
  from mtssl_tf.train.experiment import ExperimentConfig

  tasks = ('relative_position', 'colorization', 'exemplar', 'motion_segmentation', 'jigsaw')
  for name in ('mini', 'paper', 'noroozi_mini', 'noroozi_paper'):
    grid = spec.load_grid(os.path.join(ROOT, 'configs', 'grid', f'{name}.yaml'))
    for cell in grid.cells:
      if cell.pretrains:
        files, overrides = grid.train_configs + cell.train, grid.train_overrides + cell.train_overrides
        cfg = load_config(ExperimentConfig, files, overrides)
        assert any(getattr(cfg.tasks, t).enabled for t in tasks), (name, cell.name)
  # Every row file also runs in miniature (the "tiny variant" of each row).
  tiny = os.path.join(ROOT, 'configs', 'grid', 'tiny_base.yaml')
  not_rows = ('mini.yaml', 'paper.yaml', 'noroozi_mini.yaml', 'noroozi_paper.yaml', 'tiny_base.yaml',
              'paper_base.yaml', 'labels_tiny.yaml')  # fmt: skip
  rows = [p for p in glob.glob(os.path.join(ROOT, 'configs', 'grid', '*.yaml')) if os.path.basename(p) not in not_rows]
  assert len(rows) == 13
  for row in rows:
    cfg = load_config(ExperimentConfig, [tiny, row])
    assert cfg.trunk.width == 16 and cfg.train.world_preset == 'small', row


def test_a_transfer_cells_evaluations_run_on_its_student_and_fill_noroozi_table3(tmp_path):
  """Noroozi Table 3: a transfer cell's `evaluate` runs on `<cell>/student`; the table reads cls/det/seg."""
  tiny = os.path.join(ROOT, 'configs/transfer/tiny.yaml')
  grid = spec.parse_grid({
    'transfer_configs': [tiny],
    'cells': [{'name': 'cc', 'rows': {'cc_table3': 'CC+vgg-Jigsaw++', 'cc_table1': '2000'}, 'transfer': [],
               'evaluate': ['voc07_cls', 'voc12_seg', 'detection']}],
  })  # fmt: skip
  out = tmp_path / 'out'
  calls = []
  stage_runner = runner._Runner(grid, str(out), log=lambda _: None, python=sys.executable, env={})
  stage_runner._subprocess = lambda cell, stage, argv: calls.append((stage, argv)) or True
  assert stage_runner.run_cell(grid.cells[0], set())
  assert [stage for stage, _ in calls] == ['transfer', 'eval_voc07_cls', 'eval_voc12_seg', 'eval_detection']
  for _, argv in calls[1:]:
    assert f'--init={out / "cc" / "student"}' in argv and f'--model_dir={out / "cc"}' in argv

  results = {'voc07_cls': {'mAP': 0.5}, 'voc12_seg': {'mIoU': 0.25},
             'detection': {'PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point': 0.125,
                           'multiscale_PascalBoxes_Precision/mAP@0.5IOU_VOC07_11point': 0.0625}}  # fmt: skip
  for kind, values in results.items():
    (out / 'cc' / 'eval' / kind).mkdir(parents=True)
    (out / 'cc' / 'eval' / kind / 'results.json').write_text(json.dumps(values))
  header, rows = outputs.table_rows(grid, str(out), 'cc_table3')
  assert header[2:] == [title for title, _, _ in outputs.paper.CC_TABLE3_COLUMNS]
  assert rows == [['CC+vgg-Jigsaw++', 'cc', '50.00 [72.50]', '12.50 [56.50]', '6.25 [57.20]', '25.00 [42.60]']]
  header, rows = outputs.table_rows(grid, str(out), 'cc_table1')  # Table 1's own metric: VOC07 cls. mAP.
  assert header[-1] == 'VOC07 cls. mAP (%)' and rows[0][-1] == '50.00 [69.90]'
  # A paper '-' stays without brackets.
  grid.cells[0].rows['cc_table3'] = 'Random'
  assert outputs.table_rows(grid, str(out), 'cc_table3')[1][0][4] == '6.25'


def test_noroozi_tables_5_and_6_read_the_places_and_nonlinear_results(tmp_path):
  """Table 5: places_linear's probe per conv layer; Table 6: nonlinear's network per last frozen layer."""
  grid = spec.parse_grid({
    'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')],
    'cells': [{'name': 'cc', 'rows': {'cc_table5': 'CC+vgg-Jigsaw++', 'cc_table6': 'CC+vgg-Jigsaw++'},
               'transfer': [], 'evaluate': ['places_linear', 'nonlinear']}],
  })  # fmt: skip
  results = {
    'places_linear': {f'conv{i}_top1': i / 10 for i in range(1, 6)},
    'nonlinear': {'conv1_top1': 0.5, 'conv5_top1': 0.25, 'fc7_top1': 0.125},
  }  # Three of seven columns.
  for kind, values in results.items():
    (tmp_path / 'cc' / 'eval' / kind).mkdir(parents=True)
    (tmp_path / 'cc' / 'eval' / kind / 'results.json').write_text(json.dumps(values))
  header, rows = outputs.table_rows(grid, str(tmp_path), 'cc_table5')
  assert header[2:] == [f'Places conv{i} top-1 (%)' for i in range(1, 6)]
  assert rows == [['CC+vgg-Jigsaw++', 'cc', '10.00 [22.90]', '20.00 [34.20]', '30.00 [37.50]', '40.00 [37.10]',
                   '50.00 [34.40]']]  # fmt: skip
  header, rows = outputs.table_rows(grid, str(tmp_path), 'cc_table6')
  assert header[2:] == [f'{layer} frozen top-1 (%)' for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6',
                                                                   'fc7')]  # fmt: skip
  assert rows == [['CC+vgg-Jigsaw++', 'cc', '50.00 [55.90]', '[55.10]', '[52.40]', '[49.50]', '25.00 [43.90]',
                   '[37.30]', '12.50 [27.90]']]  # fmt: skip
  assert 'Noroozi et al. 2018, Table 6' in outputs.table_markdown('cc_table6', header, rows)


def test_noroozi_tables_carry_only_their_columns_notes(tmp_path):
  grid = spec.parse_grid({
    'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')],
    'cells': [{'name': 'cc', 'rows': {'cc_table3': 'CC+Jigsaw++', 'cc_table4': 'CC+Jigsaw++'}, 'transfer': [],
               'evaluate': ['detection']}],
  })  # fmt: skip
  folder = tmp_path / 'cc' / 'eval' / 'detection'
  folder.mkdir(parents=True)
  (folder / 'results.json').write_text(json.dumps({'table_note': 'RPN proposals.'}))
  assert outputs.table_notes(grid, str(tmp_path), 'cc_table3') == ['RPN proposals.']
  assert outputs.table_notes(grid, str(tmp_path), 'cc_table4') == []  # Probes only: no detection column.


@pytest.mark.parametrize('step', ['distill', 'attention'])
def test_a_transfer_step_cell_runs_that_step_and_evaluates_its_folder(step, tmp_path):
  """Table 3's distillation and [37] rows: `mtssl-transfer <step>`, evaluations on `<cell>/<step>`, skip when done."""
  tiny = os.path.join(ROOT, 'configs/transfer/tiny.yaml')
  grid = spec.parse_grid({
    'transfer_configs': [tiny],
    'cells': [{'name': 'at', 'rows': {'cc_table3': '[37]+vgg-Jigsaw++'}, 'transfer': [], 'transfer_step': step,
               'evaluate': ['voc07_cls']}],
  })  # fmt: skip
  out = tmp_path / 'out'
  calls = []
  stage_runner = runner._Runner(grid, str(out), log=lambda _: None, python=sys.executable, env={})
  stage_runner._subprocess = lambda cell, stage, argv: calls.append((stage, argv)) or True
  assert stage_runner.run_cell(grid.cells[0], set())
  assert [stage for stage, _ in calls] == ['transfer', 'eval_voc07_cls']
  assert calls[0][1][3:5] == [step, f'--model_dir={out / "at"}']  # python -m mtssl_tf.bin.transfer <step>
  assert f'--init={out / "at" / step}' in calls[1][1]
  # Its own results.json marks the step done (there are no student probes to wait for).
  (out / 'at' / step).mkdir(parents=True)
  (out / 'at' / step / 'results.json').write_text('{}')
  calls.clear()
  assert stage_runner.run_cell(grid.cells[0], set())
  assert [stage for stage, _ in calls] == ['eval_voc07_cls']


def test_output_dir_placeholder_reaches_every_stage_as_the_absolute_folder(tmp_path, monkeypatch):
  """`{output_dir}` in train, transfer and eval overrides: one folder the cells share (a proposal cache)."""
  monkeypatch.chdir(tmp_path)
  grid = spec.parse_grid({
    'train_overrides': ['train.a={output_dir}/t'],
    'transfer_configs': [os.path.join(ROOT, 'configs/transfer/tiny.yaml')],
    'transfer_overrides': ['extract.b={output_dir}/x'],
    'evaluations': {'detection': {'configs': [], 'overrides': ['detection.proposal_cache_dir={output_dir}/p']}},
    'cells': [{'name': 'teacher', 'train': [os.path.join(ROOT, 'configs/grid/rp.yaml')],
               'evaluate': ['detection']},
              {'name': 'cc', 'teacher': 'teacher', 'transfer': [], 'evaluate': ['detection']}],
  })  # fmt: skip
  calls = []
  stage_runner = runner._Runner(grid, 'out', log=lambda _: None, python=sys.executable, env={})  # A relative folder.
  stage_runner._subprocess = lambda cell, stage, argv: calls.append((stage, argv)) or True
  assert stage_runner.run_cell(grid.cells[0], set()) and stage_runner.run_cell(grid.cells[1], set())
  out = str(tmp_path / 'out')
  flags = {stage: [a for a in argv if a.startswith('--override=') and '{' not in a] for stage, argv in calls}
  assert f'--override=train.a={out}/t' in flags['pretrain']
  assert f'--override=extract.b={out}/x' in flags['transfer']
  assert flags['eval_detection'].count(f'--override=detection.proposal_cache_dir={out}/p') == 1
  assert not any('{output_dir}' in a for _, argv in calls for a in argv)


def test_an_evaluations_seeds_run_last_in_their_folders_and_tables_show_mean_and_std(tmp_path):
  """`seeds`: each cell's evaluation again per seed, `<kind>.seed` overriding the cell's own; tables average them."""
  grid = spec.parse_grid({
    'evaluations': {'voc07_cls': {'overrides': ['voc07_cls.steps=60'], 'seeds': [1, 2]}},
    'cells': [{'name': 'random', 'init': 'random', 'rows': {'cc_table3': 'Random'}, 'evaluate': ['voc07_cls'],
               'eval_overrides': ['voc07_cls.seed=7']}],
  })  # fmt: skip
  assert grid.eval_seeds == {'voc07_cls': [1, 2]}
  out = tmp_path / 'out'
  calls = []
  stage_runner = runner._Runner(grid, str(out), log=lambda _: None, python=sys.executable, env={})
  stage_runner._subprocess = lambda cell, stage, argv: calls.append((stage, argv)) or True
  assert stage_runner.run_cell(grid.cells[0], set())
  assert [stage for stage, _ in calls] == ['eval_voc07_cls', 'eval_voc07_cls_seed1', 'eval_voc07_cls_seed2']
  assert f'--model_dir={out / "random"}' in calls[0][1] and '--override=voc07_cls.seed=1' not in calls[0][1]
  for seed, (_, argv) in zip((1, 2), calls[1:]):
    assert f'--model_dir={out / "random" / "seeds" / str(seed)}' in argv and '--init=random' in argv
    assert argv[-1] == f'--override=voc07_cls.seed={seed}'  # After the cell's seed=7.
  # Each seed's results.json marks it done, as the cell's own.
  for folder, value in ((out / 'random', 0.25), (out / 'random' / 'seeds' / '1', 0.5)):
    (folder / 'eval' / 'voc07_cls').mkdir(parents=True)
    (folder / 'eval' / 'voc07_cls' / 'results.json').write_text(json.dumps({'mAP': value}))
  calls.clear()
  assert stage_runner.run_cell(grid.cells[0], set())
  assert [stage for stage, _ in calls] == ['eval_voc07_cls_seed2']
  # Two of three runs finished: mean 37.50, sample std of (25, 50) = 17.68; the paper's Random beside.
  header, rows = outputs.table_rows(grid, str(out), 'cc_table3')
  assert rows[0][2] == '37.50 ± 17.68 (n=2) [53.30]'
  (out / 'random' / 'seeds' / '2' / 'eval' / 'voc07_cls').mkdir(parents=True)
  (out / 'random' / 'seeds' / '2' / 'eval' / 'voc07_cls' / 'results.json').write_text(json.dumps({'mAP': 0.75}))
  assert outputs.table_rows(grid, str(out), 'cc_table3')[1][0][2] == '50.00 ± 25.00 (n=3) [53.30]'


def test_the_report_times_each_stage_it_ran(tmp_path):
  """stage_seconds holds each finished stage's time (a grid header's expected time is read off it); failures none."""
  grid = spec.parse_grid({'cells': [{'name': 'a', 'init': 'random', 'evaluate': ['linear']}]})
  lines = []
  stage_runner = runner._Runner(grid, str(tmp_path), log=lines.append, python=sys.executable, env=dict(os.environ))
  cell = grid.cells[0]
  assert stage_runner._subprocess(cell, 'slow', [sys.executable, '-c', 'import time; time.sleep(0.3)'])
  assert not stage_runner._subprocess(cell, 'broken', [sys.executable, '-c', 'raise SystemExit(3)'])
  report = stage_runner.report
  assert report.ran == ['a/slow'] and list(report.stage_seconds) == ['a/slow']
  assert report.stage_seconds['a/slow'] >= 0.3  # The child slept that long; an upper bound would be a timing assert.
  assert [f.stage for f in report.failures] == ['broken']
  assert json.loads(runner.report_json(report))['stage_seconds'] == report.stage_seconds
