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

Masked keys get the logit `MASK_VALUE`, like DeepMind's code; padding keys that
fill the last block are masked the same way. The caller zeros the rows whose
keys are all masked (`attend._wipe_masked_rows`).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEFAULT_Q_CHUNK_SIZE = 1024
DEFAULT_KV_CHUNK_SIZE = 2048

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


def _slice(x, start, size, axis=2):
  return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _block_logits(cfg, q_block, k_block, valid_block):
  """float32 [B, H, Q, K] scaled, masked logits of one block."""
  s = jnp.einsum(
    'bhqd,bhkd->bhqk', q_block, k_block, preferred_element_type=jnp.float32
  )
  s = s * jnp.float32(cfg.scale)
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


# --- Forward ------------------------------------------------------------------


def _forward(cfg, q, k, v, valid, seeds):
  """Returns out [B, H, Np, Dv] (v's dtype) and float32 lse [B, H, Np]."""
  batch, heads, _, _ = q.shape
  value_dim = v.shape[-1]

  def q_step(_, qi):
    q_start = qi * cfg.q_block
    q_block = _slice(q, q_start, cfg.q_block)  # [B, H, Q, D]

    def kv_step(carry, kj):
      m, denom, acc = carry
      k_start = kj * cfg.kv_block
      s = _block_logits(
        cfg,
        q_block,
        _slice(k, k_start, cfg.kv_block),
        _slice(valid, k_start, cfg.kv_block, axis=1),
      )
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      p = jnp.exp(s - m_new[..., None])  # [B, H, Q, K]
      correction = jnp.exp(m - m_new)
      denom = denom * correction + jnp.sum(p, axis=-1)
      if cfg.dropout_prob > 0.0:
        p = p * _block_dropout(cfg, seeds, q_start, k_start, p.shape)
      pv = jnp.einsum(
        'bhqk,bhkd->bhqd',
        p.astype(v.dtype),
        _slice(v, k_start, cfg.kv_block),
        preferred_element_type=jnp.float32,
      )
      acc = acc * correction[..., None] + pv
      return (m_new, denom, acc), None

    init = (
      jnp.full((batch, heads, cfg.q_block), -jnp.inf, jnp.float32),
      jnp.zeros((batch, heads, cfg.q_block), jnp.float32),
      jnp.zeros((batch, heads, cfg.q_block, value_dim), jnp.float32),
    )
    (m, denom, acc), _ = lax.scan(kv_step, init, jnp.arange(cfg.num_kv_blocks))
    out = (acc / denom[..., None]).astype(v.dtype)
    return None, (out, m + jnp.log(denom))

  _, (out, lse) = lax.scan(q_step, None, jnp.arange(cfg.num_q_blocks))
  # [nQ, B, H, Q, Dv] -> [B, H, Np, Dv]
  out = jnp.moveaxis(out, 0, 2).reshape(batch, heads, -1, value_dim)
  lse = jnp.moveaxis(lse, 0, 2).reshape(batch, heads, -1)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend_blocks(cfg, q, k, v, valid, seeds):
  return _forward(cfg, q, k, v, valid, seeds)[0]


def _attend_blocks_fwd(cfg, q, k, v, valid, seeds):
  out, lse = _forward(cfg, q, k, v, valid, seeds)
  return out, (q, k, v, valid, seeds, out, lse)


# --- Backward -----------------------------------------------------------------


