"""The folders that tests import their helpers from, by plain module name.

Tests mirror the source tree (tests/perceiver_io, tests/experiments and one
folder per task under it) without `__init__.py` files, so pytest imports each
test by its basename, and test basenames are unique across the folders. Test
helpers (tiny_task, flow_fixtures, parity_test, ...) are imported the same way,
from any folder: `conftest.py` and the scripts that tests run by path
(command_runner.py) put these folders on `sys.path`.
"""

import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent
TEST_DIRS = (
  TESTS,
  TESTS / 'perceiver_io',
  TESTS / 'experiments',
  *sorted(p for p in (TESTS / 'experiments').iterdir() if p.is_dir()),
)


def add_to_sys_path():
  """Puts the repository root first, then the test folders, on `sys.path`.

  The root comes first so that `experiments` and `perceiver_io` always name the
  packages, never the test folders of the same names.
  """
  for path in (REPO, *TEST_DIRS):
    if str(path) in sys.path:
      sys.path.remove(str(path))
  sys.path[:0] = [str(REPO), *map(str, TEST_DIRS)]
