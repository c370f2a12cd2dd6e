"""Attention layers: DeepMind's parameters, pure layer functions, modules.

Shape letters: B batch, N queries, M keys/values, C channels, H heads.

Parameter names match DeepMind's released checkpoints: an `attention` scope
holding `linear` (q), `linear_1` (k), `linear_2` (v) and `linear_3` (output),
`layer_norm*` scopes, and an `mlp` with `linear` and `linear_1`.

`self_attention_weights` and `cross_attention_weights` create (or fetch) a
layer's parameters as a weights tuple (`SelfAttentionWeights`,
`CrossAttentionWeights`); `self_attention` and `cross_attention` compute
DeepMind's pre-LayerNorm blocks from such a tuple and a static `LayerSpec`,
without Haiku, so that the encoder can loop over layers with `lax.scan` (and
stack their weights). The `SelfAttention` and `CrossAttention` modules do
both. Every layer attends through `ops.attend.attend`, run as its spec's
`runtime.Runtime` says.

Precision: parameters are float32. A compute dtype of 'bfloat16' runs the
matrix products on bf16 operands with float32 accumulation (`ops.dense`),
while LayerNorm, GELU, softmax and the residual stream stay float32.
"""

import dataclasses
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend as attend_lib
from perceiver_io.ops.dense import dense
from perceiver_io.ops.layer_norm import layer_norm

SHAPES_FOR_ATTN = ('kv', 'q')


def _check_rank3(name, x):
  if x.ndim != 3:
    raise ValueError(f'{name} must have shape [B, N, C]; got {x.shape}.')


def _check_divides(what, channels, num_heads):
  if channels % num_heads != 0:
    raise ValueError(
      f'{what} ({channels}) must be divisible by the number of heads '
      f'({num_heads}).'
    )


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
  runtime: runtime_lib.Runtime = runtime_lib.DEFAULT

  @property
  def dtype(self):
    return self.runtime.dtype


def needs_rng(spec, is_training):
  """Whether a layer of this spec draws random numbers (dropout)."""
  return is_training and (
    spec.dropout_prob > 0.0 or spec.dropout_attn_prob > 0.0
  )


def _dropout(rng, rate, x):
  if rate <= 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _rngs(rng, is_training, spec):
  """Keys for attention dropout, the attention branch and the MLP."""
  if not needs_rng(spec, is_training):
    return None, None, None
  if rng is None:
    raise ValueError('Dropout during training needs an rng.')
  return tuple(jax.random.split(rng, 3))


def _attn_rate(spec, is_training):
  return spec.dropout_attn_prob if is_training else 0.0


