"""`ops.grid` against LayerNorm, projections and einsum attention."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import models_test
from perceiver_io import attention
from perceiver_io import models
from perceiver_io import position_encoding
from perceiver_io import preprocessors
from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend
from perceiver_io.ops import grid as grid_attend
from perceiver_io.ops.layer_norm import layer_norm

HEADS, HEAD_DIM, VALUE_DIM, CONTENT, POS = 2, 4, 5, 3, 6


def _problem(grid, batch=2, num_q=3, seed=0):
  """Random queries, grid inputs (tables not disjoint) and weights."""
  rng = np.random.default_rng(seed)

  def normal(*shape, scale=1.0):
    return jnp.asarray(scale * rng.normal(size=shape).astype(np.float32))

  channels = CONTENT + POS
  x = grid_attend.GridInputs(
    normal(batch, int(np.prod(grid)), CONTENT),
    tuple(normal(size, POS) for size in grid),
  )
  q = normal(batch, num_q, HEADS, HEAD_DIM)
  weights = (
    1.0 + normal(channels, scale=0.1),  # LayerNorm scale.
    normal(channels, scale=0.1),  # LayerNorm offset.
    normal(channels, HEADS * HEAD_DIM, scale=channels**-0.5),
    normal(HEADS * HEAD_DIM),
    normal(channels, HEADS * VALUE_DIM, scale=channels**-0.5),
    normal(HEADS * VALUE_DIM),
  )
  return q, x, weights


def _reference(q, x, weights, kv_mask=None):
  ln_scale, ln_offset, k_w, k_b, v_w, v_b = weights
  h = layer_norm(x.materialize(), ln_scale, ln_offset)  # [B, M, C]
  lead = h.shape[:2]
  k = jnp.reshape(h @ k_w + k_b, lead + (HEADS, HEAD_DIM))
  v = jnp.reshape(h @ v_w + v_b, lead + (HEADS, VALUE_DIM))
  return attend.attend(
    q,
    (k, v),
    kv_mask=kv_mask,
    runtime=runtime_lib.Runtime(attention_impl='einsum'),
  )


def _loss_and_grads(fn, q, x, weights):
  def loss(q, content, tables, weights):
    out = fn(q, grid_attend.GridInputs(content, tables), weights)
    return jnp.sum(jnp.sin(3.0 * out)), out

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
  (_, out), grads = jax.jit(grad_fn)(q, x.content, x.tables, weights)
  return out, grads


class GridAttendTest(parameterized.TestCase):
  @parameterized.product(
    # Blocks of 4, 3 and 2 grid rows leave a shorter last block; 1000 takes
    # the whole grid in one.
    grid_and_block=(((6, 5), 20), ((7,), 3), ((3, 4, 5), 40), ((6, 5), 1000)),
    masked=(False, True),
  )
  def test_matches_reference_forward_and_gradient(self, grid_and_block, masked):
    grid, block_size = grid_and_block
    q, x, weights = _problem(grid)
    kv_mask = None
    if masked:
      kv_mask = np.ones((2, int(np.prod(grid))), np.int32)
      kv_mask[0, ::2] = 0
      kv_mask[1] = 0  # Every input of example 1: a zero output.
      kv_mask = jnp.asarray(kv_mask)

    def fast(q, x, weights):
      out = grid_attend.attend(
        q, x, *weights, kv_mask=kv_mask, block_size=block_size
      )
      return attend.wipe_masked_rows(out, None, kv_mask)

    out, grads = _loss_and_grads(fast, q, x, weights)
    want_out, want_grads = _loss_and_grads(
      lambda q, x, w: _reference(q, x, w, kv_mask), q, x, weights
    )
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    if masked:
      np.testing.assert_array_equal(out[1], 0.0)
    for got, want in zip(
      jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True
    ):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    # The key bias moves all logits of a query alike: its gradient is 0.
    np.testing.assert_array_equal(grads[3][3], 0.0)
    self.assertLess(float(jnp.max(jnp.abs(want_grads[3][3]))), 1e-5)

  def test_blocks_do_not_change_the_result(self):
    q, x, weights = _problem((9, 4))
    outs = [
      grid_attend.attend(q, x, *weights, block_size=size)
      for size in (4, 8, 20, 36)
    ]
    for out in outs[1:]:
      np.testing.assert_allclose(out, outs[0], rtol=1e-6, atol=1e-6)

  def test_large_logits_stay_finite(self):
    q, x, weights = _problem((5, 6))
    out = grid_attend.attend(100.0 * q, x, *weights, block_size=6)
    want = _reference(100.0 * q, x, weights)
    self.assertTrue(np.all(np.isfinite(out)))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)

  def test_content_far_from_zero(self):
    q, x, weights = _problem((5, 6))
    x = grid_attend.GridInputs(x.content * 0.01 + 500.0, x.tables)
    out = grid_attend.attend(q, x, *weights, block_size=6)
    np.testing.assert_allclose(
      out, _reference(q, x, weights), rtol=1e-4, atol=1e-4
    )

  def test_bad_inputs_name_the_problem(self):
    q, x, weights = _problem((4, 5))
    with self.assertRaisesRegex(ValueError, 'grid .* holds 20 inputs'):
      grid_attend.attend(
        q, grid_attend.GridInputs(x.content[:, :19], x.tables), *weights
      )
    with self.assertRaisesRegex(ValueError, 'share their width'):
      bad = (x.tables[0], x.tables[1][:, :2])
      grid_attend.attend(q, grid_attend.GridInputs(x.content, bad), *weights)
    with self.assertRaisesRegex(ValueError, 'k_w must have shape'):
      grid_attend.attend(
        q, x, weights[0], weights[1], weights[2][:, :4], *weights[3:]
      )
    with self.assertRaisesRegex(ValueError, 'kv_mask must have shape'):
      grid_attend.attend(q, x, *weights, kv_mask=jnp.ones((2, 7)))


class GridInputsTest(parameterized.TestCase):
  @parameterized.parameters(
    dict(index_dims=(7, 5), concat_pos=True, sine_only=False),
    dict(index_dims=(3, 4, 6), concat_pos=False, sine_only=False),
    dict(index_dims=(11,), concat_pos=True, sine_only=True),
  )
  def test_tables_sum_to_the_fourier_features_exactly(
    self, index_dims, concat_pos, sine_only
  ):
    resolution = tuple(2 * d for d in index_dims)
    tables = position_encoding.fourier_grid_tables(
      index_dims, 4, resolution, concat_pos, sine_only
    )
    pos = position_encoding.build_linear_positions(index_dims)
    want = position_encoding.generate_fourier_features(
      jnp.reshape(pos, (-1, len(index_dims))),
      4,
      resolution,
      concat_pos,
      sine_only,
    )
    content = jnp.zeros((1, want.shape[0], 2))
    got = grid_attend.GridInputs(content, tables).positions()
    np.testing.assert_array_equal(got, want)

  def test_preprocessor_grid_inputs_stand_for_its_dense_inputs(self):
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 7, 3))

    def run(grid_inputs):
      prep = preprocessors.ImagePreprocessor(
        prep_type='pixels',
        spatial_downsample=1,
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          num_bands=3, max_resolution=(6, 7)
        ),
        grid_inputs=grid_inputs,
      )
      return prep(images, is_training=False)[0]

    fn = hk.without_apply_rng(hk.transform(run))
    grid = fn.apply({}, True)
    dense = fn.apply({}, False)
    self.assertIsInstance(grid, grid_attend.GridInputs)
    self.assertEqual(grid.shape, dense.shape)
    self.assertEqual(grid.grid_shape, (6, 7))
    np.testing.assert_array_equal(grid.materialize(), dense)


class CrossAttentionOnGridTest(parameterized.TestCase):
  @parameterized.parameters('auto', 'chunked', 'einsum', 'dot_product')
  def test_layer_equals_its_dense_inputs(self, impl):
    _, x, _ = _problem((4, 6), num_q=5)

    def layer(inputs_kv):
      z = jnp.ones((2, 5, 8)) * jnp.arange(8.0)
      module = attention.CrossAttention(
        num_heads=2,
        qk_channels=8,
        v_channels=6,
        runtime=runtime_lib.Runtime(attention_impl=impl),
      )
      return module(z, inputs_kv, is_training=False)

    fn = hk.without_apply_rng(hk.transform(layer))
    params = fn.init(jax.random.PRNGKey(0), x.materialize())
    params = jax.tree.map(lambda p: p + 0.05, params)  # Nonzero biases.
    np.testing.assert_allclose(
      fn.apply(params, x),
      fn.apply(params, x.materialize()),
      rtol=1e-5,
      atol=1e-5,
    )

  def test_attention_dropout_materialises(self):
    _, x, _ = _problem((4, 6), num_q=5)

    def layer(inputs_kv):
      z = jnp.ones((2, 5, 8))
      module = attention.CrossAttention(
        num_heads=2,
        qk_channels=8,
        v_channels=6,
        dropout_attn_prob=0.5,
      )
      return module(z, inputs_kv, is_training=True)

    fn = hk.transform(layer)
    params = fn.init(jax.random.PRNGKey(0), x.materialize())
    rng = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(
      fn.apply(params, rng, x), fn.apply(params, rng, x.materialize())
    )


class ModelOnGridTest(parameterized.TestCase):
  @parameterized.parameters(models.IMAGENET_FOURIER, models.OPTICAL_FLOW)
  def test_model_equals_its_dense_formulation(self, name):
    config = models_test.tiny_config(name)
    self.assertTrue(config.runtime.grid_inputs)
    dense_config = config.copy_and_resolve_references()
    dense_config.runtime.grid_inputs = False
    inputs = models_test.random_inputs(name, config)
    grid_model = models.build(name, config)
    dense_model = models.build(name, dense_config)
    params, state = grid_model.init(jax.random.PRNGKey(0), **inputs)
    params = jax.tree.map(lambda p: p + 0.05, params)

    def loss(model, params):
      out, _ = model.apply(params, state, None, is_training=True, **inputs)
      return jnp.mean(jnp.square(out)), out

    # Compiled: eager differentiation of these models is slower.
    (_, out), grads = jax.jit(
      jax.value_and_grad(lambda p: loss(grid_model, p), has_aux=True)
    )(params)
    (_, want), want_grads = jax.jit(
      jax.value_and_grad(lambda p: loss(dense_model, p), has_aux=True)
    )(params)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    for got, expected in zip(
      jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True
    ):
      np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
