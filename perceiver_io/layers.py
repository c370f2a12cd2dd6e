"""Attention layers as pure functions of their weights.

Shape letters: B batch, N queries, M keys/values, C channels, H heads.

`self_attention` and `cross_attention` compute DeepMind's pre-LayerNorm
blocks from a weights tuple (`SelfAttentionWeights`, `CrossAttentionWeights`)
and a static `LayerSpec`, without Haiku, so that the encoder can loop over
layers with `lax.scan` (and stack their weights). `attention.py` creates the
parameters under the released names and calls these functions.

Precision: parameters are float32. A compute dtype of 'bfloat16' runs the
matrix products on bf16 operands with float32 accumulation (`dense.py`),
while LayerNorm, GELU, softmax and the residual stream stay float32.
"""

import contextlib
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from perceiver_io import attend as attend_lib
from perceiver_io import chunked_attend
from perceiver_io import grid_attend
from perceiver_io.dense import dense
from perceiver_io.layer_norm import layer_norm

COMPUTE_DTYPES = (None, 'float32', 'bfloat16', 'float16')


def check_compute_dtype(compute_dtype):
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
      f'Unknown compute_dtype {compute_dtype!r}; expected one of '
      f'{COMPUTE_DTYPES}.'
    )


_default_compute_dtype = [None]


@contextlib.contextmanager
def compute_dtype_scope(compute_dtype):
  """Sets the compute dtype of layers built without one, while tracing.

  `with compute_dtype_scope('bfloat16'): jax.jit(model.apply).lower(...)`
  runs every attention layer's matrix products in bf16, including the
  decoders', whose configs have no `compute_dtype` key. It acts while a
  function is traced: a function that jit has already traced keeps its dtype.
  """
  check_compute_dtype(compute_dtype)
  _default_compute_dtype.append(compute_dtype)
  try:
    yield
  finally:
    _default_compute_dtype.pop()


# --- Weights ------------------------------------------------------------------


class SelfAttentionWeights(NamedTuple):
  """One self-attention layer's weights."""

  ln_scale: jax.Array  # [C]
  ln_offset: jax.Array  # [C]
  q_w: jax.Array  # [C, qk]
  q_b: jax.Array  # [qk]
  k_w: jax.Array  # [C, qk]
  k_b: jax.Array  # [qk]
  v_w: jax.Array  # [C, v]
  v_b: jax.Array  # [v]
  out_w: jax.Array  # [v, C]
  out_b: jax.Array  # [C]
  mlp_ln_scale: jax.Array  # [C]
  mlp_ln_offset: jax.Array  # [C]
  mlp_w1: jax.Array  # [C, wC]
  mlp_b1: jax.Array  # [wC]
  mlp_w2: jax.Array  # [wC, C]
  mlp_b2: jax.Array  # [C]


class CrossAttentionWeights(NamedTuple):
  """One cross-attention layer's weights."""

  q_ln_scale: jax.Array  # [Cq]
  q_ln_offset: jax.Array  # [Cq]
  kv_ln_scale: jax.Array  # [Ckv]
  kv_ln_offset: jax.Array  # [Ckv]
  q_w: jax.Array  # [Cq, qk]
  q_b: jax.Array  # [qk]
  k_w: jax.Array  # [Ckv, qk]
  k_b: jax.Array  # [qk]
  v_w: jax.Array  # [Ckv, v]
  v_b: jax.Array  # [v]
  out_w: jax.Array  # [v, Cq]
  out_b: jax.Array  # [Cq]
  mlp_ln_scale: jax.Array  # [Cq]
  mlp_ln_offset: jax.Array  # [Cq]
  mlp_w1: jax.Array  # [Cq, wCq]
  mlp_b1: jax.Array  # [wCq]
  mlp_w2: jax.Array  # [wCq, Cq]
  mlp_b2: jax.Array  # [Cq]


# --- Pure layer functions -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """The static settings of one attention layer."""

  num_heads: int
  qk_channels: int
  v_channels: int
  dropout_prob: float = 0.0
  dropout_attn_prob: float = 0.0
  use_query_residual: bool = True
  attention_impl: str = 'einsum'
  compute_dtype: str | None = None
  # Cross-attention to more queries than this runs in chunks of this many
  # queries (without dropout): see `_over_query_chunks`.
  query_chunk_size: int | None = None

  @property
  def dtype(self):
    return jnp.dtype(
      self.compute_dtype or _default_compute_dtype[-1] or jnp.float32
    )


def _dropout(rng, rate, x):
  if rate <= 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _rngs(rng, is_training, spec):
  """Keys for attention dropout, the attention branch and the MLP."""
  if not is_training or (
    spec.dropout_prob <= 0.0 and spec.dropout_attn_prob <= 0.0
  ):
    return None, None, None
  if rng is None:
    raise ValueError('Dropout during training needs an rng.')
  return tuple(jax.random.split(rng, 3))


