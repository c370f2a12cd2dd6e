"""Attention layers: names, numbers against DeepMind's formulation, errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import attention
from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend
from perceiver_io.testing import reference

SELF_ATTENTION_MODULES = {
  'self_attention/layer_norm': ('offset', 'scale'),
  'self_attention/attention/linear': ('b', 'w'),
  'self_attention/attention/linear_1': ('b', 'w'),
  'self_attention/attention/linear_2': ('b', 'w'),
  'self_attention/attention/linear_3': ('b', 'w'),
  'self_attention/layer_norm_1': ('offset', 'scale'),
  'self_attention/mlp/linear': ('b', 'w'),
  'self_attention/mlp/linear_1': ('b', 'w'),
}


def _random_params(params, seed=0):
  """Replaces every leaf with noise, so no gradient is trivially zero."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      0.3 * jax.random.normal(key, leaf.shape)
      + (leaf if leaf.ndim == 1 else 0.0)
      for key, leaf in zip(keys, leaves, strict=True)
    ],
  )


def _with_runtime(impl_module, kwargs):
  """`kwargs` with runtime fields (attention_impl=...) made a `runtime`, for
  our modules; DeepMind's formulation has none."""
  fields = {k: kwargs.pop(k) for k in list(kwargs) if k in runtime_lib.FIELDS}
  if impl_module in (attention.SelfAttention, attention.CrossAttention):
    kwargs['runtime'] = runtime_lib.Runtime(**fields)
  return kwargs


def _self_attention(impl_module, mask=None, **kwargs):
  kwargs = _with_runtime(impl_module, kwargs)

  def fn(x):
    return impl_module(
      num_heads=2, widening_factor=2, qk_channels=8, v_channels=12, **kwargs
    )(x, is_training=False, mask=mask)

  return hk.transform(fn)


def _cross_attention(impl_module, q_mask=None, kv_mask=None, **kwargs):
  kwargs = _with_runtime(impl_module, kwargs)

  def fn(x_q, x_kv):
    return impl_module(num_heads=2, widening_factor=1, **kwargs)(
      x_q, x_kv, is_training=False, q_mask=q_mask, kv_mask=kv_mask
    )

  return hk.transform(fn)


def _assert_same_values_and_grads(test, ours, theirs, params, *inputs):
  def loss(module):
    return lambda p, *x: jnp.sum(jnp.sin(module.apply(p, None, *x)))

  want, want_grads = jax.jit(jax.value_and_grad(loss(theirs), argnums=(0, 1)))(
    params, *inputs
  )
  got, got_grads = jax.jit(jax.value_and_grad(loss(ours), argnums=(0, 1)))(
    params, *inputs
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_grads))
  for (path, g), w in zip(
    jax.tree_util.tree_leaves_with_path(got_grads),
    jax.tree.leaves(want_grads),
    strict=True,
  ):
    # Key biases have a zero gradient (softmax ignores them): compare all
    # leaves on the scale of the largest gradient.
    np.testing.assert_allclose(
      g, w, atol=1e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path)
    )


