"""The attention layers' linear maps, in float32 or a low-precision dtype.

Shape letters: Cin input channels, Cout output channels; `...` any leading
axes.

In float32, `dense` is `x @ w + b`. In a low-precision compute dtype (bf16,
fp16) the inputs and weights are rounded to it, and every product, forward
and backward, multiplies low-precision operands into a float32 result:

- forward: x @ w accumulates in float32, the bias is added in float32, and
  the sum is rounded to the compute dtype;
- backward: the incoming gradient is rounded to the compute dtype once; the
  input gradient (g @ w^T) and the weight gradient (x^T @ g) accumulate in
  float32, and the weight gradient reaches the float32 parameter unrounded.

That is the usual mixed-precision recipe, and on CPUs with bf16 matrix units
(Intel AMX) it is what makes bf16 fast. XLA's CPU backend (jax 0.10) hands a
bf16 x bf16 -> float32 product to YNNPACK, which uses them, several times
faster than float32 (rates in benchmarks/README.md, "bf16 on this CPU"). A
product that returns bf16 instead, as `jnp.dot` of two bf16 arrays does, is
computed in float32. So is a product whose left operand is contracted over
its only leading axis, as the weight gradient x^T @ g of a 2-D input
[M, Cin] is; for inputs with two or more leading axes ([B, N, Cin], every
caller here) XLA first copies x into [Cin, B * N], and the product stays in
bf16.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from perceiver_io.ops import residuals


def dense(x, w, b, dtype, float32_output=False):
  """x [..., Cin] @ w [Cin, Cout] + b [Cout] (b may be None), in `dtype`.

  Args:
    x: [..., Cin] inputs, any float dtype.
    w: [Cin, Cout] weights (float32 parameters).
    b: [Cout] bias, or None.
    dtype: the compute dtype; float32, or a 16-bit float type for the
      mixed-precision products described in the module docstring.
    float32_output: return the float32 sum, not rounded to `dtype`.

  Returns:
    [..., Cout] in `dtype`, or float32 with `float32_output`.
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    out = jnp.dot(x.astype(dtype), w.astype(dtype))
    return out if b is None else out + b.astype(dtype)
  out = low_precision_dot(x, w, dtype)  # [..., Cout] float32
  if b is not None:
    out = out + b.astype(jnp.float32)
  return out if float32_output else out.astype(dtype)


def low_precision_dot(x, w, dtype):
  """x [..., Cin] @ w [Cin, Cout] from `dtype` operands, float32 result.

  The gradients come back in the dtypes of x and w, from float32 sums.
  """
  return _low_precision_dot(x, w, (jnp.dtype(dtype), x.dtype, w.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_dot(x, w, dtypes):
  dtype = dtypes[0]
  return _dot(x.astype(dtype), w.astype(dtype))


def _dot(x, w):
  """[..., K] @ [K, N] -> [..., N] float32."""
  return lax.dot_general(
    x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )


def _forward(x, w, dtypes):
  dtype = dtypes[0]
  # The backward pass multiplies by the same rounded operands.
  x_low, w_low = x.astype(dtype), w.astype(dtype)
  return _dot(x_low, w_low), (residuals.pack(x_low), residuals.pack(w_low))


def _backward(dtypes, saved, g):
  dtype, x_dtype, w_dtype = dtypes
  x_low, w_low = (residuals.unpack(a) for a in saved)
  g_low = g.astype(dtype)  # [..., Cout]
  # g @ w^T: contracts both operands over their last axis.
  dx = lax.dot_general(
    g_low,
    w_low,
    (((g.ndim - 1,), (1,)), ((), ())),
    preferred_element_type=jnp.float32,
  )
  dw = _weight_grad(x_low, g_low)
  return dx.astype(x_dtype), dw.astype(w_dtype)


def _weight_grad(x, g):
  """x [..., Cin], g [..., Cout] -> x^T g [Cin, Cout], float32."""
  lead = tuple(range(x.ndim - 1))
  return lax.dot_general(
    x, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32
  )


_low_precision_dot.defvjp(_forward, _backward)
