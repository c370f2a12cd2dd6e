"""experiments.precision: `config.compute_dtype` in every experiment."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from masked_lm_test import TEXT

from configs import glue as glue_config
from configs import image_classification as image_config
from configs import masked_lm as masked_lm_config
from configs import optical_flow as flow_config
from experiments import masked_lm
from experiments import optical_flow
from experiments import precision
from perceiver_io import dense
from perceiver_io import layers


def _first_batch_loss(task):
  """The jitted training loss of the task's first batch."""
  params, state = task.model.init(
    jax.random.PRNGKey(0), is_training=True, **task.init_batch
  )
  # Noise, so that zero-initialised layers (the flow decoder's output) pass
  # their inputs' rounding on to the loss.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(
    treedef,
    [
      p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
      for p, k in zip(leaves, keys, strict=True)
    ],
  )
  batch = next(iter(task.train_batches(0)))
  loss_fn = jax.jit(task.loss_fn, static_argnums=4)
  loss, _ = loss_fn(params, state, batch, jax.random.PRNGKey(1), True)
  return loss


class ComputeDtypeTest(parameterized.TestCase):
  @parameterized.parameters(
    (masked_lm_config, 'local'),
    (flow_config, 'local'),
    (image_config, 'digits'),
    (glue_config, 'cola,tiny'),
  )
  def test_every_config_has_a_float32_default(self, module, arg):
    config = module.get_config(arg)
    self.assertEqual(config.compute_dtype, 'float32')
    self.assertEqual(precision.compute_dtype(config), jnp.float32)

  def test_names_the_bad_value(self):
    config = ml_collections.ConfigDict(dict(compute_dtype='float16'))
    with self.assertRaisesRegex(ValueError, "compute_dtype.*'float16'"):
      precision.compute_dtype(config)
    self.assertEqual(
      precision.compute_dtype(ml_collections.ConfigDict()), jnp.float32
    )

  def test_wrap_keeps_a_float32_model(self):
    model = object()
    config = ml_collections.ConfigDict(dict(compute_dtype='float32'))
    self.assertIs(precision.wrap(model, config), model)


class _Model:
  """x [2, 3] @ w [3, 1] through the attention layers' `dense`."""

  num_params = 3

  def apply(self, params, state, rng, *, x):
    del rng
    dtype = layers.LayerSpec(num_heads=1, qk_channels=1, v_channels=1).dtype
    out = dense.dense(x, params, None, dtype)
    return {'out': out, 'ids': jnp.zeros((2,), jnp.int32)}, state


class MixedPrecisionModelTest(absltest.TestCase):
  def test_apply_computes_in_bf16_and_returns_float32(self):
    config = ml_collections.ConfigDict(dict(compute_dtype='bfloat16'))
    model = precision.wrap(_Model(), config)
    self.assertIsInstance(model, precision.MixedPrecisionModel)
    self.assertEqual(model.num_params, 3)  # Attributes pass through.
    x = jnp.full((2, 3), 1.0 + 2.0**-10)  # Rounds to 1.0 in bf16.
    w = jnp.ones((3, 1))
    outputs, state = jax.jit(lambda w, x: model.apply(w, {'s': 1}, None, x=x))(
      w, x
    )
    self.assertEqual(outputs['out'].dtype, jnp.float32)
    self.assertEqual(outputs['ids'].dtype, jnp.int32)
    np.testing.assert_array_equal(outputs['out'], np.full((2, 1), 3.0))
    self.assertEqual(state, {'s': 1})
    plain, _ = _Model().apply(w, None, None, x=x)  # float32 outside.
    self.assertGreater(float(plain['out'][0, 0]), 3.0)


class ExperimentsTest(parameterized.TestCase):
  """A bf16 training loss is float32, close to the float32 one, not equal."""

  def _check(self, build_task, config):
    losses = {}
    for name in ('float32', 'bfloat16'):
      config.compute_dtype = name
      task = build_task(config)
      losses[name] = _first_batch_loss(task)
      self.assertEqual(losses[name].dtype, jnp.float32)
      self.assertTrue(np.isfinite(float(losses[name])))
    self.assertNotEqual(float(losses['float32']), float(losses['bfloat16']))
    np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.05)

  def test_masked_lm(self):
    path = self.create_tempfile('text.txt', content=TEXT * 20).full_path
    config = masked_lm_config.get_config('local,tiny')
    config.data.source = 'files'
    config.data.files = path
    config.data.holdout_fraction = 0.3
    self._check(masked_lm.build_task, config)

  def test_optical_flow(self):
    self._check(optical_flow.build_task, flow_config.get_config('tiny'))


if __name__ == '__main__':
  absltest.main()
