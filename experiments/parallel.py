"""Data parallelism with `jax.sharding`: one mesh axis 'data' over all devices.

Works unchanged on one CPU, on 8 fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before jax is
imported), on one GPU node and on several hosts. On several hosts call
`maybe_initialize_distributed()` first; each process then feeds its own
share of every global batch (`local_batch_size`, `process_slice`), and
`make_global_batch` stitches the shares into one global `jax.Array`.
`padded_eval_indices` / `padded_eval_batches` give each process its share of
every example of a fixed eval set, once, with the last global batch padded
(mask 0). Parameters and optimizer state are replicated.
"""

import os
from collections.abc import Iterator
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

DATA_AXIS = 'data'

# Environment variables that mean "this is one process of a multi-host job".
_CLUSTER_ENV = (
  'JAX_COORDINATOR_ADDRESS',
  'COORDINATOR_ADDRESS',
  'MEGASCALE_COORDINATOR_ADDRESS',
)


def maybe_initialize_distributed(force: bool = False) -> bool:
  """Calls `jax.distributed.initialize()` when the environment asks for it.

  It is called when `force` is set, when a coordinator address variable is
  set (`JAX_COORDINATOR_ADDRESS`, with `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`), or under SLURM or Open MPI with more than one task.
  On Cloud TPU pods, pass `force=True` (`--jax_distributed`): JAX finds the
  pod by itself. Must run before any other JAX call.

  Returns:
    Whether it initialised.
  """
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  mpi = int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
  if not (force or slurm or mpi or any(v in os.environ for v in _CLUSTER_ENV)):
    return False
  kwargs = {}
  # jax.distributed reads JAX_COORDINATOR_ADDRESS itself, but not these two.
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in os.environ:
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)
  logging.info(
    'jax.distributed: process %d of %d, %d local of %d devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'data' over all devices (all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over 'data'; the rest is whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(
  batch_size: int, name: str = 'batch_size', grad_accum_steps: int = 1
) -> None:
  """Checks that a global batch splits evenly over devices (and micro-batches).

  Raises:
    ValueError: naming the batch size, device count and accumulation steps.
  """
  num_devices = jax.device_count()
  if batch_size <= 0:
    raise ValueError(f'config.{name} must be positive; got {batch_size}.')
  divisor = num_devices * grad_accum_steps
  if batch_size % divisor:
    extra = (
      f' x grad_accum_steps ({grad_accum_steps})'
      if grad_accum_steps > 1
      else ''
    )
    raise ValueError(
      f'config.{name}={batch_size} is not divisible by the number of '
      f'devices ({num_devices}){extra}; the global batch is split evenly '
      f'over devices. Use a multiple of {divisor}.'
    )


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch.

  Raises:
    ValueError: if it does not divide over the processes.
  """
  num_processes = jax.process_count()
  if global_batch_size % num_processes:
    raise ValueError(
      f'Global batch {global_batch_size} is not divisible by the number of '
      f'processes ({num_processes}).'
    )
  return global_batch_size // num_processes


def process_slice(
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> slice:
  """This process's rows of every global batch: the contiguous
  `slice(p * b, (p + 1) * b)` with b = global_batch_size / process_count.

  Args:
    global_batch_size: B, the rows of one global batch.
    process_index, process_count: p and P; None: this process's
      (`jax.process_index()`, `jax.process_count()`). Tests pass them to
      simulate several processes.

  Raises:
    ValueError: if B does not split over P processes, or p is not in
      [0, P).
  """
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index {process_index} is not one of process_count '
      f'{process_count} processes; it must be in [0, process_count).'
    )
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f'The global batch size {global_batch_size} does not split over '
      f'{process_count} processes; use a positive multiple of '
      f'{process_count}.'
    )
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def padded_eval_indices(
  num_examples: int,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's examples of each global batch of a fixed eval set.

  Global batch k holds examples [k B, (k + 1) B) of [0, N); the last one is
  padded to B rows with copies of example 0 and mask 0. Every process yields
  the same ceil(N / B) batches, so the global batches line up, and every
  example has mask 1 in exactly one row of one process.

  Args:
    num_examples: N.
    global_batch_size: B; it must split over the processes.
    process_index, process_count: as in `process_slice`.

  Yields:
    (index, mask): int64[b] example indices and float32[b] (1 real,
    0 padding), with b = B / process_count.
  """
  rows = process_slice(global_batch_size, process_index, process_count)
  for start in range(0, num_examples, global_batch_size):
    index = np.arange(start + rows.start, start + rows.stop)
    valid = index < num_examples
    yield np.where(valid, index, 0), valid.astype(np.float32)


def padded_eval_batches(
  arrays: Mapping[str, np.ndarray],
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """`padded_eval_indices` applied to arrays of N examples each.

  Args:
    arrays: {name: [N, ...]}, all with the same N.
    global_batch_size, process_index, process_count: as in
      `padded_eval_indices`.

  Yields:
    {name: [b, ...]} of this process's rows, plus 'mask': float32[b].

  Raises:
    ValueError: if the arrays differ in length, or one is named 'mask'.
  """
  lengths = {name: len(value) for name, value in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(
      f'Eval arrays of different numbers of examples: {lengths}; every '
      'entry needs one row per example.'
    )
  if 'mask' in arrays:
    raise ValueError(
      "An eval array is named 'mask', which padded_eval_batches adds; "
      'rename it.'
    )
  num_examples = next(iter(lengths.values()), 0)
  for index, mask in padded_eval_indices(
    num_examples, global_batch_size, process_index, process_count
  ):
    batch = {name: value[index] for name, value in arrays.items()}
    batch['mask'] = mask
    yield batch


def make_global_batch(
  local_batch: Mapping[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
  """Builds global arrays from this process's share of each batch entry.

  On one process the share is the whole batch. Every leaf's leading axis is
  the batch axis.
  """
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    dict(local_batch),
  )
