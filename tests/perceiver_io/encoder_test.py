"""The encoder: every loop and remat option equals DeepMind's formulation."""

import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import encoder as encoder_lib
from perceiver_io import runtime as runtime_lib
from perceiver_io.testing import reference

SIZES = dict(
  num_self_attends_per_block=2,
  num_blocks=3,
  z_index_dim=6,
  num_z_channels=16,
  num_cross_attend_heads=1,
  num_self_attend_heads=2,
  qk_channels=8,
)


def _with_runtime(cls, kwargs):
  """Runtime fields of `kwargs` (scan_blocks=...) as our encoder's `runtime`;
  DeepMind's formulation has none."""
  fields = {k: kwargs.pop(k) for k in list(kwargs) if k in runtime_lib.FIELDS}
  if cls is encoder_lib.PerceiverEncoder:
    kwargs['runtime'] = runtime_lib.Runtime(**fields)
  return kwargs


def _encoder(cls, input_mask=None, is_training=False, **kwargs):
  kwargs = _with_runtime(cls, kwargs)

  def fn(inputs):
    encoder = cls(**SIZES, **kwargs)
    return encoder(
      inputs,
      encoder.latents(inputs),
      is_training=is_training,
      input_mask=input_mask,
    )

  return hk.transform(fn)


def _inputs(batch=2, num_inputs=11, channels=5, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(
    rng.normal(size=(batch, num_inputs, channels)), jnp.float32
  )


def _random_params(params, seed=0):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      0.3 * jax.random.normal(key, leaf.shape) + leaf
      for key, leaf in zip(keys, leaves, strict=True)
    ],
  )


