"""The attention weights of a chosen layer, read without changing the model.

  forward = models.build_forward_fn(name, config)

  def with_maps(**inputs):
    with attention_maps.capture('cross_attention') as maps:
      outputs = forward(is_training=False, **inputs)
    return outputs, maps

  transformed = hk.transform_with_state(with_maps)
  (outputs, maps), _ = transformed.apply(params, state, None, **inputs)
  maps['perceiver_encoder/~/cross_attention']  # [B, H, N, M]

`capture(layer)` intercepts (`hk.intercept_methods`) the `__call__` of every
`attention.CrossAttention` whose module name contains `layer` (the encoder's
and the decoder's cross-attentions; the latent self-attention layers run as
pure functions, not module calls, and are not captured); the call itself runs unchanged, so the parameters and the
outputs are the same as without capture. A custom getter records the
parameters that call reads, and from them and the call's inputs it
recomputes the softmax weights as the
layer's reference kernel (`ops.einsum`) does: LayerNorm and the query
projection of the queries, LayerNorm and the key projection of the inputs
(`ops.attend.project`), heads split, logits scaled by 1/sqrt(D), masked
inputs at `ops.chunked.MASK_VALUE`, softmax over the inputs. Attention
dropout is not applied (call with `is_training=False`).

The result maps each matching module's name to float32[B, H, N, M]: batch,
heads, queries (the encoder's latents), inputs; each row sums to 1 over M.
"""

import contextlib
import math

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_io import attention
from perceiver_io import models
from perceiver_io.ops import attend as attend_lib
from perceiver_io.ops import chunked
from perceiver_io.ops.dense import dense
from perceiver_io.ops.layer_norm import layer_norm


def softmax_weights(q, k, kv_mask=None):
  """[B, N, H, D] queries, [B, M, H, D] keys -> float32[B, H, N, M]."""
  q = q.astype(jnp.float32) / math.sqrt(q.shape[-1])
  logits = jnp.einsum('bnhd,bmhd->bhnm', q, k.astype(jnp.float32))
  if kv_mask is not None:
    logits = jnp.where(
      kv_mask[:, None, None, :] != 0, logits, chunked.MASK_VALUE
    )
  return jax.nn.softmax(logits, axis=-1)


def _p(params, module_name, sub, name):
  return params[(f'{module_name}/{sub}', name)]


def cross_attention_maps(module, params, inputs_q, inputs_kv, kv_mask=None):
  """The weights of a `CrossAttention` call from the parameters it read.

  `params` maps (module name, parameter name) to the values the call used.
  """
  m = module.module_name
  spec = module.spec(inputs_q.shape[-1], inputs_kv.shape[-1])
  h_q = layer_norm(
    inputs_q,
    _p(params, m, 'layer_norm', 'scale'),
    _p(params, m, 'layer_norm', 'offset'),
  )
  q = dense(
    h_q,
    _p(params, m, 'attention/linear', 'w'),
    _p(params, m, 'attention/linear', 'b'),
    spec.dtype,
  )
  kv = attend_lib.KeyValueInputs(
    inputs_kv,
    _p(params, m, 'layer_norm_1', 'scale'),
    _p(params, m, 'layer_norm_1', 'offset'),
    _p(params, m, 'attention/linear_1', 'w'),
    _p(params, m, 'attention/linear_1', 'b'),
    _p(params, m, 'attention/linear_2', 'w'),
    _p(params, m, 'attention/linear_2', 'b'),
  )
  k, _ = attend_lib.project(kv, spec.num_heads, spec.dtype)
  return softmax_weights(attend_lib.split_heads(q, spec.num_heads), k, kv_mask)


@contextlib.contextmanager
def capture(layer: str = 'cross_attention'):
  """Collects the attention weights of the modules whose name has `layer`.

  Use inside a Haiku transform, around the model's forward call; see the
  module docstring. Yields a dict, filled during the call: module name ->
  float32[B, H, N, M].
  """
  maps = {}

  def interceptor(next_f, args, kwargs, context):
    module = context.module
    if (
      context.method_name != '__call__'
      or type(module) is not attention.CrossAttention
      or layer not in module.module_name
    ):
      return next_f(*args, **kwargs)
    params = {}

    def getter(next_getter, value, ctx):
      value = next_getter(value)
      params[(ctx.module_name, ctx.name)] = value
      return value

    with hk.custom_getter(getter):
      out = next_f(*args, **kwargs)
    maps[module.module_name] = cross_attention_maps(
      module, params, args[0], args[1], kwargs.get('kv_mask')
    )
    return out

  with hk.intercept_methods(interceptor):
    yield maps


def transform_with_maps(name: str, config=None, layer: str = 'cross_attention'):
  """`hk.transform_with_state` of the model `name` returning its maps too.

  `apply(params, state, rng, **inputs)` gives `((outputs, maps), state)`:
  the model's outputs at `is_training=False`, and `capture(layer)`'s dict of
  module name -> float32[B, H, N, M]. The parameters are the model's own
  (a released checkpoint loads as is).
  """
  forward = models.build_forward_fn(name, config)

  def fn(**inputs):
    with capture(layer) as maps:
      outputs = forward(is_training=False, **inputs)
    return outputs, maps

  return hk.transform_with_state(fn)
