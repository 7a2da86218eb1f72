"""Gathers evaluation results into the paper's table layout (markdown + CSV).

    python tools/results_table.py RP=runs/rp RP+Col=runs/rp_col random=runs/random \
        --markdown=results.md --csv=results.csv

Each argument is `label=run_dir` (or just `run_dir`; the label is then the folder
name); the run dir holds `eval/<name>/results.json` files written by `mtssl-eval`.
Labels that name a row of Doersch & Zisserman 2017 Table 2 (RP, RP+Col, ...,
'ImageNet labels') get the paper's numbers beside ours.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from mtssl_tf.evaluation import results_table  # noqa: E402

flags.DEFINE_string('markdown', None, 'Also write the markdown table to this file.')
flags.DEFINE_string('csv', None, 'Also write the table as CSV to this file.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give at least one run: label=run_dir or run_dir')
  try:
    runs = results_table.parse_run_args(argv[1:])
    header, rows = results_table.build_rows(runs)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  # Notes the results carry (detection of an AlexNet: RPN proposals in place of selective search).
  markdown = results_table.to_markdown(header, rows, results_table.notes([results_table.read_run(d) for _, d in runs]))
  print(markdown)
  if FLAGS.markdown:
    with open(FLAGS.markdown, 'w', encoding='utf-8') as f:
      f.write(markdown)
  if FLAGS.csv:
    with open(FLAGS.csv, 'w', encoding='utf-8', newline='') as f:
      f.write(results_table.to_csv(header, rows))


if __name__ == '__main__':
  app.run(main)
