"""The one attention primitive that every Perceiver IO layer calls.

Shape letters: B batch, N queries, M keys, H heads, D channels per head
(Dv for values).

`attend` takes per-head queries, keys and values and returns the heads merged
back into channels. Masks are given per query and per key instead of as a full
[B, N, M] matrix, so that no implementation ever needs to build one: a key
with `kv_mask == 0` is ignored, and a query whose keys are all masked (or whose
own `q_mask` is 0) gets a zero output, exactly like DeepMind's code.

Implementations (`IMPLEMENTATIONS`):
  * 'einsum': the reference. It materialises the [B, H, N, M] attention matrix.
  * 'chunked': an online softmax over key chunks, with the queries chunked too,
    and a backward pass that recomputes each block (`chunked_attend`). Memory
    grows with the chunk sizes, not with N x M.
  * 'dot_product': `jax.nn.dot_product_attention`; on a GPU with bf16 or fp16
    inputs and head sizes cuDNN supports it runs cuDNN's fused kernel.
  * 'auto': cuDNN where it applies, else 'chunked' for big attention matrices,
    else 'einsum'.

Attention dropout draws its keep mask from a hash of (rng, batch, head, query,
key), so every implementation drops exactly the same weights and the paths can
be tested against each other with dropout on.
"""

import math

import jax
import jax.numpy as jnp

from perceiver_io import chunked_attend

IMPLEMENTATIONS = ('einsum', 'chunked', 'dot_product', 'auto')

# 'auto' switches from 'einsum' to 'chunked' from this many attention weights
# (B * H * N * M), an 8 MiB float32 matrix. Below it the matrix is cheap to
# keep for the backward pass; above it, recomputing it block by block costs
# less time than storing it costs memory (e.g. the 48 latent layers of the
# ImageNet models).
AUTO_CHUNK_THRESHOLD = 2**21

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _check_inputs(q, k, v, q_mask, kv_mask):
  """Raises ValueError on inconsistent shapes."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
      'attend expects q, k and v of rank 4 [B, N, H, D]; got shapes '
      f'{q.shape}, {k.shape} and {v.shape}.'
    )
  if k.shape[:3] != v.shape[:3]:
    raise ValueError(f'k {k.shape} and v {v.shape} differ in [B, M, H].')
  if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
    raise ValueError(f'q {q.shape} and k {k.shape} differ in batch or heads.')
  if q.shape[3] != k.shape[3]:
    raise ValueError(
      f'q and k need the same channels per head; got {q.shape[3]} and '
      f'{k.shape[3]}.'
    )
  _check_masks(q.shape[:2], k.shape[:2], q_mask, kv_mask)


def _check_masks(q_shape, kv_shape, q_mask, kv_mask):
  """Raises ValueError unless the masks are [B, N] and [B, M] (or None)."""
  if q_mask is not None and q_mask.shape != q_shape:
    raise ValueError(f'q_mask must have shape {q_shape}; got {q_mask.shape}.')
  if kv_mask is not None and kv_mask.shape != kv_shape:
    raise ValueError(
      f'kv_mask must have shape {kv_shape}; got {kv_mask.shape}.'
    )


def _check_dropout(dropout_prob, dropout_rng):
  if not 0.0 <= dropout_prob < 1.0:
    raise ValueError(f'dropout_prob must be in [0, 1); got {dropout_prob}.')
  if dropout_prob > 0.0 and dropout_rng is None:
    raise ValueError('attend needs dropout_rng when dropout_prob > 0.')


def wipe_masked_rows(out, q_mask, kv_mask):
  """Zeros the outputs of queries that may attend to no key."""
  keep = None
  if kv_mask is not None:
    keep = jnp.any(kv_mask != 0, axis=1, keepdims=True)  # [B, 1]
  if q_mask is not None:
    q_keep = q_mask != 0  # [B, N]
    keep = q_keep if keep is None else jnp.logical_and(keep, q_keep)
  if keep is None:
    return out
  return jnp.where(keep[:, :, None], out, jnp.zeros_like(out))


def attend_einsum(
  q, k, v, *, q_mask=None, kv_mask=None, dropout_prob=0.0, dropout_rng=None
):
  """The reference path: materialises the [B, H, N, M] attention matrix.

  Low-precision (bf16/fp16) inputs get float32 logits and softmax.
  """
  batch, num_q, num_heads, _ = q.shape
  scale = 1.0 / math.sqrt(q.shape[-1])
  low_precision = jnp.dtype(q.dtype) in _LOW_PRECISION
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
      jnp.asarray(chunked_attend.MASK_VALUE, logits.dtype),
    )
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_prob > 0.0:
    seeds = chunked_attend.dropout_seeds(dropout_rng)
    rows = chunked_attend.row_ids(batch, num_heads, num_q, 0, num_q)
    cols = jnp.arange(k.shape[2], dtype=jnp.uint32)  # k is [B, H, M, D].
    keep = chunked_attend.dropout_keep(seeds, rows, cols, dropout_prob)
    weights = jnp.where(keep, weights / (1.0 - dropout_prob), 0.0)
  out = jnp.einsum(
    'bhnm,bhmd->bhnd',
    weights.astype(v.dtype),
    v,
    preferred_element_type=logits_dtype,
  ).astype(v.dtype)  # [B, H, N, Dv]
  out = jnp.swapaxes(out, 1, 2)  # [B, N, H, Dv]
  out = jnp.reshape(out, (batch, num_q, num_heads * v.shape[-1]))
  return wipe_masked_rows(out, q_mask, kv_mask)


def _cudnn_max_head_dim():
  """cuDNN's fused attention takes heads up to 256 on Hopper, else 128."""
  try:
    capability = jax.devices('gpu')[0].compute_capability
  except (RuntimeError, AttributeError, IndexError):
    return 0
  major = int(str(capability).split('.', maxsplit=1)[0])
  return 256 if major >= 9 else 128


