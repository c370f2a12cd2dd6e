"""`jax.nn.dot_product_attention`, with cuDNN's fused kernel where it applies.

Shape letters: B batch, N queries, M keys, H heads, D channels per head
(Dv for values).
"""

import math

import jax
import jax.numpy as jnp

from perceiver_io.ops import einsum


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
  if jnp.dtype(q.dtype) not in einsum.LOW_PRECISION:
    return False
  if not q.dtype == k.dtype == v.dtype:
    return False
  head_dim = q.shape[-1]
  if head_dim != v.shape[-1] or head_dim % 8:
    return False
  if head_dim > _cudnn_max_head_dim():
    return False
  return kv_mask is None and dropout_prob == 0.0


def attend(q, k, v, *, kv_mask=None, use_cudnn=None, causal_offset=None):
  """`jax.nn.dot_product_attention`, cuDNN where `cudnn_applies`.

  It needs equal query and value head sizes; when they differ, the smaller
  one is zero-padded (padding q and k leaves the logits unchanged).

  Args:
    q: [B, N, H, D] queries.
    k: [B, M, H, D] keys.
    v: [B, M, H, Dv] values.
    kv_mask: optional [B, M]; keys with 0 are ignored.
    use_cudnn: force cuDNN on or off; None asks `cudnn_applies`.
    causal_offset: optional int; query i sees keys 0..causal_offset + i only
      (given to the kernel as an [N, M] mask).

  Returns:
    [B, N, H * Dv]; `ops.attend.attend` zeros the rows without keys.
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
  if causal_offset is not None:
    causal = einsum.causal_mask(num_q, k.shape[1], causal_offset)
    causal = causal[None, None]  # [1, 1, N, M]
    mask = causal if mask is None else jnp.logical_and(mask, causal)
    if use_cudnn:
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
  return jnp.reshape(out, (batch, num_q, num_heads * value_dim))
