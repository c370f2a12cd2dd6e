r"""Runs a training command as N local JAX processes (multi-host on one box).

  python -m experiments.multiprocess --num_processes=2 \
    --devices_per_process=4 -- -m experiments.image_classification \
    --config=configs/image_classification.py:digits --workdir=runs/digits_mp

starts 2 Python processes, each with 4 fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and the gloo CPU
collectives, joined by `jax.distributed.initialize` on a localhost
coordinator: the code path of a pod, on one machine. Each process calls
`jax.distributed.initialize(coordinator_address, num_processes, process_id)`
before the module runs, so the trainer sees `jax.process_count() == 2`.

When one process exits with an error, the launcher stops the others (after
`--grace_s` seconds) and exits with an error that names the process.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

# Run inside each child: initialise jax.distributed, then run the module.
_BOOT = """
import os, runpy, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(
  coordinator_address=os.environ['PIO_MP_COORDINATOR'],
  num_processes=int(os.environ['PIO_MP_NUM_PROCESSES']),
  process_id=int(os.environ['PIO_MP_PROCESS_ID']),
  heartbeat_timeout_seconds=int(os.environ['PIO_MP_HEARTBEAT_S']),
)
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


class ProcessFailedError(RuntimeError):
  """One of the processes exited with a non-zero status."""


def free_port() -> int:
  """A TCP port on localhost that is free now."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(
  module_args: Sequence[str],
  num_processes: int,
  devices_per_process: int,
  grace_s: float = 10.0,
  heartbeat_s: int = 10,
  env: dict[str, str] | None = None,
  log_dir: str | None = None,
) -> None:
  """Runs `python -m MODULE ARGS` as `num_processes` joined JAX processes.

  Args:
    module_args: `['-m', module, *args]` or `[module, *args]`.
    num_processes: how many processes.
    devices_per_process: fake CPU devices in each.
    grace_s: after one process fails, how long the others may take to stop
      by themselves before they are killed.
    heartbeat_s: jax.distributed's heartbeat timeout in each process.
    env: extra environment variables for every process.
    log_dir: where `process_<i>.log` (stdout and stderr) go; None: inherit.

  Raises:
    ProcessFailedError: naming the first process that failed and its status.
  """
  args = list(module_args)
  if args and args[0] == '-m':
    args = args[1:]
  if not args:
    raise ValueError('No module to run: pass -- -m MODULE [ARGS].')
  coordinator = f'localhost:{free_port()}'
  procs, logs = [], []
  for i in range(num_processes):
    child_env = dict(os.environ, **(env or {}))
    child_env.update(
      XLA_FLAGS=(
        f'{child_env.get("XLA_FLAGS", "")} '
        f'--xla_force_host_platform_device_count={devices_per_process}'
      ).strip(),
      JAX_PLATFORMS='cpu',
      PIO_MP_COORDINATOR=coordinator,
      PIO_MP_NUM_PROCESSES=str(num_processes),
      PIO_MP_PROCESS_ID=str(i),
      PIO_MP_HEARTBEAT_S=str(heartbeat_s),
    )
    out = None
    if log_dir is not None:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f'process_{i}.log'), 'wb')  # noqa: SIM115
      logs.append(out)
    procs.append(
      subprocess.Popen(
        [sys.executable, '-c', _BOOT, *args],
        env=child_env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
      )
    )
  try:
    _wait(procs, grace_s)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()


def _wait(procs, grace_s):
  failed = None
  while True:
    codes = [p.poll() for p in procs]
    if failed is None:
      for i, c in enumerate(codes):
        if c not in (None, 0):
          failed = (i, c, time.monotonic())
          break
    if all(c is not None for c in codes):
      break
    if failed is not None and time.monotonic() - failed[2] > grace_s:
      break
    time.sleep(0.2)
  if failed is not None:
    i, code, _ = failed
    raise ProcessFailedError(
      f'process {i} of {len(procs)} exited with status {code}; '
      'the other processes were stopped.'
    )


def main(argv: Sequence[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(
    prog='python -m experiments.multiprocess', description=__doc__
  )
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=4)
  parser.add_argument('--grace_s', type=float, default=10.0)
  parser.add_argument('--heartbeat_s', type=int, default=10)
  parser.add_argument('--log_dir', default=None)
  parser.add_argument('module_args', nargs=argparse.REMAINDER)
  flags = parser.parse_args(argv)
  module_args = flags.module_args
  if module_args and module_args[0] == '--':
    module_args = module_args[1:]
  try:
    launch(
      module_args,
      flags.num_processes,
      flags.devices_per_process,
      grace_s=flags.grace_s,
      heartbeat_s=flags.heartbeat_s,
      log_dir=flags.log_dir,
    )
  except ProcessFailedError as e:
    print(f'multiprocess: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