def cudnn_applies(q, k, v, *, kv_mask=None, dropout_prob=0.0):
  """Whether `attend` can run cuDNN's fused kernel on these arguments.

  It needs a CUDA GPU as the default backend, bf16 or fp16 inputs, equal
  query and value head sizes that are multiples of 8 up to the card's limit,
  no dropout and no key mask (a mask would be built as a full [N, M] bias).
  """
  if jax.default_backend() != 'gpu':
    return False
  if jnp.dtype(q.dtype) not in _LOW_PRECISION:
    return False
  if not q.dtype == k.dtype == v.dtype:
    return False
  head_dim = q.shape[-1]
  if head_dim != v.shape[-1] or head_dim % 8:
    return False
  if head_dim > _cudnn_max_head_dim():
    return False
  return kv_mask is None and dropout_prob == 0.0


def attend_dot_product(q, k, v, *, q_mask=None, kv_mask=None, use_cudnn=None):
  """`jax.nn.dot_product_attention`, cuDNN where `cudnn_applies`.

  It needs equal query and value head sizes; when they differ, the smaller
  one is zero-padded (padding q and k leaves the logits unchanged).
  """
  batch, num_q, num_heads, head_dim = q.shape
  value_dim = v.shape[-1]
  if use_cudnn is None:
    use_cudnn = cudnn_applies(q, k, v, kv_mask=kv_mask)
  scale = 1.0 / math.sqrt(head_dim)
  if value_dim > head_dim:
    pad = [(0, 0)] * 3 + [(0, value_dim - head_dim)]
    q, k = jnp.pad(q, pad), jnp.pad(k, pad)
  elif head_dim > value_dim:
    v = jnp.pad(v, [(0, 0)] * 3 + [(0, head_dim - value_dim)])
  mask = None
  if kv_mask is not None:
    mask = (kv_mask != 0)[:, None, None, :]  # [B, 1, 1, M]
    if use_cudnn:  # cuDNN takes the mask as a full [B, 1, N, M] bias.
      mask = jnp.broadcast_to(mask, (batch, 1, num_q, k.shape[1]))
  out = jax.nn.dot_product_attention(
    q,
    k,
    v,
    mask=mask,
    scale=scale,
    implementation='cudnn' if use_cudnn else None,
  )  # [B, N, H, max(D, Dv)]
  out = out[..., :value_dim]
  out = jnp.reshape(out, (batch, num_q, num_heads * value_dim))
  return wipe_masked_rows(out, q_mask, kv_mask)