def _value_and_grads(model, params, inputs):
  def loss(params, inputs):
    return jnp.sum(jnp.sin(model.apply(params, None, inputs)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, inputs)


class EncoderTest(parameterized.TestCase):
  def test_parameters_are_deepminds(self):
    inputs = _inputs()
    ours = _encoder(encoder_lib.PerceiverEncoder).init(
      jax.random.PRNGKey(0), inputs
    )
    theirs = _encoder(reference.PerceiverEncoder).init(
      jax.random.PRNGKey(0), inputs
    )
    self.assertEqual(
      jax.tree.map(jnp.shape, ours), jax.tree.map(jnp.shape, theirs)
    )
    self.assertIn(
      'perceiver_encoder/~/self_attention_1/attention/linear_3', ours
    )
    self.assertIn('perceiver_encoder/~/cross_attention/layer_norm_2', ours)

  @parameterized.named_parameters(
    ('scan_blocks', dict()),
    ('unrolled', dict(scan_blocks=False)),
    ('scan_layers', dict(scan_layers=True)),
    ('remat_blocks', dict(remat_blocks=True)),
    ('remat_layers_scanned', dict(remat_layers=True, scan_layers=True)),
    ('chunked', dict(attention_impl='chunked')),
  )
  def test_matches_deepminds_formulation(self, options):
    inputs = _inputs()
    mask = jnp.array([[1] * 8 + [0] * 3, [0, 1] * 5 + [1]])
    ours = _encoder(encoder_lib.PerceiverEncoder, mask, **options)
    theirs = _encoder(reference.PerceiverEncoder, mask)
    params = _random_params(ours.init(jax.random.PRNGKey(0), inputs))
    got, (got_params, got_inputs) = _value_and_grads(ours, params, inputs)
    want, (want_params, want_inputs) = _value_and_grads(theirs, params, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(
      got_inputs,
      want_inputs,
      rtol=1e-4,
      atol=1e-5 * float(jnp.max(jnp.abs(want_inputs))),
    )
    scale = max(
      float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_params)
    )
    for (path, g), w in zip(
      jax.tree_util.tree_leaves_with_path(got_params),
      jax.tree.leaves(want_params),
      strict=True,
    ):
      np.testing.assert_allclose(
        g, w, atol=2e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path)
      )

  def test_masked_inputs_are_ignored(self):
    inputs = _inputs()
    mask = jnp.array([[1] * 8 + [0] * 3, [1] * 11])
    model = _encoder(encoder_lib.PerceiverEncoder, mask)
    params = model.init(jax.random.PRNGKey(0), inputs)
    changed = inputs.at[0, 8:].set(50.0)
    np.testing.assert_allclose(
      model.apply(params, None, inputs),
      model.apply(params, None, changed),
      atol=1e-6,
    )

  def test_program_does_not_grow_with_blocks(self):
    inputs = _inputs()

    def hlo_size(num_blocks, **options):
      sizes = dict(SIZES, num_blocks=num_blocks)
      options = _with_runtime(encoder_lib.PerceiverEncoder, options)

      def fn(inputs):
        encoder = encoder_lib.PerceiverEncoder(**sizes, **options)
        return encoder(inputs, encoder.latents(inputs), is_training=False)

      model = hk.transform(fn)
      params = model.init(jax.random.PRNGKey(0), inputs)
      grad = jax.grad(lambda p: jnp.sum(model.apply(p, None, inputs)))
      return len(jax.jit(grad).lower(params).as_text())

    self.assertLess(hlo_size(8), 1.2 * hlo_size(2))
    self.assertGreater(
      hlo_size(8, scan_blocks=False), 2 * hlo_size(2, scan_blocks=False)
    )

  def test_dropout_differs_per_layer_and_rng(self):
    inputs = _inputs()
    model = _encoder(
      encoder_lib.PerceiverEncoder,
      is_training=True,
      dropout_prob=0.2,
      dropout_attn_prob=0.2,
    )
    params = model.init(jax.random.PRNGKey(0), inputs)
    apply = jax.jit(model.apply)
    a = apply(params, jax.random.PRNGKey(1), inputs)
    b = apply(params, jax.random.PRNGKey(2), inputs)
    self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-3)
    np.testing.assert_array_equal(
      a, apply(params, jax.random.PRNGKey(1), inputs)
    )

  @parameterized.named_parameters(
    ('rank', dict(inputs=(2, 11)), r'\[B, M, C\]'),
    ('mask', dict(mask=(2, 10)), 'input_mask must have shape'),
  )
  def test_bad_inputs(self, shapes, message):
    inputs = jnp.zeros(shapes.get('inputs', (2, 11, 5)))
    mask = jnp.ones(shapes['mask']) if 'mask' in shapes else None
    with self.assertRaisesRegex(ValueError, message):
      _encoder(encoder_lib.PerceiverEncoder, mask).init(
        jax.random.PRNGKey(0), inputs
      )

  def test_bad_constructor_arguments(self):
    for kwargs, message in (
      (dict(num_blocks=0), 'num_blocks must be positive'),
      (dict(num_self_attend_heads=3), 'divisible by num_self_attend_heads'),
      (dict(compute_dtype='float64'), 'runtime.compute_dtype'),
      (dict(attention_impl='flash'), 'runtime.attention_impl'),
    ):
      with self.assertRaisesRegex(ValueError, message):
        hk.transform(
          lambda kwargs=kwargs: encoder_lib.PerceiverEncoder(
            **_with_runtime(encoder_lib.PerceiverEncoder, dict(SIZES, **kwargs))
          )
        ).init(None)
    with self.assertRaisesRegex(TypeError, 'runtime must be'):
      hk.transform(
        lambda: encoder_lib.PerceiverEncoder(**SIZES, runtime='einsum')
      ).init(None)


class ReferenceModuleTest(absltest.TestCase):
  def test_imports_neither_tensorflow_nor_torch(self):
    # A fresh interpreter: this one may already hold them from other tests.
    code = (
      'import sys\n'
      'import perceiver_io.testing.reference\n'
      "print(sorted({'tensorflow', 'torch'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      check=True,
      timeout=120,
    )
    self.assertEqual(out.stdout.strip(), '[]')


if __name__ == '__main__':
  absltest.main()
