"""Imports point one way (issue 15): binaries -> grid -> transfer/evaluation -> train -> tasks -> trunk/data/configs.

Every module of the package is parsed (ast, nothing is imported), and every import of a
package module counts, at the top or inside a function (a lazy import is still a
dependency). A module may import its own layer and the layers below it, never above.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'mtssl_tf'

# Sub-package (or top-level module) -> layer; higher layers may import lower ones.
# `export` writes SavedModels of the multi-task model, so it sits with the trainer;
# `distribute` (servers, private network) and `hardware` (CPU/GPU facts) use no task.
LAYERS = {
  'configs': 0,
  'data': 0,
  'trunk': 0,
  'distribute': 0,
  'hardware': 0,
  'compat': 0,  # The dependency lines' differences; it imports no package module.
  'assets': 0,
  'tasks': 1,
  'train': 2,
  'export': 2,
  'evaluation': 3,
  'transfer': 3,
  'grid': 4,
  'bin': 5,
}


def _part(module: str) -> str:
  """'mtssl_tf.train.launch' -> 'train'; '' for the package itself."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def package_imports(path: pathlib.Path):
  """(imported module, line) of every import of a `mtssl_tf` module in the file, nested ones included."""
  module = _module_name(path)
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # Relative: resolve against this module's package.
        package = module.split('.')
        if path.name != '__init__.py':
          package = package[:-1]
        base = '.'.join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
      else:
        base = node.module or ''
      if base == 'mtssl_tf':  # `from mtssl_tf import hardware`: the names are the modules.
        for alias in node.names:
          yield f'mtssl_tf.{alias.name}', node.lineno
      else:
        yield base, node.lineno


def violations():
  found = []
  for path in sorted(PACKAGE.rglob('*.py')):
    source = _part(_module_name(path))
    if source not in LAYERS:
      continue
    for target, line in package_imports(path):
      if not target.startswith('mtssl_tf.'):
        continue
      part = _part(target)
      if part in LAYERS and LAYERS[part] > LAYERS[source]:
        found.append(f'{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {target} ({part})')
  return found


def test_every_package_part_has_a_layer():
  packages = {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists()}
  parts = packages | {p.stem for p in PACKAGE.glob('*.py') if p.stem != '__init__'}
  assert parts <= set(LAYERS), f'give these a layer in LAYERS: {sorted(parts - set(LAYERS))}'


def test_imports_point_down_the_layers():
  found = violations()
  assert not found, 'imports from a lower layer to a higher one:\n' + '\n'.join(found)


@pytest.mark.parametrize(
  'code, expected',
  [
    ('from mtssl_tf.train import launch\n', True),
    ('def f():\n  from mtssl_tf.evaluation.backbone import X\n', True),  # Lazy imports count.
    ('import mtssl_tf.grid.spec\n', True),
    ('from mtssl_tf.data import images\n', False),
  ],
)
def test_the_check_sees_upward_imports(tmp_path, monkeypatch, code, expected):
  # A fake package whose `tasks` module holds `code`: an import above layer 1 is a violation.
  fake = tmp_path / 'mtssl_tf'
  (fake / 'tasks').mkdir(parents=True)
  (fake / 'tasks' / 'bad.py').write_text(code)
  monkeypatch.setitem(globals(), 'PACKAGE', fake)
  assert bool(violations()) == expected