def _attend(spec, q, kv, q_mask, kv_mask, is_training, rng):
  """Heads [B, N, H, D] and (k, v) or `KeyValueInputs` -> [B, N, H * Dv]."""
  rate = _attn_rate(spec, is_training)
  return attend_lib.attend(
    q,
    kv,
    q_mask=q_mask,
    kv_mask=kv_mask,
    dropout_prob=rate,
    dropout_rng=rng if rate > 0.0 else None,
    runtime=spec.runtime,
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
  split = attend_lib.split_heads
  q = split(dense(h, w.q_w, w.q_b, spec.dtype), heads)  # [B, N, H, D]
  k = split(dense(h, w.k_w, w.k_b, spec.dtype), heads)  # [B, N, H, D]
  v = split(dense(h, w.v_w, w.v_b, spec.dtype), heads)  # [B, N, H, Dv]
  attn = _attend(spec, q, (k, v), mask, mask, is_training, attn_rng)
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
    x_kv: [B, M, Ckv] inputs of the keys and values, or an
      `ops.grid.GridInputs` that stands for them.
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
  kv = attend_lib.KeyValueInputs(
    x_kv, w.kv_ln_scale, w.kv_ln_offset, w.k_w, w.k_b, w.v_w, w.v_b
  )
  chunk = spec.runtime.query_chunk_size
  chunk_queries = bool(chunk and x_q.shape[1] > chunk and rng is None)
  if chunk_queries and not attend_lib.uses_grid(
    kv, dropout_prob=_attn_rate(spec, is_training), runtime=spec.runtime
  ):
    # Keys and values once for all query chunks.
    kv = attend_lib.project(kv, spec.num_heads, spec.dtype)

  def queries_fn(x_q, q_mask):
    """Everything that follows for [B, n, Cq] queries: per query."""
    h_q = layer_norm(x_q, w.q_ln_scale, w.q_ln_offset)
    q = dense(h_q, w.q_w, w.q_b, spec.dtype)  # [B, n, qk]
    q = attend_lib.split_heads(q, spec.num_heads)  # [B, n, H, D]
    attn = _attend(spec, q, kv, q_mask, kv_mask, is_training, attn_rng)
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


# --- Parameters under DeepMind's names ----------------------------------------


def linear_params(name, in_dim, out_dim, init_scale=1.0, with_bias=True):
  """(w [in, out], b [out] or None) of DeepMind's `conv_1d` / hk.Linear."""
  with hk.name_scope(name):
    w = hk.get_parameter(
      'w',
      [in_dim, out_dim],
      jnp.float32,
      init=hk.initializers.VarianceScaling(init_scale),
    )
    b = (
      hk.get_parameter('b', [out_dim], jnp.float32, init=jnp.zeros)
      if with_bias
      else None
    )
  return w, b


def layer_norm_params(name, channels):
  """(scale, offset) of an hk.LayerNorm over the channels."""
  with hk.name_scope(name):
    scale = hk.get_parameter('scale', [channels], jnp.float32, init=jnp.ones)
    offset = hk.get_parameter('offset', [channels], jnp.float32, init=jnp.zeros)
  return scale, offset


def _attention_params(
  in_q,
  in_kv,
  qk_channels,
  v_channels,
  output_channels,
  init_scale,
  final_init_scale,
  with_final_bias,
):
  """The four projections of DeepMind's `Attention`, in its order."""
  with hk.name_scope('attention'):
    q = linear_params('linear', in_q, qk_channels, init_scale)
    k = linear_params('linear_1', in_kv, qk_channels, init_scale)
    v = linear_params('linear_2', in_kv, v_channels, init_scale)
    out = linear_params(
      'linear_3',
      v_channels,
      output_channels,
      final_init_scale,
      with_bias=with_final_bias,
    )
  return q, k, v, out


def _mlp_params(channels, widening_factor, init_scale):
  with hk.name_scope('mlp'):
    w1, b1 = linear_params(
      'linear', channels, widening_factor * channels, init_scale
    )
    w2, b2 = linear_params(
      'linear_1', widening_factor * channels, channels, init_scale
    )
  return w1, b1, w2, b2


def self_attention_weights(
  spec, channels, *, widening_factor=4, att_init_scale=1.0, dense_init_scale=1.0
):
  """Creates (at init) or fetches a self-attention layer's parameters.

  They are created in the current Haiku scope under DeepMind's names.
  """
  ln = layer_norm_params('layer_norm', channels)
  q, k, v, out = _attention_params(
    channels,
    channels,
    spec.qk_channels,
    spec.v_channels,
    channels,
    att_init_scale,
    att_init_scale,
    True,
  )
  mlp_ln = layer_norm_params('layer_norm_1', channels)
  mlp = _mlp_params(channels, widening_factor, dense_init_scale)
  return SelfAttentionWeights(*ln, *q, *k, *v, *out, *mlp_ln, *mlp)


def cross_attention_weights(
  spec,
  q_channels,
  kv_channels,
  *,
  widening_factor=1,
  att_init_scale=1.0,
  dense_init_scale=1.0,
):
  """Creates (at init) or fetches a cross-attention layer's parameters."""
  q_ln = layer_norm_params('layer_norm', q_channels)
  kv_ln = layer_norm_params('layer_norm_1', kv_channels)
  q, k, v, out = _attention_params(
    q_channels,
    kv_channels,
    spec.qk_channels,
    spec.v_channels,
    q_channels,
    att_init_scale,
    att_init_scale,
    True,
  )
  mlp_ln = layer_norm_params('layer_norm_2', q_channels)
  mlp = _mlp_params(q_channels, widening_factor, dense_init_scale)
  return CrossAttentionWeights(*q_ln, *kv_ln, *q, *k, *v, *out, *mlp_ln, *mlp)


# --- Modules ------------------------------------------------------------------


class SelfAttention(hk.Module):
  """A pre-LayerNorm transformer block."""

  def __init__(
    self,
    widening_factor: int = 4,
    dropout_prob: float = 0.0,
    dropout_attn_prob: float = 0.0,
    num_heads: int = 8,
    att_init_scale: float = 1.0,
    dense_init_scale: float = 1.0,
    qk_channels: int | None = None,
    v_channels: int | None = None,
    runtime: runtime_lib.Runtime = runtime_lib.DEFAULT,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if num_heads <= 0 or widening_factor <= 0:
      raise ValueError(
        'num_heads and widening_factor must be positive; got '
        f'{num_heads} and {widening_factor}.'
      )
    if not 0.0 <= dropout_prob < 1.0 or not 0.0 <= dropout_attn_prob < 1.0:
      raise ValueError(
        'Dropout rates must be in [0, 1); got '
        f'{dropout_prob} and {dropout_attn_prob}.'
      )
    runtime_lib.check_type(runtime)
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._dropout_attn_prob = dropout_attn_prob
    self._num_heads = num_heads
    self._att_init_scale = att_init_scale
    self._dense_init_scale = dense_init_scale
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._runtime = runtime

  def spec(self, channels):
    """The `LayerSpec` of this layer on [B, N, channels] inputs."""
    qk_channels = self._qk_channels or channels
    v_channels = self._v_channels or qk_channels
    _check_divides('qk_channels', qk_channels, self._num_heads)
    _check_divides('v_channels', v_channels, self._num_heads)
    return LayerSpec(
      num_heads=self._num_heads,
      qk_channels=qk_channels,
      v_channels=v_channels,
      dropout_prob=self._dropout_prob,
      dropout_attn_prob=self._dropout_attn_prob,
      runtime=self._runtime,
    )

  def __call__(self, inputs, *, is_training, mask=None):
    """Self-attention over [B, N, C] with an optional [B, N] mask."""
    _check_rank3('inputs', inputs)
    channels = inputs.shape[-1]
    spec = self.spec(channels)
    weights = self_attention_weights(
      spec,
      channels,
      widening_factor=self._widening_factor,
      att_init_scale=self._att_init_scale,
      dense_init_scale=self._dense_init_scale,
    )
    rng = hk.next_rng_key() if needs_rng(spec, is_training) else None
    return self_attention(
      spec, weights, inputs, is_training=is_training, mask=mask, rng=rng
    )


class SelfAttentionParams(SelfAttention):
  """A `SelfAttention` layer's parameters, fetched without applying it.

  Named like the layer it stands for (`name='self_attention'` by default), it
  creates the same parameters, so that a stack of layers can fetch their
  weights, stack them and loop over them.
  """

  def __init__(self, *args, name: str = 'self_attention', **kwargs):
    super().__init__(*args, name=name, **kwargs)

  def __call__(self, channels):  # pytype: disable=signature-mismatch
    """The layer's `SelfAttentionWeights` for [B, N, channels] inputs."""
    return self_attention_weights(
      self.spec(channels),
      channels,
      widening_factor=self._widening_factor,
      att_init_scale=self._att_init_scale,
      dense_init_scale=self._dense_init_scale,
    )


class CrossAttention(hk.Module):
  """A pre-LayerNorm cross-attention block; the output has the query width."""

  def __init__(
    self,
    widening_factor: int = 1,
    dropout_prob: float = 0.0,
    dropout_attn_prob: float = 0.0,
    num_heads: int = 8,
    att_init_scale: float = 1.0,
    dense_init_scale: float = 1.0,
    shape_for_attn: str = 'kv',
    use_query_residual: bool = True,
    qk_channels: int | None = None,
    v_channels: int | None = None,
    runtime: runtime_lib.Runtime = runtime_lib.DEFAULT,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if shape_for_attn not in SHAPES_FOR_ATTN:
      raise ValueError(
        f'Unknown shape_for_attn {shape_for_attn!r}; expected one of '
        f'{SHAPES_FOR_ATTN}.'
      )
    if num_heads <= 0 or widening_factor <= 0:
      raise ValueError(
        'num_heads and widening_factor must be positive; got '
        f'{num_heads} and {widening_factor}.'
      )
    runtime_lib.check_type(runtime)
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._dropout_attn_prob = dropout_attn_prob
    self._num_heads = num_heads
    self._att_init_scale = att_init_scale
    self._dense_init_scale = dense_init_scale
    self._shape_for_attn = shape_for_attn
    self._use_query_residual = use_query_residual
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._runtime = runtime

  def spec(self, q_channels, kv_channels):
    """The `LayerSpec` of this layer on the given input widths."""
    if self._qk_channels is not None:
      qk_channels = self._qk_channels
    elif self._shape_for_attn == 'q':
      qk_channels = q_channels
    else:
      qk_channels = kv_channels
    v_channels = self._v_channels or qk_channels
    _check_divides('qk_channels', qk_channels, self._num_heads)
    _check_divides('v_channels', v_channels, self._num_heads)
    return LayerSpec(
      num_heads=self._num_heads,
      qk_channels=qk_channels,
      v_channels=v_channels,
      dropout_prob=self._dropout_prob,
      dropout_attn_prob=self._dropout_attn_prob,
      use_query_residual=self._use_query_residual,
      runtime=self._runtime,
    )

  def __call__(
    self,
    inputs_q,
    inputs_kv,
    *,
    is_training,
    q_mask=None,
    kv_mask=None,
    output_fn=None,
  ):
    """Cross-attends.

    Args:
      inputs_q: [B, N, Cq].
      inputs_kv: [B, M, Ckv].
      is_training: enables dropout.
      q_mask: optional [B, N].
      kv_mask: optional [B, M].
      output_fn: optional pure function of each query's output,
        [B, n, Cq] -> [B, n, Co], run inside the query chunks (see
        `cross_attention`). It must not create Haiku parameters.

    Returns:
      [B, N, Cq], or [B, N, Co] with `output_fn`.
    """
    _check_rank3('inputs_q', inputs_q)
    _check_rank3('inputs_kv', inputs_kv)
    spec = self.spec(inputs_q.shape[-1], inputs_kv.shape[-1])
    weights = cross_attention_weights(
      spec,
      inputs_q.shape[-1],
      inputs_kv.shape[-1],
      widening_factor=self._widening_factor,
      att_init_scale=self._att_init_scale,
      dense_init_scale=self._dense_init_scale,
    )
    rng = hk.next_rng_key() if needs_rng(spec, is_training) else None
    return cross_attention(
      spec,
      weights,
      inputs_q,
      inputs_kv,
      is_training=is_training,
      q_mask=q_mask,
      kv_mask=kv_mask,
      rng=rng,
      output_fn=output_fn,
    )