def _attend_blocks_bwd(cfg, residuals, d_out):
  """Recomputes each block's weights from the saved log-sum-exp."""
  q, k, v, valid, seeds, out, lse = residuals
  # delta = rowsum(dO * O), also with dropout.
  delta = jnp.sum(
    d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1
  )  # [B, H, Np]

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
      k_block = _slice(k, k_start, cfg.kv_block)
      v_block = _slice(v, k_start, cfg.kv_block)
      s = _block_logits(
        cfg, q_block, k_block, _slice(valid, k_start, cfg.kv_block, axis=1)
      )
      p = jnp.exp(s - lse_block[..., None])  # [B, H, Q, K]
      dp = jnp.einsum(
        'bhqd,bhkd->bhqk', do_block, v_block, preferred_element_type=jnp.float32
      )
      p_dropped = p
      if cfg.dropout_prob > 0.0:
        multiplier = _block_dropout(cfg, seeds, q_start, k_start, p.shape)
        p_dropped = p * multiplier
        dp = dp * multiplier
      dv_block = jnp.einsum(
        'bhqk,bhqd->bhkd',
        p_dropped.astype(v.dtype),
        do_block,
        preferred_element_type=jnp.float32,
      )
      ds = p * (dp - delta_block[..., None]) * jnp.float32(cfg.scale)
      ds = ds.astype(q.dtype)
      dq_block = dq_block + jnp.einsum(
        'bhqk,bhkd->bhqd', ds, k_block, preferred_element_type=jnp.float32
      )
      dk_block = jnp.einsum(
        'bhqk,bhqd->bhkd', ds, q_block, preferred_element_type=jnp.float32
      )
      dk = lax.dynamic_update_slice_in_dim(
        dk, _slice(dk, k_start, cfg.kv_block) + dk_block, k_start, axis=2
      )
      dv = lax.dynamic_update_slice_in_dim(
        dv, _slice(dv, k_start, cfg.kv_block) + dv_block, k_start, axis=2
      )
      return (dq_block, dk, dv), None

    dq_block = jnp.zeros(q_block.shape, jnp.float32)
    (dq_block, dk, dv), _ = lax.scan(
      kv_step, (dq_block, dk, dv), jnp.arange(cfg.num_kv_blocks)
    )
    return (dk, dv), dq_block

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  (dk, dv), dq = lax.scan(q_step, init, jnp.arange(cfg.num_q_blocks))
  batch, heads, _, head_dim = q.shape
  dq = jnp.moveaxis(dq, 0, 2).reshape(batch, heads, -1, head_dim)
  return (
    dq.astype(q.dtype),
    dk.astype(k.dtype),
    dv.astype(v.dtype),
    None,
    None,
  )


_attend_blocks.defvjp(_attend_blocks_fwd, _attend_blocks_bwd)


# --- Entry point --------------------------------------------------------------


def chunked_attend(
  q,
  k,
  v,
  *,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  q_chunk_size=DEFAULT_Q_CHUNK_SIZE,
  kv_chunk_size=DEFAULT_KV_CHUNK_SIZE,
):
  """Attention in [Q, K] blocks, without the [B, H, N, M] matrix.

  Rows whose keys are all masked come out as the mean of the values, as in
  the reference before its wipe; `attend` zeros them.

  Args:
    q: [B, N, H, D] queries.
    k: [B, M, H, D] keys.
    v: [B, M, H, Dv] values.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    q_chunk_size: at most this many queries per block.
    kv_chunk_size: at most this many keys per block.

  Returns:
    [B, N, H * Dv].
  """
  batch, num_q, num_heads, head_dim = q.shape
  num_kv, value_dim = k.shape[1], v.shape[-1]
  q_block, num_q_blocks = block_size(num_q, q_chunk_size)
  kv_block, num_kv_blocks = block_size(num_kv, kv_chunk_size)
  padded_kv = kv_block * num_kv_blocks
  cfg = _Config(
    num_q=num_q,
    q_block=q_block,
    kv_block=kv_block,
    num_q_blocks=num_q_blocks,
    num_kv_blocks=num_kv_blocks,
    scale=1.0 / math.sqrt(head_dim),
    dropout_prob=dropout_prob,
    masked=kv_mask is not None or padded_kv != num_kv,
  )
  if dropout_prob > 0.0:
    seeds = dropout_seeds(dropout_rng)
  else:
    seeds = jnp.zeros((2,), jnp.uint32)
  # [B, N, H, D] -> [B, H, N, D], padded to whole blocks.
  q = _pad_axis(jnp.swapaxes(q, 1, 2), 2, q_block * num_q_blocks)
  k = _pad_axis(jnp.swapaxes(k, 1, 2), 2, padded_kv)
  v = _pad_axis(jnp.swapaxes(v, 1, 2), 2, padded_kv)
  if kv_mask is None:
    valid = jnp.ones((batch, num_kv), jnp.bool_)
  else:
    valid = kv_mask != 0
  valid = _pad_axis(valid, 1, padded_kv)  # Pads with False.
  out = _attend_blocks(cfg, q, k, v, valid, seeds)  # [B, H, Np, Dv]
  out = jnp.swapaxes(out[:, :, :num_q], 1, 2)  # [B, N, H, Dv]
  return jnp.reshape(out, (batch, num_q, num_heads * value_dim))
