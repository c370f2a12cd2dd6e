"""Memory-efficient attention: an online softmax over blocks of keys.

Shape letters: B batch, N queries, M keys, H heads, D channels per head
(Dv for values), Q queries per block, K keys per block.

The queries are cut into blocks of Q and the keys into blocks of K. For each
query block, a loop over key blocks keeps a running maximum, a running sum
of exponentials and a running weighted sum of values (Milakov and
Gimelshein 2018; Rabe and Staats 2021). The backward pass is written by hand
(as in FlashAttention): it keeps the output and the log-sum-exp of each row,
and recomputes each [Q, K] block of weights. Memory grows with B * H * Q * K,
not with B * H * N * M, in both passes.

`attend_projected` also computes the keys and values block by block
from their inputs (a LayerNorm and two linear maps, say), so that the [B, M,
H, D] keys and values never exist whole either: a cross-attention from a few
thousand latents to hundreds of thousands of inputs then holds only the
inputs. Its loops run over key blocks outside and query blocks inside, so
each block is projected once per pass.

Masked keys get the logit `MASK_VALUE`, like DeepMind's code; padding keys that
fill the last block are masked the same way. The caller zeros the rows whose
keys are all masked (`ops.attend.attend`).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from perceiver_io.ops import residuals

DEFAULT_Q_CHUNK_SIZE = 1024
DEFAULT_KV_CHUNK_SIZE = 2048
# On a CPU, a single-block forward pass (not differentiated) over at most this
# many (example, head) pairs computes them one by one (`_forward_heads_apart`).
MAX_HEADS_APART = 16

# DeepMind's code fills masked logits with -1e30. The chunked path keeps its
# logits and softmax statistics in float32, where -1e30 is finite.
MASK_VALUE = -1e30


# --- Dropout that any blocking reproduces -------------------------------------


def _mix32(x):
  """A 32-bit integer hash (the 'lowbias32' finaliser)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def dropout_seeds(rng):
  """Two uint32 seeds from a PRNG key."""
  return jax.random.bits(rng, (2,), jnp.uint32)


def row_ids(batch, num_heads, num_q, q_offset, q_size):
  """uint32 [B, H, Q, 1] ids (b * H + h) * N + n of queries n in a block."""
  b = jnp.arange(batch, dtype=jnp.uint32)[:, None, None, None]
  h = jnp.arange(num_heads, dtype=jnp.uint32)[None, :, None, None]
  n = (
    jnp.arange(q_size, dtype=jnp.uint32)
    + jnp.asarray(q_offset).astype(jnp.uint32)
  )[None, None, :, None]
  return (b * np.uint32(num_heads) + h) * np.uint32(num_q) + n


def dropout_keep(seeds, rows, cols, rate):
  """Boolean keep mask [B, H, Q, K] from row ids [B, H, Q, 1], cols [K]."""
  threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
  row_hash = _mix32(rows + seeds[0])
  col_hash = _mix32(cols * jnp.uint32(0x9E3779B9) + seeds[1])
  return _mix32(row_hash ^ col_hash) >= jnp.uint32(threshold)


# --- Blocking -----------------------------------------------------------------


