"""residuals: 16-bit floats kept as bits, and what that does inside a scan."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax import lax

from perceiver_io.ops import dense
from perceiver_io.ops import residuals


class PackTest(parameterized.TestCase):
  @parameterized.parameters(jnp.bfloat16, jnp.float16)
  def test_round_trip_is_bit_exact(self, dtype):
    x = jnp.asarray([0.0, -0.0, 1.5, -3e-3, np.inf, -np.inf, np.nan], dtype)
    packed = residuals.pack(x)
    self.assertIsInstance(packed, residuals.Bits)
    self.assertEqual(packed.bits.dtype, jnp.uint16)
    back = residuals.unpack(packed)
    self.assertEqual(back.dtype, dtype)
    np.testing.assert_array_equal(
      lax.bitcast_convert_type(back, jnp.uint16), packed.bits
    )
    np.testing.assert_array_equal(
      np.asarray(back, np.float32), np.asarray(x, np.float32)
    )

  @parameterized.parameters(jnp.float32, jnp.int32, jnp.bool_)
  def test_other_dtypes_pass_through(self, dtype):
    x = jnp.ones((3,), dtype)
    self.assertIs(residuals.pack(x), x)
    self.assertIs(residuals.unpack(x), x)

  def test_bits_cross_jit_as_a_pytree(self):
    x = jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3)
    packed = jax.jit(residuals.pack)(x)
    self.assertEqual(packed.dtype, jnp.bfloat16)
    np.testing.assert_array_equal(jax.jit(residuals.unpack)(packed), x)


def _scanned_grad(num_layers=4):
  """The gradient of a bf16 `dense` layer stack under `lax.scan`."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 32)), jnp.float32)
  w = jnp.asarray(0.2 * rng.normal(size=(32, 32)), jnp.float32)

  def loss(x, w):
    def layer(h, _):
      y = dense.dense(h, w, None, jnp.bfloat16).astype(jnp.float32)
      return jnp.tanh(y) + h, None

    out, _ = lax.scan(layer, x, None, length=num_layers)
    return jnp.sum(out**2)

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (x, w)


class ScanTest(absltest.TestCase):
  def test_stacked_residuals_are_never_bfloat16_buffers(self):
    if jax.default_backend() != 'cpu':
      self.skipTest('Checks the CPU backend.')
    grad, args = _scanned_grad()
    text = grad.lower(*args).compile().as_text()
    # Each iteration writes its residuals into stacked [4, 2, 16, 32]
    # buffers; a bf16 one makes XLA convert the whole buffer every time.
    stacked = set(re.findall(r'(\w+)\[4,2,16,32\]', text))
    self.assertIn('u16', stacked, text)
    self.assertNotIn('bf16', stacked, text)

  def test_scanned_gradient_equals_the_unrolled_one(self):
    grad, args = _scanned_grad()
    x, w = args

    def unrolled(x, w):
      h = x
      for _ in range(4):
        y = dense.dense(h, w, None, jnp.bfloat16).astype(jnp.float32)
        h = jnp.tanh(y) + h
      return jnp.sum(h**2)

    want = jax.jit(jax.grad(unrolled, argnums=(0, 1)))(x, w)
    for got, expected in zip(grad(*args), want, strict=True):
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