def _split_heads(x, num_heads):
  """[B, N, C] -> [B, N, H, C / H]."""
  batch, length, channels = x.shape
  return jnp.reshape(x, (batch, length, num_heads, channels // num_heads))


def _attn_rate(spec, is_training):
  return spec.dropout_attn_prob if is_training else 0.0


def _multihead(spec, q, k, v, q_mask, kv_mask, is_training, rng):
  """Heads [B, N, H, D], [B, M, H, D], [B, M, H, Dv] -> [B, N, H * Dv]."""
  rate = _attn_rate(spec, is_training)
  return attend_lib.attend(
    q,
    k,
    v,
    q_mask=q_mask,
    kv_mask=kv_mask,
    dropout_prob=rate,
    dropout_rng=rng if rate > 0.0 else None,
    implementation=spec.attention_impl,
  )


def projects_kv_in_blocks(spec, x_q, x_kv, kv_mask=None, is_training=False):
  """Whether `cross_attention` computes its keys and values block by block.

  It does when `attend` would take the 'chunked' path and the inputs span
  more than one key block (e.g. the 50,176 pixels of the ImageNet encoder or
  the 182,528 of the optical-flow one): then the [B, M, qk] keys and the
  [B, M, v] values never exist for all M inputs (`attend.attend_projected`).
  """
  batch, num_q, _ = x_q.shape
  num_kv = x_kv.shape[1]
  if num_kv <= chunked_attend.DEFAULT_KV_CHUNK_SIZE:
    return False
  heads, dtype = spec.num_heads, spec.dtype
  q = jax.ShapeDtypeStruct(
    (batch, num_q, heads, spec.qk_channels // heads), dtype
  )
  k = jax.ShapeDtypeStruct(
    (batch, num_kv, heads, spec.qk_channels // heads), dtype
  )
  v = jax.ShapeDtypeStruct(
    (batch, num_kv, heads, spec.v_channels // heads), dtype
  )
  impl = attend_lib.resolve_implementation(
    q,
    k,
    v,
    kv_mask=kv_mask,
    dropout_prob=_attn_rate(spec, is_training),
    implementation=spec.attention_impl,
  )
  return impl == 'chunked'


def uses_grid_attend(spec, is_training=False):
  """Whether `cross_attention` runs `grid_attend` on `GridInputs`.

  It does for the 'auto' and 'chunked' attention implementations, without
  attention dropout; otherwise it materialises the inputs first ('einsum' is
  the reference, 'dot_product' asks for `jax.nn.dot_product_attention`).
  """
  return (
    spec.attention_impl in ('auto', 'chunked')
    and _attn_rate(spec, is_training) == 0.0
  )


def _mlp(spec, w1, b1, w2, b2, x):
  # The GELU runs in float32 whatever the compute dtype: XLA's CPU backend
  # would compute a bf16 one in float32 anyway, and its residuals, stacked by
  # `lax.scan` over the encoder's blocks, stay float32 (see `residuals`).
  h = jax.nn.gelu(dense(x, w1, b1, spec.dtype, float32_output=True))
  return dense(h, w2, b2, spec.dtype)


def self_attention(spec, w, x, *, is_training, mask=None, rng=None):
  """One pre-LayerNorm transformer layer.

  Args:
    spec: the layer's static settings.
    w: its `SelfAttentionWeights`.
    x: [B, N, C] float32 inputs.
    is_training: enables dropout.
    mask: optional [B, N] mask of the queries and keys.
    rng: PRNG key, needed for dropout during training.

  Returns:
    [B, N, C] float32.
  """
  rate = spec.dropout_prob if is_training else 0.0
  attn_rng, branch_rng, mlp_rng = _rngs(rng, is_training, spec)
  h = layer_norm(x, w.ln_scale, w.ln_offset)
  heads = spec.num_heads
  q = _split_heads(dense(h, w.q_w, w.q_b, spec.dtype), heads)  # [B, N, H, D]
  k = _split_heads(dense(h, w.k_w, w.k_b, spec.dtype), heads)  # [B, N, H, D]
  v = _split_heads(dense(h, w.v_w, w.v_b, spec.dtype), heads)  # [B, N, H, Dv]
  attn = _multihead(spec, q, k, v, mask, mask, is_training, attn_rng)
  attn = dense(attn, w.out_w, w.out_b, spec.dtype)  # [B, N, C]
  x = x + _dropout(branch_rng, rate, attn).astype(x.dtype)
  h = layer_norm(x, w.mlp_ln_scale, w.mlp_ln_offset)
  h = _mlp(spec, w.mlp_w1, w.mlp_b1, w.mlp_w2, w.mlp_b2, h)
  return x + _dropout(mlp_rng, rate, h).astype(x.dtype)


def cross_attention(
  spec,
  w,
  x_q,
  x_kv,
  *,
  is_training,
  q_mask=None,
  kv_mask=None,
  rng=None,
  output_fn=None,
):
  """One pre-LayerNorm cross-attention layer; the output has x_q's width.

  Args:
    spec: the layer's static settings.
    w: its `CrossAttentionWeights`.
    x_q: [B, N, Cq] queries.
    x_kv: [B, M, Ckv] keys and values, or a `grid_attend.GridInputs` that
      stands for them (see `uses_grid_attend`).
    is_training: enables dropout.
    q_mask: optional [B, N].
    kv_mask: optional [B, M].
    rng: PRNG key, needed for dropout during training.
    output_fn: optional function of each query's output alone,
      [B, n, Cq] -> [B, n, Co] (a decoder's final linear map, say), applied
      inside the query chunks so that the [B, N, Cq] output is never whole.

  Returns:
    [B, N, Cq] float32, or [B, N, Co] with `output_fn`.
  """
  rate = spec.dropout_prob if is_training else 0.0
  attn_rng, branch_rng, mlp_rng = _rngs(rng, is_training, spec)
  kv_params = (w.kv_ln_scale, w.kv_ln_offset, w.k_w, w.k_b, w.v_w, w.v_b)

  def kv_project(params, x):
    """[B, m, Ckv] -> keys [B, m, H, D] and values [B, m, H, Dv]."""
    ln_scale, ln_offset, k_w, k_b, v_w, v_b = params
    h = layer_norm(x, ln_scale, ln_offset)
    k = dense(h, k_w, k_b, spec.dtype)  # [B, m, qk]
    v = dense(h, v_w, v_b, spec.dtype)  # [B, m, v]
    return _split_heads(k, spec.num_heads), _split_heads(v, spec.num_heads)

  chunk = spec.query_chunk_size
  chunk_queries = bool(chunk and x_q.shape[1] > chunk and rng is None)
  on_grid = isinstance(x_kv, grid_attend.GridInputs)
  if on_grid and not uses_grid_attend(spec, is_training):
    x_kv, on_grid = x_kv.materialize(), False
  if on_grid:

    def attention(q, q_mask):
      out = grid_attend.grid_attend(q, x_kv, *kv_params, kv_mask=kv_mask)
      return attend_lib.wipe_masked_rows(out, q_mask, kv_mask)

  elif not chunk_queries and projects_kv_in_blocks(
    spec, x_q, x_kv, kv_mask, is_training
  ):
    attn_rate = _attn_rate(spec, is_training)

    def attention(q, q_mask):
      return attend_lib.attend_projected(
        q,
        x_kv,
        kv_params,
        kv_project,
        q_mask=q_mask,
        kv_mask=kv_mask,
        dropout_prob=attn_rate,
        dropout_rng=attn_rng if attn_rate > 0.0 else None,
      )

  else:
    k, v = kv_project(kv_params, x_kv)

    def attention(q, q_mask):
      return _multihead(spec, q, k, v, q_mask, kv_mask, is_training, attn_rng)

  def queries_fn(x_q, q_mask):
    """Everything that follows for [B, n, Cq] queries: per query."""
    h_q = layer_norm(x_q, w.q_ln_scale, w.q_ln_offset)
    q = dense(h_q, w.q_w, w.q_b, spec.dtype)  # [B, n, qk]
    attn = attention(_split_heads(q, spec.num_heads), q_mask)  # [B, n, v]
    attn = dense(attn, w.out_w, w.out_b, spec.dtype)  # [B, n, Cq]
    attn = _dropout(branch_rng, rate, attn).astype(jnp.float32)
    x = x_q.astype(jnp.float32) + attn if spec.use_query_residual else attn
    h = layer_norm(x, w.mlp_ln_scale, w.mlp_ln_offset)
    h = _mlp(spec, w.mlp_w1, w.mlp_b1, w.mlp_w2, w.mlp_b2, h)
    x = x + _dropout(mlp_rng, rate, h).astype(x.dtype)
    return x if output_fn is None else output_fn(x)

  if chunk_queries:
    return _over_query_chunks(queries_fn, x_q, q_mask, chunk)
  return queries_fn(x_q, q_mask)


def _over_query_chunks(queries_fn, x_q, q_mask, chunk):
  """queries_fn over [B, chunk, Cq] slices of x_q, writing one output.

  Each query's result depends on that query alone, so the output equals
  `queries_fn(x_q, q_mask)`, while the per-query intermediates (normalised
  queries, projections, attention outputs, MLP activations) exist for one
  chunk at a time.
  """
  batch, num_q, channels = x_q.shape
  num_full = num_q // chunk
  out_chunk = jax.eval_shape(
    queries_fn,
    jax.ShapeDtypeStruct((batch, chunk, channels), x_q.dtype),
    None
    if q_mask is None
    else jax.ShapeDtypeStruct((batch, chunk), q_mask.dtype),
  )  # [B, chunk, Co]
  out = jnp.zeros((batch, num_q, out_chunk.shape[-1]), out_chunk.dtype)

  def apply(out, start, size):
    x = lax.dynamic_slice_in_dim(x_q, start, size, axis=1)
    mask = (
      None
      if q_mask is None
      else lax.dynamic_slice_in_dim(q_mask, start, size, axis=1)
    )
    return lax.dynamic_update_slice_in_dim(
      out, queries_fn(x, mask), start, axis=1
    )

  out, _ = lax.scan(
    lambda out, i: (apply(out, i * chunk, chunk), None),
    out,
    jnp.arange(num_full),
  )
  if num_q > num_full * chunk:
    out = apply(out, num_full * chunk, num_q - num_full * chunk)
  return out
