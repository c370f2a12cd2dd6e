"""The reference attention kernel: the whole [B, H, N, M] matrix.

Shape letters: B batch, N queries, M keys, H heads, D channels per head
(Dv for values).
"""

import math

import jax
import jax.numpy as jnp

from perceiver_io.ops import chunked

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attend(
  q,
  k,
  v,
  *,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  causal_offset=None,
):
  """The reference: materialises the [B, H, N, M] attention matrix.

  Low-precision (bf16/fp16) inputs get float32 logits and softmax.

  Args:
    q: [B, N, H, D] queries.
    k: [B, M, H, D] keys.
    v: [B, M, H, Dv] values.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    causal_offset: optional int; query i sees keys 0..causal_offset + i only.

  Returns:
    [B, N, H * Dv]. Rows whose keys are all masked come out as the mean of
    the values; `ops.attend.attend` zeros them.
  """
  batch, num_q, num_heads, _ = q.shape
  scale = 1.0 / math.sqrt(q.shape[-1])
  low_precision = jnp.dtype(q.dtype) in LOW_PRECISION
  logits_dtype = jnp.float32 if low_precision else q.dtype
  # Head-major operands: XLA's CPU backend runs the batched products over
  # [B, H, N, D] blocks much faster than over heads interleaved in
  # [B, N, H, D] (an ImageNet latent layer: benchmarks/README.md, "Targets of
  # the performance issue", the paragraph on the einsum path). The transposes
  # copy N x D per head, not N x M.
  q = jnp.swapaxes(q, 1, 2)  # [B, H, N, D]
  k = jnp.swapaxes(k, 1, 2)  # [B, H, M, D]
  v = jnp.swapaxes(v, 1, 2)  # [B, H, M, Dv]
  if not low_precision:
    # Scale the N x D queries rather than the N x M logits.
    q = q * jnp.asarray(scale, q.dtype)
  logits = jnp.einsum(
    'bhnd,bhmd->bhnm', q, k, preferred_element_type=logits_dtype
  )  # [B, H, N, M]
  if low_precision:
    logits = logits * jnp.asarray(scale, logits.dtype)
  if kv_mask is not None:
    logits = jnp.where(
      kv_mask[:, None, None, :] != 0,
      logits,
      jnp.asarray(chunked.MASK_VALUE, logits.dtype),
    )
  if causal_offset is not None:
    logits = jnp.where(
      causal_mask(num_q, k.shape[2], causal_offset),
      logits,
      jnp.asarray(chunked.MASK_VALUE, logits.dtype),
    )
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_prob > 0.0:
    seeds = chunked.dropout_seeds(dropout_rng)
    rows = chunked.row_ids(batch, num_heads, num_q, 0, num_q)
    cols = jnp.arange(k.shape[2], dtype=jnp.uint32)  # k is [B, H, M, D].
    keep = chunked.dropout_keep(seeds, rows, cols, dropout_prob)
    weights = jnp.where(keep, weights / (1.0 - dropout_prob), 0.0)
  out = jnp.einsum(
    'bhnm,bhmd->bhnd',
    weights.astype(v.dtype),
    v,
    preferred_element_type=logits_dtype,
  ).astype(v.dtype)  # [B, H, N, Dv]
  out = jnp.swapaxes(out, 1, 2)  # [B, N, H, Dv]
  return jnp.reshape(out, (batch, num_q, num_heads * v.shape[-1]))


def causal_mask(num_q, num_kv, offset):
  """[N, M] booleans: query i sees keys up to position offset + i."""
  rows = jnp.arange(num_q)[:, None] + offset
  return jnp.arange(num_kv)[None, :] <= rows