class SelfAttentionTest(parameterized.TestCase):
  def test_parameter_names_are_deepminds(self):
    x = jnp.zeros((2, 6, 16))
    params = _self_attention(attention.SelfAttention).init(
      jax.random.PRNGKey(0), x
    )
    self.assertEqual(
      {k: tuple(sorted(v)) for k, v in params.items()}, SELF_ATTENTION_MODULES
    )
    self.assertEqual(
      params['self_attention/attention/linear']['w'].shape, (16, 8)
    )
    self.assertEqual(
      params['self_attention/attention/linear_2']['w'].shape, (16, 12)
    )
    self.assertEqual(params['self_attention/mlp/linear']['w'].shape, (16, 32))
    theirs = _self_attention(reference.SelfAttention).init(
      jax.random.PRNGKey(0), x
    )
    self.assertEqual(
      jax.tree.map(jnp.shape, params), jax.tree.map(jnp.shape, theirs)
    )

  @parameterized.product(
    implementation=('einsum', 'chunked', 'dot_product'), masked=(False, True)
  )
  def test_matches_deepminds_formulation(self, implementation, masked):
    x = jnp.asarray(
      np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32
    )
    mask = jnp.array([[1, 1, 0, 1, 0, 1], [0] * 6]) if masked else None
    ours = _self_attention(
      attention.SelfAttention, mask, attention_impl=implementation
    )
    theirs = _self_attention(reference.SelfAttention, mask)
    params = _random_params(ours.init(jax.random.PRNGKey(0), x))
    _assert_same_values_and_grads(self, ours, theirs, params, x)

  def test_bfloat16_compute_keeps_float32_params_and_outputs(self):
    x = jnp.asarray(
      np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32
    )
    f32 = _self_attention(attention.SelfAttention)
    bf16 = _self_attention(attention.SelfAttention, compute_dtype='bfloat16')
    params = _random_params(bf16.init(jax.random.PRNGKey(0), x))
    self.assertTrue(
      all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    )
    want = jax.jit(f32.apply)(params, None, x)
    got = jax.jit(bf16.apply)(params, None, x)
    self.assertEqual(got.dtype, jnp.float32)
    self.assertGreater(float(jnp.max(jnp.abs(got - want))), 0.0)
    np.testing.assert_allclose(got, want, atol=0.1, rtol=0.05)

  def test_dropout_depends_on_rng(self):
    x = jnp.asarray(
      np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32
    )

    def fn(x, is_training):
      return attention.SelfAttention(
        num_heads=2, dropout_prob=0.3, dropout_attn_prob=0.3
      )(x, is_training=is_training)

    model = hk.transform(fn)
    params = model.init(jax.random.PRNGKey(0), x, True)
    apply = jax.jit(model.apply, static_argnums=3)
    a = apply(params, jax.random.PRNGKey(1), x, True)
    b = apply(params, jax.random.PRNGKey(2), x, True)
    eval_out = apply(params, None, x, False)
    self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-3)
    np.testing.assert_array_equal(
      a, apply(params, jax.random.PRNGKey(1), x, True)
    )
    self.assertGreater(float(jnp.max(jnp.abs(a - eval_out))), 1e-3)
    with self.assertRaisesRegex(ValueError, 'PRNGKey'):
      model.apply(params, None, x, True)

  @parameterized.named_parameters(
    ('heads', dict(num_heads=3), 'divisible by the number of heads'),
    ('dtype', dict(compute_dtype='int8'), 'runtime.compute_dtype'),
    ('impl', dict(attention_impl='flash'), 'runtime.attention_impl'),
    ('dropout', dict(dropout_prob=1.0), r'in \[0, 1\)'),
    ('widening', dict(widening_factor=0), 'must be positive'),
  )
  def test_bad_arguments(self, kwargs, message):
    def fn(x):
      layer_kwargs = _with_runtime(attention.SelfAttention, dict(kwargs))
      return attention.SelfAttention(**layer_kwargs)(x, is_training=False)

    with self.assertRaisesRegex(ValueError, message):
      hk.transform(fn).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16)))

  def test_bad_rank(self):
    def fn(x):
      return attention.SelfAttention(num_heads=2)(x, is_training=False)

    with self.assertRaisesRegex(ValueError, r'\[B, N, C\]'):
      hk.transform(fn).init(jax.random.PRNGKey(0), jnp.zeros((4, 16)))


