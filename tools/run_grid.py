"""Runs (or resumes) a grid of pre-trainings and evaluations; writes the paper's tables and figures.

    python tools/run_grid.py --grid=configs/grid/mini.yaml --output_dir=runs/mini
    python tools/run_grid.py --grid=configs/grid/paper.yaml --output_dir=gs://... --cells=rp,rp_col

Finished stages are skipped, so rerunning continues a stopped grid. Tables go to
<output_dir>/tables/ (markdown + CSV, the paper's numbers in brackets), figures to
<output_dir>/figures/, the report to <output_dir>/grid_report.json. Exits non-zero if
any stage failed (the others still ran).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.grid import runner, spec  # noqa: E402

flags.DEFINE_string('grid', None, 'Grid file (configs/grid/*.yaml).')
flags.DEFINE_string('output_dir', None, 'Root folder of the cells, tables and figures.')
flags.DEFINE_list('cells', [], 'Only these cells (default: all).')
flags.DEFINE_bool('figures', True, 'Also draw Figures 3, 4 and 5.')
flags.DEFINE_integer('parallel', 1, 'Cells run at once (2 suits a 2-core machine for the miniature grid).')
flags.mark_flags_as_required(['grid', 'output_dir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    grid = spec.load_grid(FLAGS.grid)
    report = runner.run_grid(
      grid, FLAGS.output_dir, FLAGS.cells or None, figures=FLAGS.figures, parallel=FLAGS.parallel
    )
  except (spec.GridError, KeyError, ValueError) as e:
    sys.exit(f'grid error: {e}')
  with open(os.path.join(FLAGS.output_dir, 'grid_report.json'), 'w', encoding='utf-8') as f:
    f.write(runner.report_json(report))
  with open(report.tables['all'], encoding='utf-8') as f:
    print(f.read())
  if report.failures:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
