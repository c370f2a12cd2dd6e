"""pytest setup shared by all tests."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

from absl import flags

# Let test modules import their helpers (e.g. parity_test) from any folder.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import search_paths  # noqa: E402

search_paths.add_to_sys_path()

# One persistent XLA compilation cache for this test session, shared with the
# subprocesses the tests start (they inherit the environment): the tests
# compile the same tiny programs many times over. It starts empty, so no
# program compiled by an earlier session or another jax version is reused.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='perceiver_io_test_xla_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# absltest helpers (create_tempdir, ...) read flags, which pytest never parses.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