class CrossAttentionTest(parameterized.TestCase):
  @parameterized.parameters(
    ('einsum', 'kv', True),
    ('chunked', 'q', False),
    ('dot_product', 'kv', False),
  )
  def test_matches_deepminds_formulation(
    self, implementation, shape_for_attn, use_query_residual
  ):
    rng = np.random.default_rng(2)
    x_q = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    x_kv = jnp.asarray(rng.normal(size=(2, 9, 6)), jnp.float32)
    q_mask = jnp.array([[1, 0, 1, 1, 1], [1, 1, 1, 0, 1]])
    kv_mask = jnp.array([[1, 1, 0, 1, 0, 1, 1, 1, 0], [0] * 9])
    kwargs = dict(
      shape_for_attn=shape_for_attn, use_query_residual=use_query_residual
    )
    ours = _cross_attention(
      attention.CrossAttention,
      q_mask,
      kv_mask,
      attention_impl=implementation,
      **kwargs,
    )
    theirs = _cross_attention(
      reference.CrossAttention, q_mask, kv_mask, **kwargs
    )
    params = _random_params(ours.init(jax.random.PRNGKey(0), x_q, x_kv))
    self.assertEqual(
      jax.tree.map(jnp.shape, params),
      jax.tree.map(jnp.shape, theirs.init(jax.random.PRNGKey(0), x_q, x_kv)),
    )
    self.assertEqual(
      params['cross_attention/attention/linear']['w'].shape,
      (16, 6 if shape_for_attn == 'kv' else 16),
    )
    _assert_same_values_and_grads(self, ours, theirs, params, x_q, x_kv)

  def test_query_chunks_change_nothing(self):
    rng = np.random.default_rng(3)
    x_q = jnp.asarray(rng.normal(size=(2, 11, 8)), jnp.float32)
    x_kv = jnp.asarray(rng.normal(size=(2, 7, 6)), jnp.float32)
    q_mask = jnp.asarray(rng.integers(0, 2, (2, 11)))
    whole = _cross_attention(
      attention.CrossAttention, q_mask, query_chunk_size=None
    )
    chunked = _cross_attention(
      attention.CrossAttention, q_mask, query_chunk_size=4
    )
    params = _random_params(whole.init(jax.random.PRNGKey(0), x_q, x_kv))
    # Two chunks of 4 queries in a loop, then the last 3.
    self.assertIn(
      'while', jax.jit(chunked.apply).lower(params, None, x_q, x_kv).as_text()
    )
    _assert_same_values_and_grads(self, chunked, whole, params, x_q, x_kv)

  def test_many_inputs_project_keys_and_values_in_blocks(self):
    # More inputs than one key block (2048): the 'chunked' path computes
    # keys and values block by block (two blocks, the last padded).
    rng = np.random.default_rng(4)
    x_q = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    x_kv = jnp.asarray(rng.normal(size=(2, 2100, 6)), jnp.float32)
    kv_mask = jnp.asarray(rng.integers(0, 2, (2, 2100)))
    # 'auto' keeps the einsum path for so small an attention matrix.
    q = jax.ShapeDtypeStruct((2, 5, 2, 3), jnp.float32)
    ln, linear = (jnp.ones(6), jnp.zeros(6)), (jnp.ones((6, 6)), jnp.zeros(6))
    kv = attend.KeyValueInputs(x_kv, *ln, *linear, *linear)
    for impl, kernel in (
      ('einsum', 'einsum'),
      ('auto', 'einsum'),
      ('chunked', 'projected'),
    ):
      runtime = runtime_lib.Runtime(attention_impl=impl)
      self.assertEqual(
        attend.resolve(q, kv, kv_mask=kv_mask, runtime=runtime), kernel
      )
    short = kv._replace(inputs=x_kv[:, :2048])
    self.assertEqual(attend.resolve(q, short, runtime=runtime), 'chunked')
    ours = _cross_attention(
      attention.CrossAttention, kv_mask=kv_mask, attention_impl='chunked'
    )
    theirs = _cross_attention(reference.CrossAttention, kv_mask=kv_mask)
    params = _random_params(ours.init(jax.random.PRNGKey(0), x_q, x_kv))
    _assert_same_values_and_grads(self, ours, theirs, params, x_q, x_kv)

  def test_output_fn_runs_inside_query_chunks(self):
    rng = np.random.default_rng(5)
    x_q = jnp.asarray(rng.normal(size=(2, 11, 8)), jnp.float32)
    x_kv = jnp.asarray(rng.normal(size=(2, 7, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)

    def output_fn(x):
      return jnp.tanh(x @ w)

    def fn(x_q, x_kv, chunk, inside):
      out = attention.CrossAttention(
        num_heads=2, runtime=runtime_lib.Runtime(query_chunk_size=chunk)
      )(
        x_q,
        x_kv,
        is_training=False,
        output_fn=output_fn if inside else None,
      )
      return out if inside else output_fn(out)

    inside = hk.transform(lambda q, kv: fn(q, kv, 4, True))
    outside = hk.transform(lambda q, kv: fn(q, kv, None, False))
    params = _random_params(inside.init(jax.random.PRNGKey(0), x_q, x_kv))
    # The output of the chunked layer is [B, N, 3]: only the mapped values
    # are ever whole.
    text = jax.jit(inside.apply).lower(params, None, x_q, x_kv).as_text()
    self.assertIn('while', text)
    self.assertEqual(inside.apply(params, None, x_q, x_kv).shape, (2, 11, 3))
    _assert_same_values_and_grads(self, inside, outside, params, x_q, x_kv)

  def test_bad_shape_for_attn(self):
    with self.assertRaisesRegex(ValueError, 'Unknown shape_for_attn'):
      hk.transform(lambda: attention.CrossAttention(shape_for_attn='x')).init(
        None
      )


if __name__ == '__main__':
  absltest.main()
