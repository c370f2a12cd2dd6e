"""LayerNorm over the last axis, with a hand-written backward pass.

Shape letters: C channels; `...` any leading axes.

It computes what `hk.LayerNorm(axis=-1, create_scale=True,
create_offset=True)` computes, always in float32. The backward pass keeps
only the input and the per-row mean and reciprocal standard deviation, and
returns the input gradient in one expression. Autodiff of the forward instead
leaves XLA a chain of elementwise terms along the residual stream, which XLA's
CPU backend fuses into (and recomputes inside) every consumer of every earlier
layer: a cost that grows with depth squared.
"""

import jax
import jax.numpy as jnp
from jax import lax

EPS = 1e-5


def _statistics(x):
  """float32 mean and 1 / std of the last axis, [..., 1] each."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.var(x, axis=-1, keepdims=True)
  return mean, lax.rsqrt(variance + jnp.float32(EPS))


@jax.custom_vjp
def layer_norm(x, scale, offset):
  """Normalises [..., C] over C, then scales and offsets by [C] each.

  Args:
    x: [..., C] inputs, any float dtype.
    scale: [C] multipliers.
    offset: [C] offsets.

  Returns:
    [..., C] float32.
  """
  x = x.astype(jnp.float32)
  mean, rstd = _statistics(x)
  return (scale * rstd) * (x - mean) + offset


def _forward(x, scale, offset):
  x32 = x.astype(jnp.float32)
  mean, rstd = _statistics(x32)
  y = (scale * rstd) * (x32 - mean) + offset
  return y, (x, mean, rstd, scale)


def _backward(residuals, dy):
  x, mean, rstd, scale = residuals
  x_hat = (x.astype(jnp.float32) - mean) * rstd  # [..., C]
  dy = dy.astype(jnp.float32)
  reduce_axes = tuple(range(dy.ndim - 1))
  d_scale = jnp.sum(dy * x_hat, axis=reduce_axes)
  d_offset = jnp.sum(dy, axis=reduce_axes)
  g = dy * scale  # Gradient with respect to x_hat.
  g_mean = jnp.mean(g, axis=-1, keepdims=True)
  g_x_hat_mean = jnp.mean(g * x_hat, axis=-1, keepdims=True)
  dx = rstd * (g - g_mean - x_hat * g_x_hat_mean)
  return (
    dx.astype(x.dtype),
    d_scale.astype(scale.dtype),
    d_offset.astype(scale.dtype),
  )


layer_norm.defvjp(_forward, _backward)
