"""Attention layers: multi-head attention, MLP, self- and cross-attention.

Shape letters: B batch, N queries, M keys/values, C channels, H heads.

Parameter names match DeepMind's released checkpoints: an `attention` module
holding `linear` (q), `linear_1` (k), `linear_2` (v) and `linear_3` (output),
`layer_norm*` modules, and an `mlp` with `linear` and `linear_1`.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_io import attend as attend_lib

SHAPES_FOR_ATTN = ('kv', 'q')


def conv_1d(output_channels, init_scale=1.0, with_bias=True, name=None):
  """A pointwise linear layer (DeepMind calls it conv_1d)."""
  return hk.Linear(
      output_size=output_channels, with_bias=with_bias,
      w_init=hk.initializers.VarianceScaling(init_scale), name=name)


def layer_norm(x, name=None):
  """LayerNorm over the channels, with scale and offset."""
  return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True,
                      name=name)(x)


def _dropout(rate, x):
  """Dropout that draws an rng only when it drops something."""
  if rate <= 0.0:
    return x
  return hk.dropout(hk.next_rng_key(), rate, x)


def _check_rank3(name, x):
  if x.ndim != 3:
    raise ValueError(f'{name} must have shape [B, N, C]; got {x.shape}.')


def _check_divides(what, channels, num_heads):
  if channels % num_heads != 0:
    raise ValueError(
        f'{what} ({channels}) must be divisible by the number of heads '
        f'({num_heads}).'
    )


class Attention(hk.Module):
  """Multi-head attention from `inputs_q` to `inputs_kv`."""

  def __init__(self, num_heads: int = 8, init_scale: float = 1.0,
               with_final_bias: bool = True,
               final_init_scale_multiplier: float = 1.0,
               dropout_prob: float = 0.0, qk_channels: int | None = None,
               v_channels: int | None = None,
               output_channels: int | None = None,
               attention_impl: str = 'einsum', name: str | None = None):
    super().__init__(name=name)
    if num_heads <= 0:
      raise ValueError(f'num_heads must be positive; got {num_heads}.')
    if not 0.0 <= dropout_prob < 1.0:
      raise ValueError(f'dropout_prob must be in [0, 1); got {dropout_prob}.')
    self._num_heads = num_heads
    self._init_scale = init_scale
    self._with_final_bias = with_final_bias
    self._final_init_scale = final_init_scale_multiplier * init_scale
    self._dropout_prob = dropout_prob
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._output_channels = output_channels
    self._attention_impl = attention_impl

  def __call__(self, inputs_q, inputs_kv, *, q_mask=None, kv_mask=None):
    """Attends.

    Args:
      inputs_q: [B, N, Cq].
      inputs_kv: [B, M, Ckv].
      q_mask: optional [B, N]; masked queries output zeros.
      kv_mask: optional [B, M]; masked keys are ignored.

    Returns:
      [B, N, output_channels] (by default the value channels).
    """
    _check_rank3('inputs_q', inputs_q)
    _check_rank3('inputs_kv', inputs_kv)
    # Resolve channel defaults into locals; never write them back to self.
    qk_channels = self._qk_channels or inputs_q.shape[-1]
    v_channels = self._v_channels or qk_channels
    output_channels = self._output_channels or v_channels
    _check_divides('qk_channels', qk_channels, self._num_heads)
    _check_divides('v_channels', v_channels, self._num_heads)

    q = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_q)
    k = conv_1d(qk_channels, init_scale=self._init_scale)(inputs_kv)
    v = conv_1d(v_channels, init_scale=self._init_scale)(inputs_kv)

    batch, num_q, _ = q.shape
    num_kv = k.shape[1]
    heads = self._num_heads
    q = jnp.reshape(q, (batch, num_q, heads, qk_channels // heads))
    k = jnp.reshape(k, (batch, num_kv, heads, qk_channels // heads))
    v = jnp.reshape(v, (batch, num_kv, heads, v_channels // heads))

    dropout_rng = hk.next_rng_key() if self._dropout_prob > 0 else None
    result = attend_lib.attend(
        q, k, v, q_mask=q_mask, kv_mask=kv_mask,
        dropout_prob=self._dropout_prob, dropout_rng=dropout_rng,
        implementation=self._attention_impl)  # [B, N, v_channels]
    return conv_1d(output_channels, with_bias=self._with_final_bias,
                   init_scale=self._final_init_scale)(result)


class MLP(hk.Module):
  """Linear, GELU, linear, dropout."""

  def __init__(self, widening_factor: int = 4, dropout_prob: float = 0.0,
               init_scale: float = 1.0, name: str | None = None):
    super().__init__(name=name)
    if widening_factor <= 0:
      raise ValueError(
          f'widening_factor must be positive; got {widening_factor}.')
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._init_scale = init_scale

  def __call__(self, x, *, is_training):
    """[B, N, C] -> [B, N, C]."""
    dropout_prob = self._dropout_prob if is_training else 0.0
    channels = x.shape[-1]
    x = conv_1d(self._widening_factor * channels,
                init_scale=self._init_scale)(x)
    x = jax.nn.gelu(x)
    x = conv_1d(channels, init_scale=self._init_scale)(x)
    return _dropout(dropout_prob, x)


class SelfAttention(hk.Module):
  """A pre-LayerNorm transformer block."""

  def __init__(self, widening_factor: int = 4, dropout_prob: float = 0.0,
               dropout_attn_prob: float = 0.0, num_heads: int = 8,
               att_init_scale: float = 1.0, dense_init_scale: float = 1.0,
               qk_channels: int | None = None, v_channels: int | None = None,
               attention_impl: str = 'einsum', name: str | None = None):
    super().__init__(name=name)
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._dropout_attn_prob = dropout_attn_prob
    self._num_heads = num_heads
    self._att_init_scale = att_init_scale
    self._dense_init_scale = dense_init_scale
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._attention_impl = attention_impl

  def __call__(self, inputs, *, is_training, mask=None):
    """Self-attention over [B, N, C] with an optional [B, N] mask."""
    dropout_prob = self._dropout_prob if is_training else 0.0
    dropout_attn_prob = self._dropout_attn_prob if is_training else 0.0
    x = inputs
    qkv_inputs = layer_norm(inputs)
    attention = Attention(
        num_heads=self._num_heads, init_scale=self._att_init_scale,
        qk_channels=self._qk_channels, v_channels=self._v_channels,
        output_channels=inputs.shape[-1], dropout_prob=dropout_attn_prob,
        attention_impl=self._attention_impl,
    )(qkv_inputs, qkv_inputs, q_mask=mask, kv_mask=mask)
    x = x + _dropout(dropout_prob, attention)
    x = x + MLP(widening_factor=self._widening_factor,
                dropout_prob=dropout_prob,
                init_scale=self._dense_init_scale)(layer_norm(x),
                                                   is_training=is_training)
    return x


class CrossAttention(hk.Module):
  """A pre-LayerNorm cross-attention block; the output has the query width."""

  def __init__(self, widening_factor: int = 1, dropout_prob: float = 0.0,
               dropout_attn_prob: float = 0.0, num_heads: int = 8,
               att_init_scale: float = 1.0, dense_init_scale: float = 1.0,
               shape_for_attn: str = 'kv', use_query_residual: bool = True,
               qk_channels: int | None = None, v_channels: int | None = None,
               attention_impl: str = 'einsum', name: str | None = None):
    super().__init__(name=name)
    if shape_for_attn not in SHAPES_FOR_ATTN:
      raise ValueError(
          f'Unknown shape_for_attn {shape_for_attn!r}; expected one of '
          f'{SHAPES_FOR_ATTN}.'
      )
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

  def __call__(self, inputs_q, inputs_kv, *, is_training, q_mask=None,
               kv_mask=None):
    """Cross-attends.

    Args:
      inputs_q: [B, N, Cq].
      inputs_kv: [B, M, Ckv].
      is_training: enables dropout.
      q_mask: optional [B, N].
      kv_mask: optional [B, M].

    Returns:
      [B, N, Cq].
    """
    _check_rank3('inputs_q', inputs_q)
    _check_rank3('inputs_kv', inputs_kv)
    dropout_prob = self._dropout_prob if is_training else 0.0
    dropout_attn_prob = self._dropout_attn_prob if is_training else 0.0
    output_channels = inputs_q.shape[-1]
    if self._qk_channels is not None:
      qk_channels = self._qk_channels
    elif self._shape_for_attn == 'q':
      qk_channels = inputs_q.shape[-1]
    else:
      qk_channels = inputs_kv.shape[-1]
    attention_module = Attention(
        num_heads=self._num_heads, init_scale=self._att_init_scale,
        dropout_prob=dropout_attn_prob, qk_channels=qk_channels,
        v_channels=self._v_channels, output_channels=output_channels,
        attention_impl=self._attention_impl)
    attention = attention_module(
        layer_norm(inputs_q), layer_norm(inputs_kv), q_mask=q_mask,
        kv_mask=kv_mask)
    attention = _dropout(dropout_prob, attention)
    x = inputs_q + attention if self._use_query_residual else attention
    x = x + MLP(widening_factor=self._widening_factor,
                dropout_prob=dropout_prob,
                init_scale=self._dense_init_scale)(layer_norm(x),
                                                   is_training=is_training)
    return x
