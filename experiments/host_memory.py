"""Keeps freed host memory in the process, so steps stop page-faulting.

XLA's CPU backend allocates each step's temporaries with `malloc` and frees
them at the end of the step. glibc serves large blocks with `mmap` and
returns them (and the top of its heap) to the kernel on `free`, so the next
step touches fresh pages again: every page costs a fault and a zeroing.
`keep_freed_memory()` tells glibc to serve every block from its heaps and
never give memory back, so the pages of one step are reused by the next.
That speeds up small models' steps (`masked_lm.py:local`) and does not help
the big ones, whose step temporaries come in one block from one of XLA's
pool threads: a thread's glibc arena maps a block that large with `mmap`
whatever `M_MMAP_MAX` says. glibc's `arena_max=1` would stop that, but one
arena for all threads slows the small steps down, so it is not set here;
the benchmarks leave this off unless asked (`--keep_freed_memory`). The
figures are in benchmarks/README.md, "Keeping freed host memory".

The price: the process's resident memory stays at its peak. Experiments call
this once at start-up; set `PERCEIVER_IO_KEEP_FREED_MEMORY=0` to switch it
off. It does nothing on other C libraries (macOS, musl).
"""

import ctypes
import os
import platform

from absl import logging

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
ENV_VAR = 'PERCEIVER_IO_KEEP_FREED_MEMORY'


def keep_freed_memory() -> bool:
  """Stops glibc from returning freed memory to the kernel; True if done."""
  if os.environ.get(ENV_VAR, '1') == '0':
    return False
  if platform.libc_ver()[0] != 'glibc':
    return False
  mallopt = ctypes.CDLL(None).mallopt  # The C library of this process.
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # Never trim the heap top; serve large blocks from the heap, not mmap.
  done = all(
    mallopt(param, value)
    for param, value in (
      (_M_TRIM_THRESHOLD, 2**31 - 1),
      (_M_MMAP_MAX, 0),
    )
  )
  if done:
    logging.info(
      'glibc malloc: keeping freed memory (%s=0 to disable).', ENV_VAR
    )
  return done
