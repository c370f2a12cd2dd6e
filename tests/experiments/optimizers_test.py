"""Tests of the optimizer factory, weight-decay masks and schedules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from experiments import config_utils
from experiments import optimizers


def _config(**schedule):
  config = ml_collections.ConfigDict()
  config_utils.add_trainer_fields(config, batch_size=1024)
  config.schedule.update(schedule)
  return config


def _params():
  rs = np.random.RandomState(0)
  return {
    'encoder/~/self_attention/attention/linear': {
      'w': jnp.asarray(rs.randn(4, 3), jnp.float32),
      'b': jnp.asarray(rs.randn(3), jnp.float32),
    },
    'encoder/~/self_attention/layer_norm': {
      'scale': jnp.ones(3),
      'offset': jnp.zeros(3),
    },
    'image_preprocessor/~/conv2_d_downsample/~/batchnorm': {
      'scale': jnp.ones(3),
      'offset': jnp.zeros(3),
    },
    'encoder/~/trainable_position_encoding': {
      'pos_embs': jnp.asarray(rs.randn(2, 3), jnp.float32),
    },
    'embedding_decoder': {'bias': jnp.zeros(3)},
  }


class WeightDecayMaskTest(parameterized.TestCase):
  @parameterized.parameters(True, False)
  def test_mask(self, decay_pos_embs):
    mask = optimizers.weight_decay_mask(_params(), decay_pos_embs)
    self.assertEqual(
      mask,
      {
        'encoder/~/self_attention/attention/linear': {'w': True, 'b': False},
        'encoder/~/self_attention/layer_norm': {
          'scale': False,
          'offset': False,
        },
        'image_preprocessor/~/conv2_d_downsample/~/batchnorm': {
          'scale': False,
          'offset': False,
        },
        'encoder/~/trainable_position_encoding': {'pos_embs': decay_pos_embs},
        'embedding_decoder': {'bias': False},
      },
    )


class OptimizerTest(parameterized.TestCase):
  def _run(self, tx, params, steps=3):
    state = tx.init(params)
    rs = np.random.RandomState(1)
    for _ in range(steps):
      grads = jax.tree.map(
        lambda p: jnp.asarray(rs.randn(*p.shape), jnp.float32), params
      )
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  def test_lamb_matches_optax_lamb_with_mask(self):
    config = _config(name='constant', base_lr=1e-2, scale_by_batch=False)
    config.optimizer.max_grad_norm = 0.0
    ours, state = self._run(optimizers.build_optimizer(config, 10), _params())
    reference = optax.lamb(
      1e-2,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.1,
      mask=optimizers.weight_decay_mask,
    )
    expected, _ = self._run(reference, _params())
    for a, b in zip(
      jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    self.assertAlmostEqual(
      float(optimizers.current_learning_rate(state)), 1e-2, places=7
    )

  def test_adamw_matches_optax_adamw(self):
    config = _config(name='constant', base_lr=1e-3, scale_by_batch=False)
    config.optimizer.update(
      dict(name='adamw', max_grad_norm=0.0, eps=1e-8, weight_decay=0.05)
    )
    ours, _ = self._run(optimizers.build_optimizer(config, 10), _params())
    reference = optax.adamw(
      1e-3, eps=1e-8, weight_decay=0.05, mask=optimizers.weight_decay_mask
    )
    expected, _ = self._run(reference, _params())
    for a, b in zip(
      jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  def test_clipping_comes_first(self):
    config = _config(name='constant', base_lr=1e-2, scale_by_batch=False)
    config.optimizer.update(
      dict(name='adamw', weight_decay=0.0, max_grad_norm=1.0)
    )
    tx = optimizers.build_optimizer(config, 10)
    params = {'w': jnp.ones(4)}
    state = tx.init(params)
    big = {'w': jnp.full(4, 100.0)}
    _, state = tx.update(big, state, params)
    adam_state = state[1]
    # Adam's first moment saw the clipped gradient (norm 1), not 100s.
    np.testing.assert_allclose(adam_state.mu['w'], 0.1 * 0.5, rtol=1e-5)

  def test_unknown_optimizer(self):
    config = _config()
    config.optimizer.name = 'sgd'
    with self.assertRaisesRegex(ValueError, "Unknown optimizer 'sgd'"):
      optimizers.build_optimizer(config, 10)


class ScheduleTest(parameterized.TestCase):
  def test_paper_imagenet_schedule(self):
    # 5e-4 x 1024 / 256 = 2e-3, flat for half, then cosine to 0.
    schedule = optimizers.build_schedule(_config(), 1000)
    self.assertAlmostEqual(float(schedule(0)), 2e-3, places=9)
    self.assertAlmostEqual(float(schedule(499)), 2e-3, places=9)
    self.assertAlmostEqual(float(schedule(750)), 1e-3, places=6)
    self.assertAlmostEqual(float(schedule(1000)), 0.0, places=9)
    values = [float(schedule(s)) for s in range(500, 1001, 50)]
    self.assertEqual(values, sorted(values, reverse=True))

  def test_warmup_cosine_with_epochs(self):
    config = _config(
      name='warmup_cosine',
      base_lr=1e-3,
      scale_by_batch=False,
      warmup_epochs=2.0,
      end_value=1e-5,
    )
    config.batch_size = 100
    # 2 epochs of 500 examples at batch 100 = 10 warmup steps.
    schedule = optimizers.build_schedule(config, 110, num_train_examples=500)
    self.assertEqual(float(schedule(0)), 0.0)
    self.assertAlmostEqual(float(schedule(5)), 5e-4, places=7)
    self.assertAlmostEqual(float(schedule(10)), 1e-3, places=7)
    self.assertAlmostEqual(float(schedule(110)), 1e-5, places=7)

  def test_scale_by_batch(self):
    config = _config(name='constant', base_lr=1e-3, scale_by_batch=True)
    config.batch_size = 512
    self.assertAlmostEqual(
      float(optimizers.build_schedule(config, 10)(3)), 2e-3, places=8
    )

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'Unknown schedule'):
      optimizers.build_schedule(_config(name='linear'), 10)
    with self.assertRaisesRegex(ValueError, 'Warmup .* shorter'):
      optimizers.build_schedule(_config(warmup_steps=20), 10)
    with self.assertRaisesRegex(ValueError, 'only one of warmup_steps'):
      optimizers.build_schedule(
        _config(warmup_steps=2, warmup_epochs=1.0), 10, 100
      )


if __name__ == '__main__':
  absltest.main()
