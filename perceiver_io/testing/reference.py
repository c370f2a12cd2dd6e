"""The straightforward reference formulation, for tests and benchmarks.

Shape letters: B batch, N queries, M keys, C channels, H heads, D channels
per head.

These modules compute what DeepMind's released code computes, the way it
computes it: `hk.Linear` projections, `hk.LayerNorm`, einsum attention that
materialises the whole [B, H, N, M] matrix, and the latent stack unrolled in
Python. They create the same parameters under the same names, so one set of
parameters runs through both formulations in one process.

`build(name, config)` returns a `perceiver_io.models.Model` whose functions
trace with these modules in place of the library's encoder and
cross-attention layers (preprocessors, decoders' query builders and
postprocessors are shared).

`tests/encoder_test.py` and `tests/attention_test.py` check the library's
layers against these modules; `benchmarks/` times them as 'straightforward'.
Like the rest of `perceiver_io`, this module imports only jax, haiku and
numpy.
"""

import contextlib
import math

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_io import attention as attention_lib
from perceiver_io import encoder as encoder_lib
from perceiver_io import models
from perceiver_io import position_encoding


def _linear(channels, init_scale=1.0, with_bias=True):
  return hk.Linear(
    channels,
    with_bias=with_bias,
    w_init=hk.initializers.VarianceScaling(init_scale),
  )


def _layer_norm(x):
  return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)(x)


def _dropout(rate, x):
  return hk.dropout(hk.next_rng_key(), rate, x) if rate > 0.0 else x


def einsum_attend(q, k, v, kv_mask=None, q_mask=None, dropout_prob=0.0):
  """[B, N, H, D], [B, M, H, D], [B, M, H, Dv] -> [B, N, H * Dv]."""
  batch, num_q, heads, head_dim = q.shape
  logits = jnp.einsum('bnhd,bmhd->bhnm', q, k) / math.sqrt(head_dim)
  mask = None
  if kv_mask is not None or q_mask is not None:
    q_ok = (jnp.ones((batch, num_q)) if q_mask is None else q_mask) != 0
    kv_ok = (jnp.ones(k.shape[:2]) if kv_mask is None else kv_mask) != 0
    mask = q_ok[:, :, None] & kv_ok[:, None, :]  # [B, N, M]
    logits = jnp.where(mask[:, None], logits, -1e30)
  weights = jax.nn.softmax(logits)
  weights = _dropout(dropout_prob, weights)
  out = jnp.einsum('bhnm,bmhd->bnhd', weights, v)
  out = jnp.reshape(out, (batch, num_q, -1))
  if mask is not None:
    wipe = jnp.all(~mask, axis=2, keepdims=True)
    out = jnp.where(wipe, 0.0, out)
  return out


class Attention(hk.Module):
  """DeepMind's `Attention`: four `hk.Linear`s around `einsum_attend`."""

  def __init__(
    self, num_heads, qk_channels, v_channels, output_channels, dropout_prob=0.0
  ):
    super().__init__(name='attention')
    self._heads = num_heads
    self._qk = qk_channels
    self._v = v_channels
    self._out = output_channels
    self._dropout_prob = dropout_prob

  def __call__(self, x_q, x_kv, q_mask=None, kv_mask=None):
    q = _linear(self._qk)(x_q)
    k = _linear(self._qk)(x_kv)
    v = _linear(self._v)(x_kv)
    batch, heads = q.shape[0], self._heads
    q = jnp.reshape(q, (batch, q.shape[1], heads, -1))
    k = jnp.reshape(k, (batch, k.shape[1], heads, -1))
    v = jnp.reshape(v, (batch, v.shape[1], heads, -1))
    out = einsum_attend(
      q, k, v, kv_mask=kv_mask, q_mask=q_mask, dropout_prob=self._dropout_prob
    )
    return _linear(self._out)(out)


def _mlp(x, widening_factor, dropout_prob):
  with hk.name_scope('mlp'):
    channels = x.shape[-1]
    h = jax.nn.gelu(_linear(widening_factor * channels)(x))
    return _dropout(dropout_prob, _linear(channels)(h))


class SelfAttention(hk.Module):
  """DeepMind's pre-LayerNorm self-attention block."""

  def __init__(
    self,
    widening_factor=4,
    dropout_prob=0.0,
    dropout_attn_prob=0.0,
    num_heads=8,
    qk_channels=None,
    v_channels=None,
    name=None,
    **unused,
  ):
    super().__init__(name=name)
    self._widening = widening_factor
    self._dropout = dropout_prob
    self._dropout_attn = dropout_attn_prob
    self._heads = num_heads
    self._qk = qk_channels
    self._v = v_channels

  def __call__(self, x, *, is_training, mask=None):
    rate = self._dropout if is_training else 0.0
    channels = x.shape[-1]
    qk = self._qk or channels
    h = _layer_norm(x)
    attn = Attention(
      self._heads,
      qk,
      self._v or qk,
      channels,
      self._dropout_attn if is_training else 0.0,
    )(h, h, q_mask=mask, kv_mask=mask)
    x = x + _dropout(rate, attn)
    return x + _mlp(_layer_norm(x), self._widening, rate)


