"""`attend`: the one attention entry point of every Perceiver IO layer.

Shape letters: B batch, N queries, M keys, H heads, D channels per head
(Dv for values), C input channels.

`attend(q, kv, ...)` takes per-head queries and either the keys and values,
`(k, v)`, or the inputs they are computed from, `KeyValueInputs` (a
LayerNorm and two linear maps, as in every cross-attention). It returns the
heads merged back into channels. Masks are given per query and per key
instead of as a [B, N, M] matrix, so that no implementation ever needs to
build one: a key with `kv_mask == 0` is ignored, and a query whose keys are
all masked (or whose own `q_mask` is 0) gets a zero output, exactly like
DeepMind's code.

It runs one of the kernels of this package (`resolve` says which):
  * 'einsum' (`ops.einsum`): the reference; the [B, H, N, M] matrix whole.
  * 'dot_product' (`ops.dot_product`): `jax.nn.dot_product_attention`,
    cuDNN's fused kernel on a GPU with bf16/fp16 inputs.
  * 'chunked' (`ops.chunked`): an online softmax over key blocks, queries
    blocked too, with a backward pass that recomputes each block. Memory
    grows with the block sizes, not with N x M.
  * 'projected' (`ops.chunked.attend_projected`): 'chunked' on
    `KeyValueInputs` longer than one key block, projecting the keys and
    values block by block, so that the [B, M, H, D] keys never exist.
  * 'grid' (`ops.grid`): on `KeyValueInputs` whose inputs are
    `GridInputs` (Fourier features kept as per-axis tables), neither the
    inputs nor their keys and values ever exist.
`runtime.attention_impl` picks among them: 'einsum' and 'dot_product' run
those kernels (building grid inputs and keys first); 'chunked' runs 'grid',
'projected' or 'chunked'; 'auto' runs cuDNN where it applies, 'grid' or
'projected' where they apply, and 'chunked' or 'einsum' by the size of the
attention matrix.

Attention dropout draws its keep mask from a hash of (rng, batch, head, query,
key), so every kernel drops exactly the same weights and the paths can be
tested against each other with dropout on.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import chunked
from perceiver_io.ops import dense as dense_lib
from perceiver_io.ops import dot_product
from perceiver_io.ops import einsum
from perceiver_io.ops import grid
from perceiver_io.ops import layer_norm as layer_norm_lib

KERNELS = ('einsum', 'dot_product', 'chunked', 'projected', 'grid')

# 'auto' switches from 'einsum' to 'chunked' from this many attention weights
# (B * H * N * M), an 8 MiB float32 matrix. Below it the matrix is cheap to
# keep for the backward pass; above it, recomputing it block by block costs
# less time than storing it costs memory (e.g. the 48 latent layers of the
# ImageNet models).
AUTO_CHUNK_THRESHOLD = 2**21


class KeyValueInputs(NamedTuple):
  """The inputs of keys and values, and the weights that make them.

  k = layer_norm(inputs) @ k_w + k_b and v = layer_norm(inputs) @ v_w + v_b,
  split into the heads of the queries. Given these instead of (k, v),
  `attend` may compute the keys block by block ('projected') or not at all
  ('grid').
  """

  inputs: jax.Array | grid.GridInputs  # [B, M, C]
  ln_scale: jax.Array  # [C]
  ln_offset: jax.Array  # [C]
  k_w: jax.Array  # [C, H * D]
  k_b: jax.Array  # [H * D]
  v_w: jax.Array  # [C, H * Dv]
  v_b: jax.Array  # [H * Dv]

  @property
  def params(self):
    return tuple(self[1:])


def split_heads(x, num_heads):
  """[B, N, C] -> [B, N, H, C / H]."""
  batch, length, channels = x.shape
  return jnp.reshape(x, (batch, length, num_heads, channels // num_heads))


def project(kv, num_heads, dtype=jnp.float32):
  """The keys [B, M, H, D] and values [B, M, H, Dv] of `KeyValueInputs`.

  The products take `dtype` operands with float32 sums (`ops.dense`).
  """
  x = kv.inputs
  if isinstance(x, grid.GridInputs):
    x = x.materialize()
  h = layer_norm_lib.layer_norm(x, kv.ln_scale, kv.ln_offset)
  k = dense_lib.dense(h, kv.k_w, kv.k_b, dtype)  # [B, M, H * D]
  v = dense_lib.dense(h, kv.v_w, kv.v_b, dtype)  # [B, M, H * Dv]
  return split_heads(k, num_heads), split_heads(v, num_heads)


# --- Checks -------------------------------------------------------------------


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


def _check_kv_inputs(q, kv, q_mask, kv_mask):
  x = kv.inputs
  if x.ndim != 3 or x.shape[0] != q.shape[0]:
    raise ValueError(
      'KeyValueInputs.inputs must have shape [B, M, C] with the batch of q '
      f'{q.shape}; got {x.shape}.'
    )
  heads, head_dim = q.shape[2:]
  if kv.k_w.shape != (x.shape[-1], heads * head_dim):
    raise ValueError(
      f'k_w must have shape {(x.shape[-1], heads * head_dim)} for inputs '
      f'{x.shape} and queries {q.shape}; got {kv.k_w.shape}.'
    )
  if kv.v_w.shape[0] != x.shape[-1] or kv.v_w.shape[1] % heads:
    raise ValueError(
      f'v_w must have shape [{x.shape[-1]}, H * Dv] with H = {heads}; got '
      f'{kv.v_w.shape}.'
    )
  _check_masks(q.shape[:2], x.shape[:2], q_mask, kv_mask)


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


# --- Choosing a kernel --------------------------------------------------------


def uses_grid(kv, *, dropout_prob=0.0, runtime=runtime_lib.DEFAULT):
  """Whether `attend` runs the 'grid' kernel on `kv`.

  It does on `KeyValueInputs` of `GridInputs`, for the 'auto' and 'chunked'
  implementations, without attention dropout.
  """
  return (
    isinstance(kv, KeyValueInputs)
    and isinstance(kv.inputs, grid.GridInputs)
    and runtime.attention_impl in ('auto', 'chunked')
    and dropout_prob == 0.0
  )


def _resolve_arrays(q, k, v, kv_mask, dropout_prob, implementation):
  """The kernel for keys and values given whole (q, k, v: shapes suffice)."""
  if implementation != 'auto':
    return implementation
  if dot_product.cudnn_applies(
    q, k, v, kv_mask=kv_mask, dropout_prob=dropout_prob
  ):
    return 'dot_product'
  batch, num_q, num_heads, _ = q.shape
  if batch * num_heads * num_q * k.shape[1] >= AUTO_CHUNK_THRESHOLD:
    return 'chunked'
  return 'einsum'


def resolve(
  q, kv, *, kv_mask=None, dropout_prob=0.0, runtime=runtime_lib.DEFAULT
):
  """The kernel of `KERNELS` that `attend` runs for these arguments.

  Args:
    q: [B, N, H, D] queries (an array or a `jax.ShapeDtypeStruct`).
    kv: (k, v) or `KeyValueInputs`, as for `attend`.
    kv_mask: optional [B, M].
    dropout_prob: dropout rate on the attention weights.
    runtime: a `runtime.Runtime`; its `attention_impl` decides.
  """
  if uses_grid(kv, dropout_prob=dropout_prob, runtime=runtime):
    return 'grid'
  if isinstance(kv, KeyValueInputs):
    batch, num_kv, _ = kv.inputs.shape
    heads = q.shape[2]
    dtype = runtime.dtype
    k = jax.ShapeDtypeStruct((batch, num_kv, heads, q.shape[3]), dtype)
    v = jax.ShapeDtypeStruct(
      (batch, num_kv, heads, kv.v_w.shape[1] // heads), dtype
    )
    impl = _resolve_arrays(
      q, k, v, kv_mask, dropout_prob, runtime.attention_impl
    )
    if impl == 'chunked' and num_kv > runtime.kv_chunk_size:
      return 'projected'
    return impl
  k, v = kv
  return _resolve_arrays(q, k, v, kv_mask, dropout_prob, runtime.attention_impl)


# --- attend -------------------------------------------------------------------


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


def attend(
  q,
  kv,
  *,
  q_mask=None,
  kv_mask=None,
  dropout_prob=0.0,
  dropout_rng=None,
  runtime=runtime_lib.DEFAULT,
  causal_offset=None,
):
  """Multi-head scaled dot-product attention.

  Args:
    q: [B, N, H, D] queries.
    kv: the keys [B, M, H, D] and values [B, M, H, Dv] as a pair `(k, v)`,
      or the `KeyValueInputs` they come from (M inputs).
    q_mask: optional [B, N]; queries with 0 get a zero output.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    dropout_prob: dropout rate on the attention weights.
    dropout_rng: PRNG key, required when `dropout_prob > 0`.
    runtime: a `runtime.Runtime`: the implementation (`resolve`), the block
      sizes, and the compute dtype of the projections of `KeyValueInputs`.
    causal_offset: optional int; query i sees keys 0..causal_offset + i only
      (Perceiver AR). 'grid' and 'projected' fall back to 'chunked' on the
      projected keys and values; 'chunked' masks block by block.

  Returns:
    [B, N, H * Dv] attended values.

  Raises:
    ValueError: on inconsistent shapes, dropout without an rng, or dropout
      with 'dot_product'.
  """
  _check_dropout(dropout_prob, dropout_rng)
  if isinstance(kv, KeyValueInputs):
    _check_kv_inputs(q, kv, q_mask, kv_mask)
  else:
    _check_inputs(q, *kv, q_mask, kv_mask)
  impl = resolve(
    q, kv, kv_mask=kv_mask, dropout_prob=dropout_prob, runtime=runtime
  )
  num_heads = q.shape[2]
  if causal_offset is not None and impl in ('grid', 'projected'):
    impl = 'chunked'  # Keys and values projected whole, then blocks.
  if impl == 'grid':
    out = grid.attend(
      q,
      kv.inputs,
      *kv.params,
      kv_mask=kv_mask,
      block_size=runtime.grid_block_size,
    )
  elif impl == 'projected':
    inputs = kv.inputs
    if isinstance(inputs, grid.GridInputs):
      inputs = inputs.materialize()

    def kv_project(params, x):
      return project(KeyValueInputs(x, *params), num_heads, runtime.dtype)

    out = chunked.attend_projected(
      q,
      inputs,
      kv.params,
      kv_project,
      kv_mask=kv_mask,
      dropout_prob=dropout_prob,
      dropout_rng=dropout_rng,
      q_chunk_size=runtime.q_chunk_size,
      kv_chunk_size=runtime.kv_chunk_size,
    )
  else:
    if isinstance(kv, KeyValueInputs):
      kv = project(kv, num_heads, runtime.dtype)
    k, v = kv
    if impl == 'einsum':
      out = einsum.attend(
        q,
        k,
        v,
        kv_mask=kv_mask,
        dropout_prob=dropout_prob,
        dropout_rng=dropout_rng,
        causal_offset=causal_offset,
      )
    elif impl == 'dot_product':
      if dropout_prob > 0.0:
        raise ValueError(
          "The 'dot_product' attention implementation has no dropout; use "
          "'einsum', 'chunked' or 'auto' when dropout_attn_prob > 0."
        )
      out = dot_product.attend(
        q, k, v, kv_mask=kv_mask, causal_offset=causal_offset
      )
    else:
      out = chunked.attend(
        q,
        k,
        v,
        kv_mask=kv_mask,
        dropout_prob=dropout_prob,
        dropout_rng=dropout_rng,
        q_chunk_size=runtime.q_chunk_size,
        kv_chunk_size=runtime.kv_chunk_size,
        causal_offset=causal_offset,
      )  # [B, N, H * Dv]
  return wipe_masked_rows(out, q_mask, kv_mask)
