"""Perceiver AR (Hawthorne et al. 2022): a causal Perceiver over bytes.

Shape letters: B batch, M context length, N latents (the last N positions),
C channels, H heads, V vocabulary.

The last N positions of the context are the latents. One cross-attention,
causally masked (latent i sees inputs up to its own position), reads the whole
context; a causal self-attention stack runs over the latents; logits come out
at the N latent positions. N is an argument of the call, so the same
parameters run with any N up to M.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend as attend_lib


def _layer_norm(name):
  return hk.LayerNorm(-1, create_scale=True, create_offset=True, name=name)


def _heads(x, num_heads, name):
  """[B, T, C] -> [B, T, H, C // H] by a linear map."""
  y = hk.Linear(x.shape[-1], name=name)(x)
  return jnp.reshape(y, y.shape[:2] + (num_heads, -1))


def _attention(x_q, x_kv, offset, num_heads, kv_mask, runtime, name):
  """Causal multi-head attention of x_q [B, N, C] to x_kv [B, M, C]."""
  with hk.experimental.name_scope(name):
    q = _heads(x_q, num_heads, 'q')
    k = _heads(x_kv, num_heads, 'k')
    v = _heads(x_kv, num_heads, 'v')
    out = attend_lib.attend(
      q, (k, v), kv_mask=kv_mask, causal_offset=offset, runtime=runtime
    )  # [B, N, C]
    return hk.Linear(x_q.shape[-1], name='out')(out)


def _mlp(x, widening, squared_relu, name):
  with hk.experimental.name_scope(name):
    h = hk.Linear(x.shape[-1] * widening, name='in')(x)
    h = jnp.square(jax.nn.relu(h)) if squared_relu else jax.nn.gelu(h)
    return hk.Linear(x.shape[-1], name='out')(h)


class PerceiverAR(hk.Module):
  """Byte-level Perceiver AR with absolute learned positions."""

  def __init__(
    self,
    *,
    vocab_size=256,
    max_context=8192,
    channels=64,
    num_heads=4,
    num_layers=2,
    widening=4,
    squared_relu=True,
    zero_init_output=True,
    runtime=runtime_lib.DEFAULT,
    name='perceiver_ar',
  ):
    super().__init__(name=name)
    self.vocab_size = vocab_size
    self.max_context = max_context
    self.channels = channels
    self.num_heads = num_heads
    self.num_layers = num_layers
    self.widening = widening
    self.squared_relu = squared_relu
    self.zero_init_output = zero_init_output
    self.runtime = runtime

  def embed(self, tokens, start=0):
    """[B, T, C] token plus position embeddings of positions start.. ."""
    embed = hk.Embed(self.vocab_size, self.channels, name='embed')
    pos = hk.get_parameter(
      'pos',
      [self.max_context, self.channels],
      init=hk.initializers.TruncatedNormal(0.02),
    )
    pos = jax.lax.dynamic_slice_in_dim(pos, start, tokens.shape[1])
    return embed(tokens) + pos[None]

  def context_kv(self, x):
    """Cross-attention keys and values [B, T, H, C // H] of embeddings x."""
    with hk.experimental.name_scope('cross'):
      kv = _layer_norm('kv_norm')(x)
      return _heads(kv, self.num_heads, 'k'), _heads(kv, self.num_heads, 'v')

  def cross(self, latents, k, v, offset, input_mask=None):
    """[B, N, C]: latents at positions offset.. after the causal cross-attend.

    Row i reads the inputs up to its own position offset + i only, so its
    result does not depend on which other latents are present (generation
    computes it once per position).

    Args:
      latents: [B, N, C] embeddings of positions offset .. offset + N - 1.
      k: [B, M, H, D] cross-attention keys (`context_kv`).
      v: [B, M, H, D] cross-attention values.
      offset: int (may be traced): the position of the first latent.
      input_mask: optional [B, M]; 0 marks padding.

    Returns:
      [B, N, C], after the cross-attention and its MLP.
    """
    with hk.experimental.name_scope('cross'):
      q = _heads(_layer_norm('q_norm')(latents), self.num_heads, 'q')
      out = attend_lib.attend(
        q,
        (k, v),
        kv_mask=input_mask,
        causal_offset=offset,
        runtime=self.runtime,
      )
      z = latents + hk.Linear(self.channels, name='out')(out)
    return z + _mlp(
      _layer_norm('cross_mlp_norm')(z),
      self.widening,
      self.squared_relu,
      'cross_mlp',
    )

  def latent_stack(self, z, latent_mask=None):
    """Logits [B, N, V] of the causal latent stack over z [B, N, C].

    Args:
      z: [B, N, C], the output of `cross` for N consecutive positions.
      latent_mask: optional [B, N]; 0 marks padding.

    Returns:
      [B, N, V] logits.
    """
    for i in range(self.num_layers):
      h = _layer_norm(f'self_{i}_norm')(z)
      z = z + _attention(
        h, h, 0, self.num_heads, latent_mask, self.runtime, f'self_{i}'
      )
      z = z + _mlp(
        _layer_norm(f'mlp_{i}_norm')(z),
        self.widening,
        self.squared_relu,
        f'mlp_{i}',
      )
    z = _layer_norm('final_norm')(z)
    w_init = hk.initializers.Constant(0.0) if self.zero_init_output else None
    return hk.Linear(self.vocab_size, w_init=w_init, name='logits')(z)

  def __call__(self, tokens, num_latents, input_mask=None):
    """Logits at the last `num_latents` positions.

    Args:
      tokens: [B, M] int tokens.
      num_latents: N, a Python int, 1 <= N <= M.
      input_mask: optional [B, M]; 0 marks padding.

    Returns:
      [B, N, V] logits; row i predicts token M - N + i + 1.
    """
    num_tokens = tokens.shape[1]
    if not 1 <= num_latents <= num_tokens:
      raise ValueError(f'num_latents must be in [1, {num_tokens}].')
    offset = num_tokens - num_latents
    x = self.embed(tokens)  # [B, M, C]
    k, v = self.context_kv(x)
    z = self.cross(x[:, offset:], k, v, offset, input_mask)
    latent_mask = None
    if input_mask is not None:
      latent_mask = input_mask[:, offset:]
    return self.latent_stack(z, latent_mask)


def loss_fn(logits, targets, mask=None, z_loss=0.0):
  """Mean cross-entropy in nats (plus z_loss * logsumexp^2).

  Args:
    logits: [B, N, V].
    targets: [B, N] int.
    mask: optional [B, N] weights.
    z_loss: coefficient of the squared log-partition penalty.

  Returns:
    (loss, mean cross-entropy in nats).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - picked
  if mask is None:
    mask = jnp.ones_like(nll)
  denom = jnp.maximum(jnp.sum(mask), 1.0)
  ce = jnp.sum(nll * mask) / denom
  return ce + z_loss * jnp.sum(jnp.square(log_z) * mask) / denom, ce
