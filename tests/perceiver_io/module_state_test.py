"""The model library keeps no mutable state at module level.

Layers read how they run from the `runtime.Runtime` they are given, never
from a module global read while tracing; tables are read-only mappings or
tuples.
"""

import importlib
import pkgutil

import ml_collections
from absl.testing import absltest

import perceiver_io

MUTABLE = (list, dict, set, bytearray, ml_collections.ConfigDict)


def _modules():
  for info in pkgutil.walk_packages(perceiver_io.__path__, 'perceiver_io.'):
    yield importlib.import_module(info.name)


class ModuleStateTest(absltest.TestCase):
  def test_no_module_level_mutable_values(self):
    found = []
    for module in _modules():
      for name, value in vars(module).items():
        if name.startswith('__'):
          continue
        if isinstance(value, MUTABLE):
          found.append(f'{module.__name__}.{name}: {type(value).__name__}')
    self.assertEmpty(found)

  def test_walks_the_whole_library(self):
    names = {module.__name__ for module in _modules()}
    self.assertContainsSubset(
      {
        'perceiver_io.runtime',
        'perceiver_io.ops.attend',
        'perceiver_io.models',
      },
      names,
    )


if __name__ == '__main__':
  absltest.main()
