"""Attention modules: self- and cross-attention under DeepMind's names.

Shape letters: B batch, N queries, M keys/values, C channels, H heads.

Parameter names match DeepMind's released checkpoints: an `attention` scope
holding `linear` (q), `linear_1` (k), `linear_2` (v) and `linear_3` (output),
`layer_norm*` scopes, and an `mlp` with `linear` and `linear_1`. The modules
create these parameters and call the pure layer functions of `layers.py`;
`compute_dtype_scope` and the weights tuples are re-exported from there.
"""

import haiku as hk
import jax.numpy as jnp

from perceiver_io import attend as attend_lib
from perceiver_io.layers import COMPUTE_DTYPES
from perceiver_io.layers import CrossAttentionWeights
from perceiver_io.layers import LayerSpec
from perceiver_io.layers import SelfAttentionWeights
from perceiver_io.layers import check_compute_dtype
from perceiver_io.layers import compute_dtype_scope
from perceiver_io.layers import cross_attention
from perceiver_io.layers import self_attention

__all__ = (
  'COMPUTE_DTYPES',
  'CrossAttention',
  'CrossAttentionWeights',
  'LayerSpec',
  'SelfAttention',
  'SelfAttentionParams',
  'SelfAttentionWeights',
  'compute_dtype_scope',
  'cross_attention',
  'cross_attention_weights',
  'self_attention',
  'self_attention_weights',
)

SHAPES_FOR_ATTN = ('kv', 'q')
# A cross-attention to more queries than this (e.g. the optical-flow decoder's
# 182,528) runs over chunks of this many queries; see `_over_query_chunks`.
DEFAULT_QUERY_CHUNK_SIZE = 8192


def _check_rank3(name, x):
  if x.ndim != 3:
    raise ValueError(f'{name} must have shape [B, N, C]; got {x.shape}.')


def _check_divides(what, channels, num_heads):
  if channels % num_heads != 0:
    raise ValueError(
      f'{what} ({channels}) must be divisible by the number of heads '
      f'({num_heads}).'
    )


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
    attention_impl: str = 'einsum',
    compute_dtype: str | None = None,
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
    if attention_impl not in attend_lib.IMPLEMENTATIONS:
      raise ValueError(
        f'Unknown attention_impl {attention_impl!r}; expected one of '
        f'{attend_lib.IMPLEMENTATIONS}.'
      )
    check_compute_dtype(compute_dtype)
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._dropout_attn_prob = dropout_attn_prob
    self._num_heads = num_heads
    self._att_init_scale = att_init_scale
    self._dense_init_scale = dense_init_scale
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._attention_impl = attention_impl
    self._compute_dtype = compute_dtype

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
      attention_impl=self._attention_impl,
      compute_dtype=self._compute_dtype,
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
    rng = hk.next_rng_key() if _needs_rng(spec, is_training) else None
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


def _needs_rng(spec, is_training):
  return is_training and (
    spec.dropout_prob > 0.0 or spec.dropout_attn_prob > 0.0
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
    attention_impl: str = 'einsum',
    compute_dtype: str | None = None,
    query_chunk_size: int | None = DEFAULT_QUERY_CHUNK_SIZE,
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
    if attention_impl not in attend_lib.IMPLEMENTATIONS:
      raise ValueError(
        f'Unknown attention_impl {attention_impl!r}; expected one of '
        f'{attend_lib.IMPLEMENTATIONS}.'
      )
    check_compute_dtype(compute_dtype)
    if query_chunk_size is not None and query_chunk_size <= 0:
      raise ValueError(
        f'query_chunk_size must be positive or None; got {query_chunk_size}.'
      )
    self._query_chunk_size = query_chunk_size
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
    self._attention_impl = attention_impl
    self._compute_dtype = compute_dtype

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
      attention_impl=self._attention_impl,
      compute_dtype=self._compute_dtype,
      query_chunk_size=self._query_chunk_size,
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
        `layers.cross_attention`). It must not create Haiku parameters.

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
    rng = hk.next_rng_key() if _needs_rng(spec, is_training) else None
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
