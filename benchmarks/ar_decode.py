r"""Perceiver AR: decoding speed with and without the KV cache; a long context.

  python -m benchmarks.ar_decode

Rows 1 and 2: `perceiver_io.generation.generate` after a prompt that,
with the `--new_bytes` to come, fills the context (4,096 bytes by default),
with the `local` config's model sizes (configs/autoregressive.py: 128
channels, 4 heads, 2 latent layers, N = 256 latents), random weights,
greedy. `generate` compiles its step on every call, so the speed is taken
between the first and the last new byte (each reported as soon as it is
decoded, `on_byte`); compilation and the prompt's encoding are in the first
byte's time, printed beside it. With the cache a step embeds one byte,
appends its keys and values, runs its one cross-attention query and the
latent stack over the last N positions; without it, a step re-embeds and
re-projects the whole context and runs the cross-attention of all N
latents.

Row 3: one forward pass over a context of `--long_context` bytes (100,000
by default) with N = `--long_latents` (1,024) latents through the chunked
attention path (the causal mask is built block by block; no M x N mask
exists), and the peak resident memory of this process (`ru_maxrss`, which
includes JAX itself and the rows before).
"""

import resource
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from perceiver_io import autoregressive
from perceiver_io import generation
from perceiver_io import runtime as runtime_lib

_CONTEXT = flags.DEFINE_integer('context', 4096, 'Decoding context (bytes).')
_NEW = flags.DEFINE_integer('new_bytes', 64, 'Bytes generated per row.')
_LATENTS = flags.DEFINE_integer('latents', 256, 'N for the decoding rows.')
_LONG = flags.DEFINE_integer('long_context', 100_000, 'Row 3 context.')
_LONG_LATENTS = flags.DEFINE_integer('long_latents', 1024, 'Row 3 N.')
_CHANNELS = flags.DEFINE_integer('channels', 128, 'Model width.')


def _kwargs(max_context):
  return dict(
    max_context=max_context,
    channels=_CHANNELS.value,
    num_heads=4,
    num_layers=2,
    runtime=runtime_lib.Runtime(attention_impl='chunked'),
  )


def _peak_rss_gib():
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux.
  return kib / 2**20


def decode_rows():
  """[(label, bytes/s)] for the cached and the uncached decoder."""
  context, new = _CONTEXT.value, _NEW.value
  kwargs = _kwargs(context)
  params = generation.init_params(kwargs, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  prompt = bytes(rng.integers(32, 127, context - new, dtype=np.uint8))
  rows = []
  for use_cache in (True, False):
    stamps = []
    start = time.perf_counter()
    out = generation.generate(
      params,
      prompt,
      model_kwargs=kwargs,
      num_latents=_LATENTS.value,
      max_new_bytes=new,
      temperature=0.0,
      use_cache=use_cache,
      on_byte=lambda _, t=stamps: t.append(time.perf_counter()),
    )
    assert len(out) == new == len(stamps), (len(out), new, len(stamps))
    first = stamps[0] - start  # Compilation, prompt and the first byte.
    rate = (new - 1) / (stamps[-1] - stamps[0])
    label = 'with cache' if use_cache else 'without cache'
    rows.append((label, rate, first))
  return rows


def long_forward_row():
  """(seconds of the second call, peak RSS GiB) of the long forward."""
  m, n = _LONG.value, _LONG_LATENTS.value
  kwargs = _kwargs(m)
  params = generation.init_params(kwargs, jax.random.PRNGKey(1))
  forward = hk.without_apply_rng(
    hk.transform(lambda t: autoregressive.PerceiverAR(**kwargs)(t, n))
  )
  apply = jax.jit(forward.apply)
  tokens = jnp.asarray(
    np.random.default_rng(1).integers(0, 256, (1, m)), jnp.int32
  )
  jax.block_until_ready(apply(params, tokens))  # Compile.
  start = time.perf_counter()
  logits = jax.block_until_ready(apply(params, tokens))
  seconds = time.perf_counter() - start
  assert logits.shape == (1, n, 256), logits.shape
  assert bool(jnp.all(jnp.isfinite(logits)))
  return seconds, _peak_rss_gib()


def main(argv):
  del argv
  print(
    f'# jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f'{sys.platform}; channels {_CHANNELS.value}, 4 heads, 2 layers'
  )
  print(
    f'| decoding at context {_CONTEXT.value}, N={_LATENTS.value} '
    '| bytes/s | s to the first byte |'
  )
  print('| --- | --- | --- |')
  rows = decode_rows()
  for label, rate, first in rows:
    print(f'| {label} | {rate:.1f} | {first:.2f} |')
  print(f'cache speed-up: {rows[0][1] / rows[1][1]:.2f}x')
  seconds, gib = long_forward_row()
  print(
    f'| forward, context {_LONG.value}, N={_LONG_LATENTS.value} '
    f'| {seconds:.2f} s | peak RSS {gib:.2f} GiB |'
  )


if __name__ == '__main__':
  app.run(main)
