"""Every attention path against the einsum reference, forward and gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend
from perceiver_io.ops import chunked as chunked_attend
from perceiver_io.ops import dot_product

IMPLEMENTATIONS = runtime_lib.ATTENTION_IMPLS
FAST_PATHS = tuple(i for i in IMPLEMENTATIONS if i != 'einsum')
# Small chunks, so that a few dozen queries and keys span several blocks and
# the last block needs padding.
CHUNKS = dict(q_chunk_size=8, kv_chunk_size=16)


def _attend(q, k, v, *, implementation='einsum', **kwargs):
  """`_attend(q, (k, v))` under a runtime of `implementation` and any
  chunk sizes in `kwargs`."""
  sizes = {
    key: kwargs.pop(key)
    for key in ('q_chunk_size', 'kv_chunk_size')
    if key in kwargs
  }
  runtime = runtime_lib.Runtime(attention_impl=implementation, **sizes)
  return attend.attend(q, (k, v), runtime=runtime, **kwargs)


def _inputs(
  batch=2, num_q=21, num_kv=37, heads=3, head_dim=8, value_dim=5, seed=0
):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, num_q, heads, head_dim)).astype(np.float32)
  k = rng.normal(size=(batch, num_kv, heads, head_dim)).astype(np.float32)
  v = rng.normal(size=(batch, num_kv, heads, value_dim)).astype(np.float32)
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _masks(batch, num_q, num_kv, seed=1):
  """Random masks; batch element 1 has every key masked."""
  rng = np.random.default_rng(seed)
  q_mask = rng.integers(0, 2, (batch, num_q)).astype(np.int32)
  kv_mask = rng.integers(0, 2, (batch, num_kv)).astype(np.int32)
  kv_mask[1] = 0
  return jnp.asarray(q_mask), jnp.asarray(kv_mask)


def _value_and_grads(implementation, q, k, v, **kwargs):
  def loss(q, k, v):
    out = _attend(q, k, v, implementation=implementation, **CHUNKS, **kwargs)
    return jnp.sum(jnp.sin(3.0 * out)), out

  (_, out), grads = jax.jit(
    jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  )(q, k, v)
  return out, grads


class AttendEquivalenceTest(parameterized.TestCase):
  @parameterized.product(implementation=FAST_PATHS, masks=('kv', 'both'))
  def test_matches_reference_forward_and_gradient(self, implementation, masks):
    q, k, v = _inputs()
    q_mask, kv_mask = _masks(2, q.shape[1], k.shape[1])
    kwargs = {}
    if masks in ('q', 'both'):
      kwargs['q_mask'] = q_mask
    if masks in ('kv', 'both'):
      kwargs['kv_mask'] = kv_mask
    want_out, want_grads = _value_and_grads('einsum', q, k, v, **kwargs)
    out, grads = _value_and_grads(implementation, q, k, v, **kwargs)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5)

  @parameterized.parameters(*FAST_PATHS)
  def test_equal_head_sizes(self, implementation):
    q, k, v = _inputs(value_dim=8)
    want_out, want_grads = _value_and_grads('einsum', q, k, v)
    out, grads = _value_and_grads(implementation, q, k, v)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5)

  @parameterized.parameters(*IMPLEMENTATIONS)
  def test_all_masked_rows_are_zero_with_zero_gradient(self, implementation):
    q, k, v = _inputs()
    q_mask, kv_mask = _masks(2, q.shape[1], k.shape[1])
    out, (dq, dk, dv) = _value_and_grads(
      implementation, q, k, v, q_mask=q_mask, kv_mask=kv_mask
    )
    self.assertEqual(out.shape, (2, 21, 3 * 5))
    # Batch element 1 has no key; masked queries of element 0 get nothing.
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[0][q_mask[0] == 0], 0.0)
    for grad in (dq[1], dk[1], dv[1], dq[0][q_mask[0] == 0]):
      np.testing.assert_array_equal(grad, 0.0)
    # Masked keys get no gradient either.
    np.testing.assert_array_equal(dk[0][kv_mask[0] == 0], 0.0)
    np.testing.assert_array_equal(dv[0][kv_mask[0] == 0], 0.0)

  def test_masked_keys_do_not_change_the_output(self):
    q, k, v = _inputs()
    _, kv_mask = _masks(2, q.shape[1], k.shape[1])
    noise = jnp.where(kv_mask[..., None, None] == 0, 100.0, 0.0)
    for implementation in IMPLEMENTATIONS:
      fn = jax.jit(
        lambda q, k, v, implementation=implementation: _attend(
          q, k, v, kv_mask=kv_mask, implementation=implementation, **CHUNKS
        )
      )
      np.testing.assert_allclose(
        fn(q, k, v),
        fn(q, k + noise, v - noise),
        atol=1e-6,
        err_msg=implementation,
      )

  @parameterized.parameters((1, 1), (5, 3), (64, 64))
  def test_chunked_any_block_sizes(self, q_chunk, kv_chunk):
    q, k, v = _inputs()
    _, kv_mask = _masks(2, q.shape[1], k.shape[1])
    want = _attend(q, k, v, kv_mask=kv_mask)
    got = _attend(
      q,
      k,
      v,
      kv_mask=kv_mask,
      implementation='chunked',
      q_chunk_size=q_chunk,
      kv_chunk_size=kv_chunk,
    )
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_heads_apart_equals_batched_heads(self, dtype):
    # A single-block forward on a CPU runs one (example, head) at a time.
    q, k, v = (x.astype(dtype) for x in _inputs())
    _, kv_mask = _masks(2, q.shape[1], k.shape[1])
    cfg = chunked_attend._config(q.shape, k.shape[1], kv_mask, 0.0, 64, 64)
    self.assertEqual((cfg.num_q_blocks, cfg.num_kv_blocks), (1, 1))
    args = (
      jnp.swapaxes(q, 1, 2),
      jnp.swapaxes(k, 1, 2),
      jnp.swapaxes(v, 1, 2),
      kv_mask != 0,
      jnp.zeros((2,), jnp.uint32),
    )
    apart = dataclasses.replace(cfg, heads_apart=True)
    out, lse = jax.jit(chunked_attend._forward, static_argnums=0)(apart, *args)
    want_out, want_lse = chunked_attend._forward(cfg, *args)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
      out.astype(jnp.float32), want_out.astype(jnp.float32), atol=tol
    )
    np.testing.assert_allclose(lse, want_lse, atol=tol, rtol=tol)

  def test_bfloat16_inputs_stay_close(self):
    q, k, v = (x.astype(jnp.bfloat16) for x in _inputs(value_dim=8))
    want = _attend(*(x.astype(jnp.float32) for x in (q, k, v)))
    for implementation in IMPLEMENTATIONS:
      got = jax.jit(
        lambda q, k, v, implementation=implementation: _attend(
          q, k, v, implementation=implementation, **CHUNKS
        )
      )(q, k, v)
      self.assertEqual(got.dtype, jnp.bfloat16)
      np.testing.assert_allclose(
        got.astype(jnp.float32), want, atol=3e-2, err_msg=implementation
      )

  @parameterized.parameters(*IMPLEMENTATIONS)
  def test_bfloat16_gradients_stay_close(self, implementation):
    # The chunked path keeps its bf16 residuals as uint16 bits
    # (`perceiver_io.residuals`); the gradient must not notice.
    q, k, v = _inputs(value_dim=8)
    _, kv_mask = _masks(2, q.shape[1], k.shape[1])
    _, want = _value_and_grads('einsum', q, k, v, kv_mask=kv_mask)
    low = tuple(x.astype(jnp.bfloat16) for x in (q, k, v))
    _, grads = _value_and_grads(implementation, *low, kv_mask=kv_mask)
    for name, got, expected in zip('qkv', grads, want, strict=True):
      self.assertEqual(got.dtype, jnp.bfloat16)
      np.testing.assert_allclose(
        got.astype(jnp.float32),
        expected,
        atol=0.1,
        rtol=0.05,
        err_msg=f'{implementation} d{name}',
      )


class DropoutTest(parameterized.TestCase):
  def test_chunked_drops_exactly_what_the_reference_drops(self):
    q, k, v = _inputs()
    q_mask, kv_mask = _masks(2, q.shape[1], k.shape[1])
    kwargs = dict(
      q_mask=q_mask,
      kv_mask=kv_mask,
      dropout_prob=0.3,
      dropout_rng=jax.random.PRNGKey(7),
    )
    want_out, want_grads = _value_and_grads('einsum', q, k, v, **kwargs)
    out, grads = _value_and_grads('chunked', q, k, v, **kwargs)
    no_dropout, _ = _value_and_grads(
      'einsum', q, k, v, q_mask=q_mask, kv_mask=kv_mask
    )
    self.assertGreater(float(jnp.max(jnp.abs(want_out - no_dropout))), 0.1)
    np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
      np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5)

  def test_keep_rate_and_seed_dependence(self):
    rate = 0.25
    rows = chunked_attend.row_ids(2, 4, 64, 0, 64)
    cols = jnp.arange(256, dtype=jnp.uint32)
    seeds = chunked_attend.dropout_seeds(jax.random.PRNGKey(0))
    keep = chunked_attend.dropout_keep(seeds, rows, cols, rate)
    self.assertEqual(keep.shape, (2, 4, 64, 256))
    self.assertAlmostEqual(float(jnp.mean(keep)), 1.0 - rate, delta=0.01)
    # Neither rows nor columns repeat a pattern.
    self.assertFalse(bool(jnp.all(keep[0, 0, 0] == keep[0, 0, 1])))
    self.assertFalse(bool(jnp.all(keep[..., 0] == keep[..., 1])))
    other = chunked_attend.dropout_keep(
      chunked_attend.dropout_seeds(jax.random.PRNGKey(1)), rows, cols, rate
    )
    self.assertLess(float(jnp.mean(keep == other)), 0.7)

  def test_dot_product_refuses_dropout(self):
    q, k, v = _inputs()
    with self.assertRaisesRegex(ValueError, 'no dropout'):
      _attend(
        q,
        k,
        v,
        dropout_prob=0.1,
        dropout_rng=jax.random.PRNGKey(0),
        implementation='dot_product',
      )


class MemoryTest(absltest.TestCase):
  def _temp_bytes(self, implementation, grad):
    shape = jax.ShapeDtypeStruct((1, 4096, 1, 32), jnp.float32)

    def forward(q, k, v):
      return _attend(
        q,
        k,
        v,
        implementation=implementation,
        q_chunk_size=256,
        kv_chunk_size=256,
      )

    fn = forward
    if grad:
      fn = jax.grad(
        lambda q, k, v: jnp.sum(jnp.sin(forward(q, k, v))), argnums=(0, 1, 2)
      )
    compiled = jax.jit(fn).lower(shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  def test_chunked_never_holds_the_attention_matrix(self):
    matrix_bytes = 4096 * 4096 * 4  # 64 MiB.
    # The einsum path's gradient keeps the matrix. (Its forward may run as one
    # fused XLA kernel whose scratch memory XLA does not report.)
    self.assertGreaterEqual(self._temp_bytes('einsum', grad=True), matrix_bytes)
    for grad in (False, True):
      self.assertLess(self._temp_bytes('chunked', grad), matrix_bytes / 8)


class AutoTest(absltest.TestCase):
  def test_auto_picks_by_size(self):
    small = jax.ShapeDtypeStruct((1, 64, 1, 8), jnp.float32)
    big_q = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)
    big_kv = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)
    self.assertEqual(attend.resolve(small, (small, small)), 'einsum')
    self.assertEqual(attend.resolve(big_q, (big_kv, big_kv)), 'chunked')
    self.assertEqual(
      attend.resolve(
        small,
        (small, small),
        runtime=runtime_lib.Runtime(attention_impl='chunked'),
      ),
      'chunked',
    )

  def test_cudnn_only_on_gpu(self):
    x = jax.ShapeDtypeStruct((1, 64, 2, 64), jnp.bfloat16)
    self.assertEqual(
      dot_product.cudnn_applies(x, x, x), jax.default_backend() == 'gpu'
    )


class ErrorTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('rank', dict(q=(2, 3, 8)), 'rank 4'),
    ('kv', dict(v=(2, 5, 3, 8)), 'differ in'),
    ('heads', dict(q=(2, 4, 2, 8)), 'batch or heads'),
    ('channels', dict(q=(2, 4, 3, 4)), 'same channels'),
  )
  def test_bad_shapes(self, shapes, message):
    sizes = dict(q=(2, 4, 3, 8), k=(2, 6, 3, 8), v=(2, 6, 3, 8))
    sizes.update(shapes)
    q, k, v = (jnp.zeros(sizes[n]) for n in 'qkv')
    with self.assertRaisesRegex(ValueError, message):
      _attend(q, k, v)

  def test_bad_masks_rates_and_names(self):
    q, k, v = _inputs()
    with self.assertRaisesRegex(ValueError, 'q_mask must have shape'):
      _attend(q, k, v, q_mask=jnp.ones((2, 3)))
    with self.assertRaisesRegex(ValueError, 'kv_mask must have shape'):
      _attend(q, k, v, kv_mask=jnp.ones((2, 3)))
    with self.assertRaisesRegex(ValueError, 'needs dropout_rng'):
      _attend(q, k, v, dropout_prob=0.1)
    with self.assertRaisesRegex(ValueError, r'in \[0, 1\)'):
      _attend(q, k, v, dropout_prob=1.0, dropout_rng=jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, 'runtime.attention_impl'):
      _attend(q, k, v, implementation='flash')
    with self.assertRaisesRegex(ValueError, 'runtime.kv_chunk_size'):
      _attend(q, k, v, implementation='chunked', kv_chunk_size=0)


def _projection_inputs(batch=2, num_q=21, num_kv=37, channels=6, seed=4):
  """Queries [B, N, 3, 8], inputs [B, M, C] and their `KeyValueInputs`
  weights (values of 5 channels per head)."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, num_q, 3, 8)).astype(np.float32)
  x = rng.normal(size=(batch, num_kv, channels)).astype(np.float32)
  params = (
    1.0 + 0.3 * rng.normal(size=(channels,)),  # LayerNorm scale
    0.3 * rng.normal(size=(channels,)),  # offset
    rng.normal(size=(channels, 24)),  # k_w
    rng.normal(size=(24,)),  # k_b
    rng.normal(size=(channels, 15)),  # v_w
    rng.normal(size=(15,)),  # v_b
  )
  params = tuple(jnp.asarray(a, jnp.float32) for a in params)
  return jnp.asarray(q), jnp.asarray(x), params