class CrossAttention(hk.Module):
  """DeepMind's pre-LayerNorm cross-attention block."""

  def __init__(
    self,
    widening_factor=1,
    dropout_prob=0.0,
    dropout_attn_prob=0.0,
    num_heads=8,
    shape_for_attn='kv',
    use_query_residual=True,
    qk_channels=None,
    v_channels=None,
    name=None,
    **unused,
  ):
    super().__init__(name=name)
    self._widening = widening_factor
    self._dropout = dropout_prob
    self._dropout_attn = dropout_attn_prob
    self._heads = num_heads
    self._shape_for_attn = shape_for_attn
    self._residual = use_query_residual
    self._qk = qk_channels
    self._v = v_channels

  def __call__(
    self, x_q, x_kv, *, is_training, q_mask=None, kv_mask=None, output_fn=None
  ):
    rate = self._dropout if is_training else 0.0
    if self._qk is not None:
      qk = self._qk
    elif self._shape_for_attn == 'q':
      qk = x_q.shape[-1]
    else:
      qk = x_kv.shape[-1]
    attn = Attention(
      self._heads,
      qk,
      self._v or qk,
      x_q.shape[-1],
      self._dropout_attn if is_training else 0.0,
    )(_layer_norm(x_q), _layer_norm(x_kv), q_mask=q_mask, kv_mask=kv_mask)
    attn = _dropout(rate, attn)
    x = x_q + attn if self._residual else attn
    x = x + _mlp(_layer_norm(x), self._widening, rate)
    # The decoder's final linear map, on the whole output.
    return x if output_fn is None else output_fn(x)


class PerceiverEncoder(hk.Module):
  """DeepMind's encoder: the weight-shared latent stack unrolled in Python."""

  def __init__(
    self,
    num_self_attends_per_block=6,
    num_blocks=8,
    z_index_dim=512,
    num_z_channels=1024,
    qk_channels=None,
    v_channels=None,
    num_cross_attend_heads=1,
    num_self_attend_heads=8,
    cross_attend_widening_factor=1,
    self_attend_widening_factor=1,
    dropout_prob=0.0,
    dropout_attn_prob=0.0,
    z_pos_enc_init_scale=0.02,
    cross_attention_shape_for_attn='kv',
    use_query_residual=True,
    name='perceiver_encoder',
    **unused,
  ):
    super().__init__(name=name)
    self._num_blocks = num_blocks
    self.z_pos_enc = position_encoding.TrainablePositionEncoding(
      index_dim=z_index_dim,
      num_channels=num_z_channels,
      init_scale=z_pos_enc_init_scale,
    )
    self.cross_attend = CrossAttention(
      dropout_prob=dropout_prob,
      dropout_attn_prob=dropout_attn_prob,
      num_heads=num_cross_attend_heads,
      widening_factor=cross_attend_widening_factor,
      shape_for_attn=cross_attention_shape_for_attn,
      qk_channels=qk_channels,
      v_channels=v_channels,
      use_query_residual=use_query_residual,
    )
    self.self_attends = [
      SelfAttention(
        num_heads=num_self_attend_heads,
        dropout_prob=dropout_prob,
        dropout_attn_prob=dropout_attn_prob,
        qk_channels=qk_channels,
        v_channels=v_channels,
        widening_factor=self_attend_widening_factor,
      )
      for _ in range(num_self_attends_per_block)
    ]

  def latents(self, inputs):
    return self.z_pos_enc(batch_size=inputs.shape[0])

  def __call__(self, inputs, z, *, is_training, input_mask=None):
    z = self.cross_attend(
      z, inputs, is_training=is_training, kv_mask=input_mask
    )
    for _ in range(self._num_blocks):
      for layer in self.self_attends:
        z = layer(z, is_training=is_training)
    return z


@contextlib.contextmanager
def _swapped():
  """Puts the straightforward modules in place while a model traces."""
  saved = (encoder_lib.PerceiverEncoder, attention_lib.CrossAttention)
  encoder_lib.PerceiverEncoder = PerceiverEncoder
  attention_lib.CrossAttention = CrossAttention
  try:
    yield
  finally:
    encoder_lib.PerceiverEncoder, attention_lib.CrossAttention = saved


def _traced_with_swap(fn):
  def wrapped(*args, **kwargs):
    with _swapped():
      return fn(*args, **kwargs)

  return wrapped


def build(name, config=None):
  """`models.build(name, config)` with the straightforward layers.

  Only tracing (the first call under `jax.jit`, or any call without it) sees
  the swap, so jit the returned functions before timing them.
  """
  config = models.get_config(name) if config is None else config
  # DeepMind's preprocessors concatenate the Fourier features.
  config = config.copy_and_resolve_references()
  config.runtime.grid_inputs = False
  model = models.build(name, config)
  transformed = hk.TransformedWithState(
    init=_traced_with_swap(model.transformed.init),
    apply=_traced_with_swap(model.transformed.apply),
  )
  return models.Model(
    name=model.name,
    config=model.config,
    transformed=transformed,
    input_names=model.input_names,
  )