def block_size(length, chunk_size):
  """(block, num_blocks): blocks of <= chunk_size covering length.

  A block size that divides `length` (a multiple of 8, at least half of
  `chunk_size`) is preferred: then nothing is padded, and padding would copy
  the keys and values. Otherwise the blocks are made as even as possible.
  """
  if chunk_size <= 0:
    raise ValueError(f'Chunk sizes must be positive; got {chunk_size}.')
  if length <= chunk_size:
    return length, 1
  top = chunk_size - chunk_size % 8
  for block in range(top, max(top // 2, 7), -8):
    if length % block == 0:
      return block, length // block
  num_blocks = _ceil_div(length, chunk_size)
  block = min(chunk_size, _ceil_div(_ceil_div(length, num_blocks), 8) * 8)
  return block, _ceil_div(length, block)


def _ceil_div(a, b):
  return -(-a // b)


def _pad_axis(x, axis, size):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static settings of one chunked attention call."""

  num_q: int
  q_block: int
  kv_block: int
  num_q_blocks: int
  num_kv_blocks: int
  scale: float
  dropout_prob: float
  masked: bool  # Whether any key is masked or padded.
  # Of the projected path's values (the other path reads them from v).
  value_dim: int = 0
  value_dtype: str = 'float32'
  # One block, computed one (example, head) at a time: see `_forward`.
  heads_apart: bool = False
  # Query i sees keys up to causal_offset + i only (None: no causal mask).
  causal_offset: int | None = None


def _slice(x, start, size, axis=2):
  return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _block_logits(cfg, q_block, k_block, valid_block, q_start=0, k_start=0):
  """float32 [B, H, Q, K] scaled, masked logits of one block."""
  s = jnp.einsum(
    'bhqd,bhkd->bhqk', q_block, k_block, preferred_element_type=jnp.float32
  )
  s = s * jnp.float32(cfg.scale)
  if cfg.causal_offset is not None:
    rows = jnp.arange(q_block.shape[2]) + q_start + cfg.causal_offset
    cols = jnp.arange(k_block.shape[2]) + k_start
    seen = cols[None, :] <= rows[:, None]  # [Q, K], one block only.
    s = jnp.where(seen, s, jnp.float32(MASK_VALUE))
  if not cfg.masked:
    return s
  return jnp.where(valid_block[:, None, None, :], s, jnp.float32(MASK_VALUE))


def _block_dropout(cfg, seeds, q_start, k_start, shape):
  """float32 [B, H, Q, K] dropout multipliers (0 or 1 / (1 - rate))."""
  batch, heads, q_size, k_size = shape
  rows = row_ids(batch, heads, cfg.num_q, q_start, q_size)
  cols = jnp.arange(k_size, dtype=jnp.uint32) + k_start.astype(jnp.uint32)
  keep = dropout_keep(seeds, rows, cols, cfg.dropout_prob)
  return jnp.where(
    keep, jnp.float32(1.0 / (1.0 - cfg.dropout_prob)), jnp.float32(0.0)
  )


# --- One block -----------------------------------------------------------------


def _online_update(
  cfg, seeds, stats, q_block, k_block, v_block, valid_block, q_start, k_start
):
  """Folds one [Q, K] block into the running (max, sum, weighted sum)."""
  m, denom, acc = stats
  s = _block_logits(cfg, q_block, k_block, valid_block, q_start, k_start)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  p = jnp.exp(s - m_new[..., None])  # [B, H, Q, K]
  correction = jnp.exp(m - m_new)
  denom = denom * correction + jnp.sum(p, axis=-1)
  if cfg.dropout_prob > 0.0:
    p = p * _block_dropout(cfg, seeds, q_start, k_start, p.shape)
  pv = jnp.einsum(
    'bhqk,bhkd->bhqd',
    p.astype(v_block.dtype),
    v_block,
    preferred_element_type=jnp.float32,
  )
  return m_new, denom, acc * correction[..., None] + pv


def _init_stats(batch, heads, num_q, value_dim):
  return (
    jnp.full((batch, heads, num_q), -jnp.inf, jnp.float32),
    jnp.zeros((batch, heads, num_q), jnp.float32),
    jnp.zeros((batch, heads, num_q, value_dim), jnp.float32),
  )


def _finish(stats, dtype):
  """(out [B, H, Q, Dv] in dtype, float32 lse [B, H, Q]) from the stats."""
  m, denom, acc = stats
  return (acc / denom[..., None]).astype(dtype), m + jnp.log(denom)


def _block_grads(cfg, seeds, blocks, q_start, k_start):
  """float32 (dq, dk, dv) of one [Q, K] block, recomputing its weights.

  `blocks` holds this block's q [B, H, Q, D], k [B, H, K, D],
  v [B, H, K, Dv], key validity [B, K], output gradient [B, H, Q, Dv],
  log-sum-exp [B, H, Q] and delta = rowsum(dO * O) [B, H, Q].
  """
  q_block, k_block, v_block, valid_block, do_block, lse_block, delta_block = (
    blocks
  )
  s = _block_logits(cfg, q_block, k_block, valid_block, q_start, k_start)
  p = jnp.exp(s - lse_block[..., None])  # [B, H, Q, K]
  dp = jnp.einsum(
    'bhqd,bhkd->bhqk', do_block, v_block, preferred_element_type=jnp.float32
  )
  p_dropped = p
  if cfg.dropout_prob > 0.0:
    multiplier = _block_dropout(cfg, seeds, q_start, k_start, p.shape)
    p_dropped = p * multiplier
    dp = dp * multiplier
  dv = jnp.einsum(
    'bhqk,bhqd->bhkd',
    p_dropped.astype(v_block.dtype),
    do_block,
    preferred_element_type=jnp.float32,
  )
  ds = p * (dp - delta_block[..., None]) * jnp.float32(cfg.scale)
  ds = ds.astype(q_block.dtype)
  dq = jnp.einsum(
    'bhqk,bhkd->bhqd', ds, k_block, preferred_element_type=jnp.float32
  )
  dk = jnp.einsum(
    'bhqk,bhqd->bhkd', ds, q_block, preferred_element_type=jnp.float32
  )
  return dq, dk, dv


def _delta(d_out, out):
  """rowsum(dO * O) [B, H, N], also right with dropout."""
  return jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)


def _add_at(x, update, start):
  """x with `update` added to its block at `start` along axis 2."""
  size = update.shape[2]
  return lax.dynamic_update_slice_in_dim(
    x, _slice(x, start, size) + update, start, axis=2
  )


def _merge_blocks(x, batch, heads):
  """[n, B, H, Q, ...] stacked blocks -> [B, H, n * Q, ...]."""
  x = jnp.moveaxis(x, 0, 2)
  return x.reshape(batch, heads, -1, *x.shape[4:])


# --- Keys and values given ----------------------------------------------------


def _forward(cfg, q, k, v, valid, seeds):
  """Returns out [B, H, Np, Dv] (v's dtype) and float32 lse [B, H, Np]."""
  batch, heads, _, _ = q.shape
  if cfg.heads_apart:
    return _forward_heads_apart(cfg, q, k, v, valid)

  def q_step(_, qi):
    q_start = qi * cfg.q_block
    q_block = _slice(q, q_start, cfg.q_block)  # [B, H, Q, D]

    def kv_step(stats, kj):
      k_start = kj * cfg.kv_block
      stats = _online_update(
        cfg,
        seeds,
        stats,
        q_block,
        _slice(k, k_start, cfg.kv_block),
        _slice(v, k_start, cfg.kv_block),
        _slice(valid, k_start, cfg.kv_block, axis=1),
        q_start,
        k_start,
      )
      return stats, None

    init = _init_stats(batch, heads, cfg.q_block, v.shape[-1])
    stats, _ = lax.scan(kv_step, init, jnp.arange(cfg.num_kv_blocks))
    return None, _finish(stats, v.dtype)

  _, (out, lse) = lax.scan(q_step, None, jnp.arange(cfg.num_q_blocks))
  return _merge_blocks(out, batch, heads), _merge_blocks(lse, batch, heads)


def _forward_heads_apart(cfg, q, k, v, valid):
  """`_forward` of a single block, one (example, head) at a time.

  XLA's CPU backend runs a batched product of [B, H] small matrices slower
  than B * H separate products, each of which it spreads over the threads.
  With the softmax of each head in between and the normalisation applied to
  the [Q, Dv] output instead of the [Q, K] weights, an ImageNet latent
  layer's attention (8 heads, 512 x 512, 128 channels) runs faster on a CPU
  (measured in benchmarks/README.md, "ImageNet and optical flow with
  `grid_attend`").
  """
  batch, heads, _, _ = q.shape
  outs, lses = [], []
  for b in range(batch):
    for h in range(heads):
      s = jnp.dot(
        q[b, h] * jnp.asarray(cfg.scale, q.dtype),
        k[b, h].T,
        preferred_element_type=jnp.float32,
      )  # [Q, K]
      if cfg.masked:
        s = jnp.where(valid[b][None, :], s, jnp.float32(MASK_VALUE))
      m = jnp.max(s, axis=-1)
      p = jnp.exp(s - m[:, None])
      denom = jnp.sum(p, axis=-1)
      out = jnp.dot(
        p.astype(v.dtype), v[b, h], preferred_element_type=jnp.float32
      )  # [Q, Dv]
      outs.append((out / denom[:, None]).astype(v.dtype))
      lses.append(m + jnp.log(denom))
  out = jnp.stack(outs).reshape((batch, heads) + outs[0].shape)
  lse = jnp.stack(lses).reshape((batch, heads) + lses[0].shape)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend_blocks(cfg, q, k, v, valid, seeds):
  return _forward(cfg, q, k, v, valid, seeds)[0]


def _attend_blocks_fwd(cfg, q, k, v, valid, seeds):
  # Under differentiation the heads stay batched: computed apart, the
  # training step of the masked-LM latents was slower (benchmarks/README.md,
  # "ImageNet and optical flow with `grid_attend`").
  cfg = dataclasses.replace(cfg, heads_apart=False)
  out, lse = _forward(cfg, q, k, v, valid, seeds)
  packed = tuple(residuals.pack(a) for a in (q, k, v, out))
  return out, (packed, valid, seeds, lse)


def _attend_blocks_bwd(cfg, saved, d_out):
  """Recomputes each block's weights from the saved log-sum-exp."""
  packed, valid, seeds, lse = saved
  q, k, v, out = (residuals.unpack(a) for a in packed)
  delta = _delta(d_out, out)

  def q_step(carry, qi):
    dk, dv = carry
    q_start = qi * cfg.q_block
    q_block = _slice(q, q_start, cfg.q_block)
    do_block = _slice(d_out, q_start, cfg.q_block)
    lse_block = _slice(lse, q_start, cfg.q_block)
    delta_block = _slice(delta, q_start, cfg.q_block)

    def kv_step(carry, kj):
      dq_block, dk, dv = carry
      k_start = kj * cfg.kv_block
      blocks = (
        q_block,
        _slice(k, k_start, cfg.kv_block),
        _slice(v, k_start, cfg.kv_block),
        _slice(valid, k_start, cfg.kv_block, axis=1),
        do_block,
        lse_block,
        delta_block,
      )
      dq_b, dk_b, dv_b = _block_grads(cfg, seeds, blocks, q_start, k_start)
      return (
        dq_block + dq_b,
        _add_at(dk, dk_b, k_start),
        _add_at(dv, dv_b, k_start),
      ), None

    dq_block = jnp.zeros(q_block.shape, jnp.float32)
    (dq_block, dk, dv), _ = lax.scan(
      kv_step, (dq_block, dk, dv), jnp.arange(cfg.num_kv_blocks)
    )
    return (dk, dv), dq_block

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  (dk, dv), dq = lax.scan(q_step, init, jnp.arange(cfg.num_q_blocks))
  batch, heads, _, _ = q.shape
  dq = _merge_blocks(dq, batch, heads)
  return (
    dq.astype(q.dtype),
    dk.astype(k.dtype),
    dv.astype(v.dtype),
    None,
    None,
  )


_attend_blocks.defvjp(_attend_blocks_fwd, _attend_blocks_bwd)


# --- Keys and values projected block by block ---------------------------------
#
# The loops run over key blocks outside and query blocks inside, so that each
# block's keys and values are computed once per pass from its inputs and never
# exist for all M inputs at once. The backward pass recomputes them and pulls
# their gradients back through the projection block by block.


def _forward_projected(cfg, project, q, x, params, valid, seeds):
  """Like `_forward`, with k, v = project(params, x block)."""
  batch, heads, num_q, _ = q.shape

  def kv_step(stats, kj):
    k_start = kj * cfg.kv_block
    k_block, v_block = project(params, _slice(x, k_start, cfg.kv_block, 1))
    valid_block = _slice(valid, k_start, cfg.kv_block, axis=1)

    def q_step(stats, qi):
      q_start = qi * cfg.q_block
      block = tuple(_slice(a, q_start, cfg.q_block) for a in stats)
      block = _online_update(
        cfg,
        seeds,
        block,
        _slice(q, q_start, cfg.q_block),
        k_block,
        v_block,
        valid_block,
        q_start,
        k_start,
      )
      stats = tuple(
        lax.dynamic_update_slice_in_dim(a, b, q_start, axis=2)
        for a, b in zip(stats, block, strict=True)
      )
      return stats, None

    stats, _ = lax.scan(q_step, stats, jnp.arange(cfg.num_q_blocks))
    return stats, None

  init = _init_stats(batch, heads, num_q, cfg.value_dim)
  stats, _ = lax.scan(kv_step, init, jnp.arange(cfg.num_kv_blocks))
  return _finish(stats, cfg.value_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend_projected(cfg, project, q, x, params, valid, seeds):
  return _forward_projected(cfg, project, q, x, params, valid, seeds)[0]


def _attend_projected_fwd(cfg, project, q, x, params, valid, seeds):
  out, lse = _forward_projected(cfg, project, q, x, params, valid, seeds)
  packed = tuple(residuals.pack(a) for a in (q, x, out))
  return out, (packed, params, valid, seeds, lse)


def _attend_projected_bwd(cfg, project, saved, d_out):
  packed, params, valid, seeds, lse = saved
  q, x, out = (residuals.unpack(a) for a in packed)
  delta = _delta(d_out, out)

  def kv_step(carry, kj):
    dq, d_params = carry
    k_start = kj * cfg.kv_block
    (k_block, v_block), project_vjp = jax.vjp(
      project, params, _slice(x, k_start, cfg.kv_block, 1)
    )
    valid_block = _slice(valid, k_start, cfg.kv_block, axis=1)

    def q_step(carry, qi):
      dq, dk_block, dv_block = carry
      q_start = qi * cfg.q_block
      blocks = (
        _slice(q, q_start, cfg.q_block),
        k_block,
        v_block,
        valid_block,
        _slice(d_out, q_start, cfg.q_block),
        _slice(lse, q_start, cfg.q_block),
        _slice(delta, q_start, cfg.q_block),
      )
      dq_b, dk_b, dv_b = _block_grads(cfg, seeds, blocks, q_start, k_start)
      return (
        _add_at(dq, dq_b, q_start),
        dk_block + dk_b,
        dv_block + dv_b,
      ), None

    init = (
      dq,
      jnp.zeros(k_block.shape, jnp.float32),
      jnp.zeros(v_block.shape, jnp.float32),
    )
    (dq, dk_block, dv_block), _ = lax.scan(
      q_step, init, jnp.arange(cfg.num_q_blocks)
    )
    d_params_block, dx_block = project_vjp(
      (dk_block.astype(k_block.dtype), dv_block.astype(v_block.dtype))
    )
    d_params = jax.tree.map(jnp.add, d_params, d_params_block)
    return (dq, d_params), dx_block

  init = (
    jnp.zeros(q.shape, jnp.float32),
    jax.tree.map(jnp.zeros_like, params),
  )
  (dq, d_params), dx = lax.scan(kv_step, init, jnp.arange(cfg.num_kv_blocks))
  # [nK, B, K, C] -> [B, Mp, C]
  dx = jnp.moveaxis(dx, 0, 1).reshape(x.shape)
  return dq.astype(q.dtype), dx, d_params, None, None


_attend_projected.defvjp(_attend_projected_fwd, _attend_projected_bwd)


# --- Entry points -------------------------------------------------------------


def _config(
  q_shape, num_kv, kv_mask, dropout_prob, q_chunk_size, kv_chunk_size, **extra
):
  """The blocking of [B, N, H, D] queries against num_kv keys."""
  num_q, head_dim = q_shape[1], q_shape[3]
  q_block, num_q_blocks = block_size(num_q, q_chunk_size)
  kv_block, num_kv_blocks = block_size(num_kv, kv_chunk_size)
  return _Config(
    num_q=num_q,
    q_block=q_block,
    kv_block=kv_block,
    num_q_blocks=num_q_blocks,
    num_kv_blocks=num_kv_blocks,
    scale=1.0 / math.sqrt(head_dim),
    dropout_prob=dropout_prob,
    masked=kv_mask is not None or kv_block * num_kv_blocks != num_kv,
    **extra,
  )


def _prepare(cfg, q, num_kv, kv_mask, dropout_prob, dropout_rng):
  """Head-major padded queries [B, H, Np, D], key validity [B, Mp], seeds."""
  batch = q.shape[0]
  if dropout_prob > 0.0:
    seeds = dropout_seeds(dropout_rng)
  else:
    seeds = jnp.zeros((2,), jnp.uint32)
  q = _pad_axis(jnp.swapaxes(q, 1, 2), 2, cfg.q_block * cfg.num_q_blocks)
  if kv_mask is None:
    valid = jnp.ones((batch, num_kv), jnp.bool_)
  else:
    valid = kv_mask != 0
  valid = _pad_axis(valid, 1, cfg.kv_block * cfg.num_kv_blocks)  # False.
  return q, valid, seeds


def _merge_heads(out, num_q):
  """[B, H, Np, Dv] -> [B, N, H * Dv]."""
  batch, heads, _, value_dim = out.shape
  out = jnp.swapaxes(out[:, :, :num_q], 1, 2)  # [B, N, H, Dv]
  return jnp.reshape(out, (batch, num_q, heads * value_dim))


def attend(
  q,
  k,
  v,
  *,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  q_chunk_size=DEFAULT_Q_CHUNK_SIZE,
  kv_chunk_size=DEFAULT_KV_CHUNK_SIZE,
  causal_offset=None,
):
  """Attention in [Q, K] blocks, without the [B, H, N, M] matrix.

  Rows whose keys are all masked come out as the mean of the values, as in
  the reference before its wipe; `ops.attend.attend` zeros them.

  Args:
    q: [B, N, H, D] queries.
    k: [B, M, H, D] keys.
    v: [B, M, H, Dv] values.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    q_chunk_size: at most this many queries per block.
    kv_chunk_size: at most this many keys per block.
    causal_offset: optional int; query i sees keys 0..causal_offset + i only.
      Each block builds its own [Q, K] part of the mask.

  Returns:
    [B, N, H * Dv].
  """
  num_kv = k.shape[1]
  cfg = _config(
    q.shape,
    num_kv,
    kv_mask,
    dropout_prob,
    q_chunk_size,
    kv_chunk_size,
    causal_offset=causal_offset,
  )
  if (
    causal_offset is None
    and cfg.num_q_blocks == cfg.num_kv_blocks == 1
    and dropout_prob == 0.0
    and q.shape[0] * q.shape[2] <= MAX_HEADS_APART
    and jax.default_backend() == 'cpu'
  ):
    cfg = dataclasses.replace(cfg, heads_apart=True)
  q, valid, seeds = _prepare(cfg, q, num_kv, kv_mask, dropout_prob, dropout_rng)
  padded_kv = cfg.kv_block * cfg.num_kv_blocks
  k = _pad_axis(jnp.swapaxes(k, 1, 2), 2, padded_kv)
  v = _pad_axis(jnp.swapaxes(v, 1, 2), 2, padded_kv)
  out = _attend_blocks(cfg, q, k, v, valid, seeds)  # [B, H, Np, Dv]
  return _merge_heads(out, cfg.num_q)


def attend_projected(
  q,
  x_kv,
  kv_params,
  kv_project,
  *,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  q_chunk_size=DEFAULT_Q_CHUNK_SIZE,
  kv_chunk_size=DEFAULT_KV_CHUNK_SIZE,
):
  """`attend` with keys and values computed from x_kv block by block.

  Equals `attend(q, *kv_project(kv_params, x_kv), ...)`, but the
  [B, M, H, D] keys and values never exist whole, in the forward pass or in
  the backward: each block of keys and values is computed from its block of
  inputs when it is needed (twice per training step), and gradients flow to
  `x_kv` and `kv_params` through `jax.vjp` of the projection of each block.

  Args:
    q: [B, N, H, D] queries.
    x_kv: [B, M, C] inputs of the keys and values.
    kv_params: a pytree of arrays that `kv_project` reads.
    kv_project: (kv_params, [B, K, C]) -> (k [B, K, H, D], v [B, K, H, Dv]),
      computing each of the K rows from that row of its input alone (a
      LayerNorm and two linear maps, say).
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    q_chunk_size: at most this many queries per block.
    kv_chunk_size: at most this many keys per block.

  Returns:
    [B, N, H * Dv].
  """
  batch, num_kv, channels = x_kv.shape
  k_shape, v_shape = jax.eval_shape(
    kv_project,
    kv_params,
    jax.ShapeDtypeStruct((batch, 1, channels), x_kv.dtype),
  )
  if k_shape.shape[2:] != q.shape[2:]:
    raise ValueError(
      f'kv_project gives keys of [heads, channels] {k_shape.shape[2:]}; the '
      f'queries have {q.shape[2:]}.'
    )

  def head_major(params, x):
    k, v = kv_project(params, x)
    return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

  cfg = _config(
    q.shape,
    num_kv,
    kv_mask,
    dropout_prob,
    q_chunk_size,
    kv_chunk_size,
    value_dim=v_shape.shape[-1],
    value_dtype=jnp.dtype(v_shape.dtype).name,
  )
  q, valid, seeds = _prepare(cfg, q, num_kv, kv_mask, dropout_prob, dropout_rng)
  x_kv = _pad_axis(x_kv, 1, cfg.kv_block * cfg.num_kv_blocks)
  out = _attend_projected(cfg, head_major, q, x_kv, kv_params, valid, seeds)
  return _merge_heads(out, cfg.num_q)