def _project(params, x):
  """[B, m, C] -> keys [B, m, 3, 8] and values [B, m, 3, 5], row by row,
  written out: LayerNorm, then the two linear maps."""
  scale, offset, k_w, k_b, v_w, v_b = params
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  h = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + offset
  k = h @ k_w + k_b
  v = h @ v_w + v_b
  return (
    jnp.reshape(k, x.shape[:2] + (3, 8)),
    jnp.reshape(v, x.shape[:2] + (3, 5)),
  )


CHUNKED = runtime_lib.Runtime(attention_impl='chunked', **CHUNKS)


class ProjectedTest(parameterized.TestCase):
  """`KeyValueInputs` longer than a key block: keys and values computed
  block by block (the 'projected' kernel)."""

  def test_resolves_to_projected(self):
    q, x, params = _projection_inputs()
    kv = attend.KeyValueInputs(x, *params)
    self.assertEqual(attend.resolve(q, kv, runtime=CHUNKED), 'projected')
    short = attend.KeyValueInputs(x[:, :16], *params)
    self.assertEqual(attend.resolve(q, short, runtime=CHUNKED), 'chunked')
    self.assertEqual(attend.resolve(q, kv), 'einsum')  # 'auto', small.

  def _value_and_grads(self, projected, q, x, params, **kwargs):
    def loss(q, x, params):
      if projected:
        kv = attend.KeyValueInputs(x, *params)
        out = attend.attend(q, kv, runtime=CHUNKED, **kwargs)
      else:
        k, v = _project(params, x)
        out = _attend(q, k, v, implementation='einsum', **kwargs)
      return jnp.sum(jnp.sin(3.0 * out)), out

    (_, out), grads = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    )(q, x, params)
    return out, grads

  @parameterized.product(masks=('none', 'kv', 'both'), dropout=(0.0, 0.3))
  def test_matches_reference_forward_and_gradient(self, masks, dropout):
    q, x, params = _projection_inputs()
    q_mask, kv_mask = _masks(2, q.shape[1], x.shape[1])
    kwargs = {}
    if masks == 'both':
      kwargs['q_mask'] = q_mask
    if masks in ('kv', 'both'):
      kwargs['kv_mask'] = kv_mask
    if dropout:
      kwargs.update(dropout_prob=dropout, dropout_rng=jax.random.PRNGKey(7))
    want_out, want_grads = self._value_and_grads(False, q, x, params, **kwargs)
    out, grads = self._value_and_grads(True, q, x, params, **kwargs)
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=1e-5)
    for (path, got), want in zip(
      jax.tree_util.tree_leaves_with_path(grads),
      jax.tree.leaves(want_grads),
      strict=True,
    ):
      scale = float(jnp.max(jnp.abs(want)))
      np.testing.assert_allclose(
        got,
        want,
        atol=2e-5 * max(scale, 1.0),
        rtol=1e-4,
        err_msg=jax.tree_util.keystr(path),
      )
    if masks != 'none':
      # No key of batch element 1: zero output, no gradient to its inputs.
      np.testing.assert_array_equal(out[1], 0.0)
      np.testing.assert_array_equal(grads[1][1], 0.0)

  def _temp_bytes(self, grad):
    q = jax.ShapeDtypeStruct((1, 64, 1, 64), jnp.float32)
    x = jax.ShapeDtypeStruct((1, 65536, 8), jnp.float32)
    params = dict(k_w=jax.ShapeDtypeStruct((8, 64), jnp.float32))

    def project(p, x):
      k = jnp.tanh(x @ p['k_w'])[:, :, None, :]
      return k, k

    def forward(q, x, params):
      return chunked_attend.attend_projected(
        q, x, params, project, q_chunk_size=64, kv_chunk_size=1024
      )

    fn = forward
    if grad:
      fn = jax.grad(lambda *a: jnp.sum(jnp.sin(forward(*a))), argnums=(0, 1, 2))
    compiled = jax.jit(fn).lower(q, x, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  def test_never_holds_the_keys_and_values(self):
    keys_bytes = 65536 * 64 * 4  # 16 MiB; the inputs are 2 MiB.
    for grad in (False, True):
      self.assertLess(self._temp_bytes(grad), keys_bytes / 4)

  def test_bad_arguments(self):
    q, x, params = _projection_inputs()

    def run(q, x, **kwargs):
      kv = attend.KeyValueInputs(x, *params)
      return attend.attend(q, kv, runtime=CHUNKED, **kwargs)

    with self.assertRaisesRegex(ValueError, 'inputs must have shape'):
      run(q, x[0])
    with self.assertRaisesRegex(ValueError, 'kv_mask must have shape'):
      run(q, x, kv_mask=jnp.ones((2, 3)))
    with self.assertRaisesRegex(ValueError, 'needs dropout_rng'):
      run(q, x, dropout_prob=0.1)
    with self.assertRaisesRegex(ValueError, 'k_w must have shape'):
      run(q[:, :, :2], x)
    with self.assertRaisesRegex(ValueError, 'kv_project gives keys'):
      chunked_attend.attend_projected(q[:, :, :2], x, params, _project)


if __name__ == '__main__':
  absltest.main()