def resolve_implementation(
  q, k, v, *, kv_mask=None, dropout_prob=0.0, implementation='auto'
):
  """The concrete implementation that `attend` runs for these arguments."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f'Unknown attention implementation {implementation!r}; expected one '
      f'of {IMPLEMENTATIONS}.'
    )
  if implementation != 'auto':
    return implementation
  if cudnn_applies(q, k, v, kv_mask=kv_mask, dropout_prob=dropout_prob):
    return 'dot_product'
  batch, num_q, num_heads, _ = q.shape
  if batch * num_heads * num_q * k.shape[1] >= AUTO_CHUNK_THRESHOLD:
    return 'chunked'
  return 'einsum'


def attend(
  q,
  k,
  v,
  *,
  q_mask=None,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  implementation='einsum',
  q_chunk_size=chunked_attend.DEFAULT_Q_CHUNK_SIZE,
  kv_chunk_size=chunked_attend.DEFAULT_KV_CHUNK_SIZE,
):
  """Multi-head scaled dot-product attention.

  Args:
    q: [B, N, H, D] queries.
    k: [B, M, H, D] keys.
    v: [B, M, H, Dv] values.
    q_mask: optional [B, N]; queries with 0 get a zero output.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    implementation: one of `IMPLEMENTATIONS`.
    q_chunk_size: queries per block of the 'chunked' path.
    kv_chunk_size: keys per block of the 'chunked' path.

  Returns:
    [B, N, H * Dv] attended values.

  Raises:
    ValueError: on inconsistent shapes, an unknown implementation, dropout
      without an rng, or dropout with 'dot_product'.
  """
  _check_inputs(q, k, v, q_mask, kv_mask)
  _check_dropout(dropout_prob, dropout_rng)
  implementation = resolve_implementation(
    q,
    k,
    v,
    kv_mask=kv_mask,
    dropout_prob=dropout_prob,
    implementation=implementation,
  )
  if implementation == 'einsum':
    return attend_einsum(
      q,
      k,
      v,
      q_mask=q_mask,
      kv_mask=kv_mask,
      dropout_prob=dropout_prob,
      dropout_rng=dropout_rng,
    )
  if implementation == 'dot_product':
    if dropout_prob > 0.0:
      raise ValueError(
        "The 'dot_product' attention implementation has no dropout; use "
        "'einsum', 'chunked' or 'auto' when dropout_attn_prob > 0."
      )
    return attend_dot_product(q, k, v, q_mask=q_mask, kv_mask=kv_mask)
  out = chunked_attend.chunked_attend(
    q,
    k,
    v,
    kv_mask=kv_mask,
    dropout_prob=dropout_prob,
    dropout_rng=dropout_rng,
    q_chunk_size=q_chunk_size,
    kv_chunk_size=kv_chunk_size,
  )  # [B, N, H * Dv]
  return wipe_masked_rows(out, q_mask, kv_mask)


def attend_projected(
  q,
  x_kv,
  kv_params,
  kv_project,
  *,
  q_mask=None,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  q_chunk_size=chunked_attend.DEFAULT_Q_CHUNK_SIZE,
  kv_chunk_size=chunked_attend.DEFAULT_KV_CHUNK_SIZE,
):
  """The 'chunked' path, with keys and values projected block by block.

  Equals `attend(q, *kv_project(kv_params, x_kv), implementation='chunked')`
  without ever holding the keys and values of all M inputs; see
  `chunked_attend.chunked_attend_projected`. Cross-attention layers use it
  when the inputs are many (`layers.cross_attention`).

  Args:
    q: [B, N, H, D] queries.
    x_kv: [B, M, C] inputs of the keys and values.
    kv_params: a pytree of arrays that `kv_project` reads.
    kv_project: (kv_params, [B, K, C]) -> (k [B, K, H, D], v [B, K, H, Dv]),
      row by row.
    q_mask: optional [B, N]; queries with 0 get a zero output.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    q_chunk_size: queries per block.
    kv_chunk_size: keys per block.

  Returns:
    [B, N, H * Dv] attended values.
  """
  if x_kv.ndim != 3 or x_kv.shape[0] != q.shape[0]:
    raise ValueError(
      f'x_kv must have shape [B, M, C] with the batch of q {q.shape}; got '
      f'{x_kv.shape}.'
    )
  _check_masks(q.shape[:2], x_kv.shape[:2], q_mask, kv_mask)
  _check_dropout(dropout_prob, dropout_rng)
  out = chunked_attend.chunked_attend_projected(
    q,
    x_kv,
    kv_params,
    kv_project,
    kv_mask=kv_mask,
    dropout_prob=dropout_prob,
    dropout_rng=dropout_rng,
    q_chunk_size=q_chunk_size,
    kv_chunk_size=kv_chunk_size,
  )  # [B, N, H * Dv]
  return wipe_masked_rows(out, q_mask, kv_mask)
