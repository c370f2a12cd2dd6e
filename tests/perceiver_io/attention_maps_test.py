"""attention_maps.capture: the weights of a layer, the model unchanged."""

import haiku as hk
import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import parity_test
from perceiver_io import attention_maps
from perceiver_io import attention_plots
from perceiver_io import models

CASES = (
  ('imagenet_fourier_small', models.IMAGENET_FOURIER),
  ('language_small', models.LANGUAGE),
)
ENCODER = 'perceiver_encoder/~/cross_attention'


def _setup(case, name):
  description, params, state, inputs, _ = parity_test.load_case(case)
  config = parity_test.config_for_case(name, description)
  return config, params, state, parity_test.model_inputs(name, inputs)


def _with_maps(name, config, layer='cross_attention'):
  return attention_maps.transform_with_maps(name, config, layer)


def _layer_norm(x, scale, offset):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * scale + offset


def _reference(params, x_q, x_kv, heads, kv_mask=None):
  """The encoder's cross-attention weights in numpy, from DeepMind's names."""
  p = {k[len(ENCODER) + 1 :]: v for k, v in params.items() if ENCODER in k}
  q = _layer_norm(x_q, p['layer_norm']['scale'], p['layer_norm']['offset'])
  q = q @ p['attention/linear']['w'] + p['attention/linear']['b']
  k = _layer_norm(x_kv, p['layer_norm_1']['scale'], p['layer_norm_1']['offset'])
  k = k @ p['attention/linear_1']['w'] + p['attention/linear_1']['b']
  b, n, c = q.shape
  q = q.reshape(b, n, heads, c // heads)
  k = k.reshape(b, k.shape[1], heads, c // heads)
  logits = np.einsum('bnhd,bmhd->bhnm', q, k) / np.sqrt(c // heads)
  if kv_mask is not None:
    logits = np.where(kv_mask[:, None, None, :] != 0, logits, -1e30)
  logits -= logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


class AttentionMapsTest(parameterized.TestCase):
  @parameterized.parameters(*CASES)
  def test_outputs_and_params_unchanged_weights_sum_to_one(self, case, name):
    config, params, state, inputs = _setup(case, name)
    plain = models.build(name, config)
    expected, _ = jax.jit(plain.apply)(params, state, None, **inputs)
    captured = _with_maps(name, config)
    (outputs, maps), _ = jax.jit(captured.apply)(params, state, None, **inputs)
    jax.tree.map(np.testing.assert_array_equal, outputs, expected)
    # Capture creates no parameters and changes none at init.
    init_plain, _ = plain.init(jax.random.PRNGKey(0), **inputs)
    init_captured, _ = captured.init(jax.random.PRNGKey(0), **inputs)
    jax.tree.map(np.testing.assert_array_equal, init_captured, init_plain)
    self.assertIn(ENCODER, maps)
    for weights in maps.values():
      self.assertEqual(weights.ndim, 4)
      np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
      self.assertGreaterEqual(float(weights.min()), 0.0)

  def test_encoder_weights_equal_reference(self):
    # Capture the encoder's inputs too: the latents and the byte embeddings.
    config, params, state, inputs = _setup('language_small', models.LANGUAGE)
    forward = models.build_forward_fn(models.LANGUAGE, config)
    seen = {}

    def grab(next_f, args, kwargs, context):
      name = getattr(context.module, 'module_name', '')
      if name == ENCODER and context.method_name == '__call__':
        seen['x_q'], seen['x_kv'] = args[0], args[1]
      return next_f(*args, **kwargs)

    def fn(**inputs):
      with (
        hk.intercept_methods(grab),
        attention_maps.capture(ENCODER) as maps,
      ):
        forward(is_training=False, **inputs)
      return maps, dict(seen)

    (maps, seen_inputs), _ = jax.jit(hk.transform_with_state(fn).apply)(
      params, state, None, **inputs
    )
    self.assertEqual(list(maps), [ENCODER])
    got = np.asarray(maps[ENCODER])
    heads = got.shape[1]
    want = _reference(
      params,
      np.asarray(seen_inputs['x_q'], np.float64),
      np.asarray(seen_inputs['x_kv'], np.float64),
      heads,
      np.asarray(inputs['input_mask']),
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Padding bytes get no weight.
    mask = np.asarray(inputs['input_mask'])
    padded = np.broadcast_to(mask[:, None, None, :] == 0, got.shape)
    self.assertTrue(padded.any())
    np.testing.assert_array_less(got[padded], 1e-6)

  def test_plots_write_pngs(self):
    import matplotlib.image

    tmp = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    w = rng.random((2, 5, 36))
    w /= w.sum(-1, keepdims=True)
    attention_plots.image_grid(rng.random((6, 6, 3)), w, [0, 3], f'{tmp}/i.png')
    attention_plots.text_heat_map(b'a' * 36, w, [1, 2], f'{tmp}/t.png')
    for f in ('i.png', 't.png'):
      self.assertGreater(matplotlib.image.imread(f'{tmp}/{f}').shape[1], 100)


if __name__ == '__main__':
  absltest.main()
