"""pytest setup shared by all tests."""

import pathlib
import sys

from absl import flags

# Let test modules import their sibling helpers (e.g. parity_test).
sys.path.insert(0, str(pathlib.Path(__file__).parent))

# absltest helpers (create_tempdir, ...) read flags, which pytest never parses.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
