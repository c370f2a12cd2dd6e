"""Keeps freed host memory in the process, so steps stop page-faulting.

XLA's CPU backend allocates each step's temporaries with `malloc` and frees
them at the end of the step. glibc serves large blocks with `mmap` and
returns them (and the top of its heap) to the kernel on `free`, so the next
step touches fresh pages again: every page costs a fault and a zeroing. On
the `masked_lm.py:local` run that was 300 million faults and 27% of the CPU
time in the kernel. `keep_freed_memory()` tells glibc to serve every block
from its heaps and never give memory back, so the pages of one step are
reused by the next. On that run (2 CPU cores) it cut the page faults from
11.9M to 2.0M in a 1000-step run and raised the speed from 22.8 to 28.9
steps/s. It did not help the big models: the 201M-parameter training step
took 3.73 s with it and 3.59 s without (one run each), and 4.97 s with it
against 4.35-5.21 s without when interleaved with PyTorch. So the
benchmarks leave it off unless asked (`--keep_freed_memory`). The reason it
does nothing there: XLA allocates such a step's temporaries (1.52 GB for
the 201M-parameter model) in one block from one of its pool threads, and a
thread's glibc arena maps a block that large with `mmap` whatever
`M_MMAP_MAX` says. With glibc's `arena_max=1` as well (set before JAX's CPU
client starts its threads) the step's 383k page faults went to zero, but
its time alone did not change. It only helped next to PyTorch in one
process, where each fault had become 3-4x dearer. And one arena for all
threads made the `:local` training step 1.5x slower (41-43 ms against
27-29 ms), so it is not set here (benchmarks/README.md).

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
