"""Measurement helpers: median times, peak memory, FLOPs, matmul peak.

Everything here measures the running process. On a shared machine the
absolute times move with the load, so the harness also reports the matmul
peak measured right before each figure, and ratios between implementations.
"""

import math
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# --- Time ---------------------------------------------------------------------


def time_call(fn, repeats, warmup=1):
  """Median and all wall times in seconds of `fn()`, blocking on results."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def matmul_peak_gflops(size=2048, repeats=5, dtype=jnp.float32):
  """XLA's matrix-product throughput on the default device, in GFLOP/s.

  The median of `repeats` products of two [size, size] matrices. A 16-bit
  dtype's products accumulate into float32, as the model's do
  (`perceiver_io.dense`).
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = jax.random.normal(key_b, (size, size), dtype)
  matmul = jax.jit(
    lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)
  )
  median, _ = time_call(lambda: matmul(a, b), repeats, warmup=2)
  return 2.0 * size**3 / median / 1e9


# --- Memory -------------------------------------------------------------------


def _status_kib(field):
  with open('/proc/self/status') as f:
    match = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.MULTILINE)
  return int(match.group(1)) if match else None


def rss_bytes():
  """The process's resident set size now."""
  kib = _status_kib('VmRSS')
  return None if kib is None else kib * 1024


def reset_peak_rss():
  """Resets the process's peak RSS (Linux `clear_refs`); False if it can't."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes():
  """The process's peak RSS since start or the last `reset_peak_rss`."""
  kib = _status_kib('VmHWM')
  return None if kib is None else kib * 1024


def device_peak_bytes():
  """The accelerator allocator's peak, or None (CPU has none)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def xla_memory(compiled):
  """XLA's own account of a compiled function's buffers, in bytes."""
  try:
    analysis = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return {}
  if analysis is None:
    return {}
  return {
    'arguments': analysis.argument_size_in_bytes,
    'outputs': analysis.output_size_in_bytes,
    'temp': analysis.temp_size_in_bytes,
    'aliased': analysis.alias_size_in_bytes,
  }


def tree_bytes(tree):
  return sum(
    int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


# --- FLOPs --------------------------------------------------------------------


def _dot_flops(eqn):
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs_shape = eqn.invars[0].aval.shape
  contracted = math.prod(lhs_shape[d] for d in lhs_contract)
  return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn):
  rhs = eqn.invars[1].aval.shape
  dims = eqn.params['dimension_numbers']
  out_channels_dim = dims.rhs_spec[0]
  per_output = math.prod(rhs) // rhs[out_channels_dim]
  return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(eqn):
  """(jaxpr, multiplier) pairs nested in an equation."""
  params = eqn.params
  if eqn.primitive.name == 'scan':
    return [(params['jaxpr'].jaxpr, params['length'])]
  if eqn.primitive.name == 'cond':
    return [
      (
        max(
          params['branches'], key=lambda b: count_matmul_flops(b.jaxpr)
        ).jaxpr,
        1,
      )
    ]
  if eqn.primitive.name == 'custom_vjp_call':
    return [(params['call_jaxpr'].jaxpr, 1)]
  found = []
  for value in params.values():
    if hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
      found.append((value.jaxpr, 1))
    elif hasattr(value, 'eqns'):
      found.append((value, 1))
  return found


def count_matmul_flops(jaxpr):
  """FLOPs (multiply and add counted apart) of every dot and convolution."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    else:
      for sub, multiplier in _sub_jaxprs(eqn):
        total += multiplier * count_matmul_flops(sub)
  return total


def forward_flops(fn, *args, **kwargs):
  """Matrix-product FLOPs of one call of `fn`, from its jaxpr."""
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return count_matmul_flops(closed.jaxpr)
