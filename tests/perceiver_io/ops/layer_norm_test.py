"""`ops.layer_norm` against Haiku's LayerNorm, forward and backward."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from perceiver_io.ops.layer_norm import layer_norm


class LayerNormTest(absltest.TestCase):
  def test_matches_haiku_forward_and_gradient(self):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)) * 3 + 1, jnp.float32)
    scale = jnp.asarray(rng.normal(size=16), jnp.float32)
    offset = jnp.asarray(rng.normal(size=16), jnp.float32)

    def haiku_layer_norm(x):
      return hk.LayerNorm(-1, create_scale=True, create_offset=True)(x)

    ln = hk.without_apply_rng(hk.transform(haiku_layer_norm))
    params = {'layer_norm': {'scale': scale, 'offset': offset}}

    def ours(x, scale, offset):
      return jnp.sum(jnp.sin(layer_norm(x, scale, offset)))

    def theirs(x, scale, offset):
      p = {'layer_norm': {'scale': scale, 'offset': offset}}
      return jnp.sum(jnp.sin(ln.apply(p, x)))

    np.testing.assert_allclose(
      layer_norm(x, scale, offset), ln.apply(params, x), atol=1e-5
    )
    got = jax.grad(ours, argnums=(0, 1, 2))(x, scale, offset)
    want = jax.grad(theirs, argnums=(0, 1, 2))(x, scale, offset)
    for g, w in zip(got, want, strict=True):
      np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)

  def test_low_precision_inputs_give_float32(self):
    x = jnp.ones((3, 8), jnp.bfloat16) * jnp.arange(8, dtype=jnp.bfloat16)
    y = layer_norm(x, jnp.ones(8), jnp.zeros(8))
    self.assertEqual(y.dtype, jnp.float32)
    np.testing.assert_allclose(jnp.mean(y, -1), 0.0, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
