"""Residuals of hand-written backward passes, 16-bit floats kept as bits.

Inside `lax.scan` (the encoder's loop over its weight-shared blocks),
autodiff stacks every iteration's residuals into one buffer per residual, a
slice per iteration. For a bf16 buffer XLA's CPU backend (jax 0.10) converts
the whole stacked buffer to float32 and back at every iteration, since it has
no bf16 arithmetic and the slice update is fused with the convert that
produced the value: over a quarter of the ImageNet model's bf16 training
step went there. A uint16 buffer is updated in place. `pack` turns a
16-bit float array into its uint16 bits (free on every backend: a bitcast),
and `unpack` turns it back.
"""

import jax
import jax.numpy as jnp
from jax import lax

_16_BIT_FLOATS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@jax.tree_util.register_pytree_node_class
class Bits:
  """A 16-bit float array stored as uint16, with its dtype as static data."""

  def __init__(self, bits, dtype):
    self.bits = bits
    self.dtype = dtype

  def tree_flatten(self):
    return (self.bits,), self.dtype

  @classmethod
  def tree_unflatten(cls, dtype, children):
    return cls(children[0], dtype)


def pack(x):
  """A 16-bit float array as `Bits`; any other array as itself."""
  if jnp.dtype(x.dtype) in _16_BIT_FLOATS:
    return Bits(lax.bitcast_convert_type(x, jnp.uint16), jnp.dtype(x.dtype))
  return x


def unpack(x):
  """The inverse of `pack`."""
  if isinstance(x, Bits):
    return lax.bitcast_convert_type(x.bits, x.dtype)
  return x
