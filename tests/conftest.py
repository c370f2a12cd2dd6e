"""pytest setup shared by all tests."""

import pathlib
import sys

from absl import flags

# Let test modules import their helpers (e.g. parity_test) from any folder.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import search_paths  # noqa: E402

search_paths.add_to_sys_path()

# absltest helpers (create_tempdir, ...) read flags, which pytest never parses.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
