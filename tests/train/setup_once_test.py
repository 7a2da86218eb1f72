"""A run is set up once (issue 15): one local `mtssl-train` builds each task once per process,
and `mtssl-export` restores the trunk without touching task data.

Every process of the run (the supervisor, the coordinator it starts, the servers) and the
export get a `sitecustomize` that appends a line to `<counts>/<pid>` each time a task is
constructed, so the count covers every build path, not one function.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.train.experiment import ExperimentConfig

_BIN = Path(sys.executable).parent

# Wraps Task.__init__ when mtssl_tf.tasks.base is first imported (no eager TensorFlow import
# in processes that never build a task).
_SITECUSTOMIZE = textwrap.dedent("""
  import importlib.abc, importlib.machinery, os, sys

  class _CountTasks(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
      if name != 'mtssl_tf.tasks.base':
        return None
      spec = importlib.machinery.PathFinder.find_spec(name, path)
      load = spec.loader.exec_module

      def exec_module(module):
        load(module)
        init = module.Task.__init__

        def counted(self, *args, **kwargs):
          with open(os.path.join(os.environ['MTSSL_TASK_COUNTS'], str(os.getpid())), 'a') as f:
            f.write(type(self).name + '\\n')
          init(self, *args, **kwargs)

        module.Task.__init__ = counted

      spec.loader.exec_module = exec_module
      return spec

  sys.meta_path.insert(0, _CountTasks())
""")


def _builds(counts: Path):
  """pid -> task names constructed in that process, in order."""
  return {p.name: p.read_text().split() for p in counts.iterdir()}


def test_train_builds_each_task_once_per_process_and_export_needs_no_data(tmp_path):
  hook = tmp_path / 'hook'
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(_SITECUSTOMIZE)
  world = tmp_path / 'world'
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'runtime': {'precision': 'float32'},  # Pinned: 'auto' is mixed_bfloat16 on CPUs with AVX512_BF16 or AMX.
    'tasks': {
      'relative_position': dict(enabled=True, batch_size=4, patch_size=16, gap=4, jitter=1, min_area=4096,
                                max_area=4096, min_downsample=4, hidden_units=16),
      'exemplar': dict(enabled=True, batch_size=4, patch_size=16, num_views=2, embedding_size=8, hidden_units=16),
    },
    'train': dict(total_steps=4, world_preset='tiny', world_dir=str(world)),
  })  # fmt: skip
  validate_all(cfg)
  config = save_config(cfg, str(tmp_path), 'input.yaml')
  run = tmp_path / 'run'
  counts = tmp_path / 'train_counts'
  counts.mkdir()
  env = dict(os.environ, MTSSL_TASK_COUNTS=str(counts))
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(hook), os.environ.get('PYTHONPATH')]))
  train = subprocess.run(
    [str(_BIN / 'mtssl-train'), f'--config={config}', f'--model_dir={run}'],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env,
  )  # fmt: skip
  assert train.returncode == 0, train.stdout[-3000:]
  assert (run / 'saved_model' / 'saved_model.pb').exists()
  builds = _builds(counts)
  # The supervisor (which also exports) and the coordinator; servers build no task.
  assert len(builds) == 2, builds
  for pid, names in builds.items():
    assert sorted(names) == ['exemplar', 'relative_position'], f'process {pid} built {names}'

  # The run's data is gone: the export restores the trunk without reading or regenerating it.
  shutil.rmtree(world)
  counts = tmp_path / 'export_counts'
  counts.mkdir()
  env['MTSSL_TASK_COUNTS'] = str(counts)
  exported = subprocess.run(
    [str(_BIN / 'mtssl-export'), f'--model_dir={run}', f'--export_dir={tmp_path / "export"}'],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env,
  )  # fmt: skip
  assert exported.returncode == 0, exported.stdout[-3000:]
  assert (tmp_path / 'export' / 'saved_model.pb').exists()
  assert not world.exists()
  assert [sorted(names) for names in _builds(counts).values()] == [['exemplar', 'relative_position']]
