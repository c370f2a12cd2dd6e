"""Data parallelism with `jax.sharding`: one mesh axis 'data' over all devices.

Works unchanged on one CPU, on 8 fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before jax is
imported), on one GPU node and on several hosts. On several hosts call
`maybe_initialize_distributed()` first; each process then feeds its own
share of every global batch (`local_batch_size`), and
`make_global_batch` stitches the shares into one global `jax.Array`.
Parameters and optimizer state are replicated.
"""

import os
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
  jax.distributed.initialize()
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
