"""The causal mask (`causal_offset`) of every `attend` kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import attend as attend_lib


def _reference(q, k, v, offset):
  logits = jnp.einsum('bnhd,bmhd->bhnm', q, k) / np.sqrt(q.shape[-1])
  n, m = q.shape[1], k.shape[1]
  seen = jnp.arange(m)[None, :] <= jnp.arange(n)[:, None] + offset
  logits = jnp.where(seen, logits, -1e30)
  out = jnp.einsum('bhnm,bmhd->bnhd', jax.nn.softmax(logits, -1), v)
  return out.reshape(out.shape[0], n, -1)


def _inputs(n, m):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(keys[0], (2, n, 2, 8))
  k = jax.random.normal(keys[1], (2, m, 2, 8))
  v = jax.random.normal(keys[2], (2, m, 2, 8))
  return q, k, v


RUNTIMES = {
  'einsum': runtime_lib.Runtime(attention_impl='einsum'),
  'dot_product': runtime_lib.Runtime(attention_impl='dot_product'),
  'chunked': runtime_lib.Runtime(
    attention_impl='chunked', q_chunk_size=3, kv_chunk_size=5
  ),
}


@pytest.mark.parametrize('impl', sorted(RUNTIMES))
def test_matches_reference_and_grads(impl):
  q, k, v = _inputs(7, 19)
  offset = 12

  def f(q, k, v):
    out = attend_lib.attend(
      q, (k, v), causal_offset=offset, runtime=RUNTIMES[impl]
    )
    return out, jnp.sum(jnp.sin(out))

  out, _ = f(q, k, v)
  np.testing.assert_allclose(out, _reference(q, k, v, offset), atol=1e-5)
  grads = jax.grad(lambda *a: f(*a)[1], argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(
    lambda *a: jnp.sum(jnp.sin(_reference(*a, offset))), argnums=(0, 1, 2)
  )(q, k, v)
  for g, r in zip(grads, ref, strict=True):
    np.testing.assert_allclose(g, r, atol=1e-4)


@pytest.mark.parametrize('impl', sorted(RUNTIMES))
def test_future_keys_change_nothing_earlier(impl):
  q, k, v = _inputs(7, 19)
  offset = 12
  out = attend_lib.attend(
    q, (k, v), causal_offset=offset, runtime=RUNTIMES[impl]
  )
  k2 = k.at[:, 16].add(3.0)
  v2 = v.at[:, 16].add(3.0)
  out2 = attend_lib.attend(
    q, (k2, v2), causal_offset=offset, runtime=RUNTIMES[impl]
  )
  # Query i sees keys <= 12 + i: queries 0..3 never see key 16.
  np.testing.assert_array_equal(out[:, :4], out2[:, :4])
  assert not np.allclose(out[:, 4:], out2[:, 4:])
