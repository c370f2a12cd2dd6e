"""dense: float32 and mixed-precision linear maps, values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io.ops import dense

_CIN, _COUT = 48, 40


def _operands(lead_shape, x_dtype=jnp.float32, seed=0):
  """x [*lead, Cin], w [Cin, Cout], b [Cout], g [*lead, Cout]."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(*lead_shape, _CIN)), x_dtype)
  w = jnp.asarray(0.2 * rng.normal(size=(_CIN, _COUT)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(_COUT,)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(*lead_shape, _COUT)), jnp.float32)
  return x, w, b, g


def _rounded(a, dtype):
  """a rounded to `dtype`, as float64 numpy."""
  return np.asarray(
    jnp.asarray(a).astype(dtype).astype(jnp.float32), np.float64
  )


def _reference_grads(x, w, g, dtype):
  """dx, dw in float64 from operands and cotangent rounded to `dtype`."""
  x_low, w_low, g_low = (_rounded(a, dtype) for a in (x, w, g))
  dx = g_low @ w_low.T
  dw = np.tensordot(x_low, g_low, axes=(range(x.ndim - 1), range(g.ndim - 1)))
  return dx, dw


def _vjp(x, w, b, g, dtype):
  out, vjp = jax.vjp(lambda x, w, b: dense.dense(x, w, b, dtype), x, w, b)
  # The incoming gradient has the output's dtype, as in a model.
  return out, vjp(g.astype(out.dtype))


class DenseTest(parameterized.TestCase):
  def test_float32_is_the_plain_product(self):
    x, w, b, _ = _operands((2, 5))
    got = dense.dense(x, w, b, jnp.float32)
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_array_equal(got, jnp.dot(x, w) + b)
    np.testing.assert_array_equal(
      dense.dense(x, w, None, 'float32'), jnp.dot(x, w)
    )

  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_low_precision_forward_accumulates_in_float32(self, dtype):
    x, w, b, _ = _operands((3, 7))
    got = dense.dense(x, w, b, dtype)
    self.assertEqual(got.dtype, dtype)
    want = _rounded(x, dtype) @ _rounded(w, dtype) + np.asarray(b)
    # One rounding of the float32 sum to `dtype`, nothing more.
    np.testing.assert_array_equal(
      got, jnp.asarray(want, jnp.float32).astype(dtype)
    )

  @parameterized.named_parameters(
    ('rank2', (12,)),
    ('rank3', (2, 6)),
    ('rank4', (2, 3, 4)),
  )
  def test_bfloat16_gradients_are_float32_sums(self, lead_shape):
    x, w, b, g = _operands(lead_shape)
    dtype = jnp.bfloat16
    _, (dx, dw, db) = _vjp(x, w, b, g, dtype)
    self.assertEqual(dx.dtype, jnp.float32)
    self.assertEqual(dw.dtype, jnp.float32)
    self.assertEqual(db.dtype, jnp.float32)
    want_dx, want_dw = _reference_grads(x, w, g, dtype)
    # float32 sums of bf16 products: far tighter than a bf16 result (2^-8).
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
      db,
      _rounded(g, dtype).reshape(-1, _COUT).sum(0),
      rtol=1e-5,
      atol=1e-5,
    )

  def test_gradient_keeps_a_bfloat16_input_dtype(self):
    x, w, b, g = _operands((2, 6), x_dtype=jnp.bfloat16)
    _, (dx, dw, _) = _vjp(x, w, b, g, jnp.bfloat16)
    self.assertEqual(dx.dtype, jnp.bfloat16)
    self.assertEqual(dw.dtype, jnp.float32)
    want_dx, _ = _reference_grads(x, w, g, jnp.bfloat16)
    np.testing.assert_allclose(
      np.asarray(dx, np.float32), want_dx, rtol=1e-2, atol=1e-2
    )

  def test_gradient_under_jit_equals_eager(self):
    x, w, b, g = _operands((2, 6))

    def loss(x, w, b):
      out = dense.dense(x, w, b, jnp.bfloat16).astype(jnp.float32)
      return jnp.sum(out * g)

    eager = jax.grad(loss, argnums=(0, 1, 2))(x, w, b)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b)
    for e, j in zip(eager, jitted, strict=True):
      np.testing.assert_allclose(e, j, rtol=1e-6, atol=1e-6)


def _dot_operand_types(hlo_text):
  """The element types of every dot's two operands in compiled HLO text."""
  types = {}
  for match in re.finditer(r'%([\w.\-]+): (\w+)\[', hlo_text):
    types[match.group(1)] = match.group(2)  # Computation parameters.
  for match in re.finditer(r'%([\w.\-]+) = (\w+)\[', hlo_text):
    types[match.group(1)] = match.group(2)
  dots = re.findall(
    r'= \w+\[[^\]]*\][^ ]* dot\(%([\w.\-]+), %([\w.\-]+)\)', hlo_text
  )
  return [(types.get(lhs), types.get(rhs)) for lhs, rhs in dots]


class CpuProductsTest(absltest.TestCase):
  """On a CPU, no bf16 product of the training step falls back to float32.

  XLA's CPU backend computes a bf16 product in float32 (at a third or less of
  the bf16 rate on CPUs with AMX) when it returns bf16 or when its left
  operand is contracted over a leading axis. `dense` avoids both, forward and
  backward; this test fails if a product of its gradient is upcast again.
  """

  def test_gradient_products_stay_bfloat16(self):
    if jax.default_backend() != 'cpu':
      self.skipTest('Checks the CPU backend.')
    x, w, b, g = _operands((2, 32))

    def loss(x, w, b):
      out = dense.dense(x, w, b, jnp.bfloat16).astype(jnp.float32)
      return jnp.sum(jnp.square(out) * g)  # Needs the forward product too.

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = grad.lower(x, w, b).compile().as_text()
    operand_types = _dot_operand_types(text)
    self.assertLen(operand_types, 3, text)  # forward, dx, dw
    for lhs, rhs in operand_types:
      self.assertEqual((lhs, rhs), ('bf16', 'bf16'), text)


if __name__ == '__main__':
  absltest.main()
