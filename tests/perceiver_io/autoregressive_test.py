"""Tests of perceiver_io.autoregressive (Perceiver AR)."""

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver_io import autoregressive
from perceiver_io import runtime as runtime_lib


def _model(impl):
  runtime = runtime_lib.Runtime(
    attention_impl=impl, q_chunk_size=3, kv_chunk_size=5
  )

  def forward(tokens, num_latents):
    model = autoregressive.PerceiverAR(
      max_context=32,
      channels=16,
      num_heads=2,
      num_layers=2,
      zero_init_output=False,
      runtime=runtime,
    )
    return model(tokens, num_latents)

  return hk.without_apply_rng(hk.transform(forward))


@pytest.mark.parametrize('impl', ['einsum', 'dot_product', 'chunked'])
def test_future_bytes_change_no_earlier_logit(impl):
  model = _model(impl)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 24), 0, 256)
  params = model.init(jax.random.PRNGKey(1), tokens, 8)
  base = model.apply(params, tokens, 8)  # rows predict tokens 17..24
  changed = tokens.at[:, 20].set((tokens[:, 20] + 1) % 256)
  out = model.apply(params, changed, 8)
  # Row i sits at position 16 + i: rows 0..3 see positions <= 19 only.
  np.testing.assert_array_equal(np.asarray(base[:, :4]), np.asarray(out[:, :4]))
  assert not np.allclose(np.asarray(base[:, 4:]), np.asarray(out[:, 4:]))


def test_num_latents_chosen_at_call_time():
  model = _model('einsum')
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, 24), 0, 256)
  params = model.init(jax.random.PRNGKey(1), tokens, 8)
  for n in (2, 8, 24):
    assert model.apply(params, tokens, n).shape == (1, n, 256)
