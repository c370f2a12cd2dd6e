"""experiments.forecasting.model: quantile order, masks, queries at any time."""

import jax
import numpy as np
from absl.testing import absltest

from configs import forecasting as forecasting_config
from experiments.forecasting import model as model_lib
from experiments.forecasting import train


def _batch(rng, b=2, m=10, h=5, p=2):
  return {
    'x_time': np.sort(-rng.random((b, m)), 1).astype(np.float32),
    'x_value': rng.normal(size=(b, m)).astype(np.float32),
    'x_phase': rng.random((b, m, p)).astype(np.float32),
    'x_channel': rng.integers(0, 3, (b, m)).astype(np.int32),
    'x_mask': np.ones((b, m), np.int32),
    'q_time': rng.random((b, h)).astype(np.float32),
    'q_phase': rng.random((b, h, p)).astype(np.float32),
    'q_channel': rng.integers(0, 3, (b, h)).astype(np.int32),
    'q_mask': np.ones((b, h), np.int32),
    'period': np.tile(
      np.array([0.3, 0.0][:p] + [0.45] * (p - 2), np.float32), (b, 1)
    ),
    'half_step': np.full(b, 0.05, np.float32),
  }


def _model(**overrides):
  kwargs = dict(
    num_channels=3,
    quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
    num_latents=4,
    latent_channels=16,
    num_self_attends=1,
    num_heads=2,
    num_time_bands=3,
    num_harmonics=2,
    seasonal_lags=True,
  )
  kwargs.update(overrides)
  return model_lib.Model(tuple(sorted(kwargs.items())))


class ForecasterTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)
    self.batch = _batch(self.rng)
    self.model = _model()
    self.params, self.state = self.model.init(
      jax.random.PRNGKey(0), **self.batch
    )
    # Random, not initial, output weights: the quantile gaps are not all
    # equal.
    self.params = jax.tree.map(
      lambda x: x + 0.3 * np.random.default_rng(1).normal(size=x.shape),
      self.params,
    )

  def apply(self, batch):
    apply = jax.jit(lambda p, s, b: self.model.apply(p, s, None, **b)[0])
    return np.asarray(apply(self.params, self.state, batch))

  def test_quantiles_are_ordered(self):
    out = self.apply(self.batch)
    self.assertEqual(out.shape, (2, 5, 5))
    self.assertTrue(np.all(np.diff(out, axis=-1) >= 0))
    self.assertGreater(float(np.min(np.diff(out, axis=-1))), 0)

  def test_ordered_quantiles_keeps_the_median(self):
    raw = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    out = np.asarray(model_lib.ordered_quantiles(raw, 2))
    np.testing.assert_array_equal(out[..., 2], raw[..., 2])
    self.assertTrue(np.all(np.diff(out, axis=-1) > 0))

  def test_a_masked_observation_is_the_same_as_an_absent_one(self):
    masked = {k: v.copy() for k, v in self.batch.items()}
    masked['x_mask'][:, 3] = 0
    masked['x_value'][:, 3] = 1e6  # Whatever it holds, it is not read.
    masked['x_time'][:, 3] = 7.0
    removed = {
      k: np.delete(v, 3, axis=1) if k.startswith('x_') else v
      for k, v in self.batch.items()
    }
    np.testing.assert_allclose(
      self.apply(masked), self.apply(removed), rtol=1e-5, atol=1e-5
    )
    # And the observation does matter when present.
    self.assertGreater(
      np.abs(self.apply(self.batch) - self.apply(removed)).max(), 1e-4
    )

  def test_seasonal_lags_read_unmasked_observations_whole_periods_back(self):
    # Steps of 0.1; period 0.4 (four steps). Query at 0.05, between steps:
    # k * 0.4 back are -0.35 and -0.75, hitting the tokens at -0.4 and -0.8
    # (within half a step, 0.05).
    x_time = np.arange(-1.0, 0.0, 0.1, dtype=np.float32)[None]  # 10 tokens
    x_value = np.arange(10, dtype=np.float32)[None]
    inputs = {'x_time': x_time, 'x_value': x_value, 'x_mask': np.ones((1, 10))}
    queries = {
      'q_time': np.array([[0.0, 0.04, 0.2]], np.float32),
      'period': np.array([[0.4, 0.0]], np.float32),
      'half_step': np.array([0.05], np.float32),
    }
    lags = np.asarray(model_lib.seasonal_lags(inputs, queries))
    self.assertEqual(lags.shape, (1, 3, 6))
    # q = 0: -0.4 (index 6) and -0.8 (index 2).
    np.testing.assert_allclose(lags[0, 0], [6, 4, 1, 0, 0, 0], atol=1e-6)
    # q = 0.04, between steps: still -0.4 and -0.8 (0.04 off, within 0.05).
    np.testing.assert_allclose(lags[0, 1], [6, 4, 1, 0, 0, 0], atol=1e-6)
    # q = 0.2: -0.2 (index 8), -0.6 (index 4), -1.0 (index 0).
    np.testing.assert_allclose(lags[0, 2], [8, 4, 1, 0, 0, 0], atol=1e-6)
    # Masking the most recent one falls back to the next period back.
    inputs['x_mask'] = np.ones((1, 10))
    inputs['x_mask'][0, 6] = 0
    lags = np.asarray(model_lib.seasonal_lags(inputs, queries))
    np.testing.assert_allclose(lags[0, 0, :3], [2, 2, 1], atol=1e-6)
    inputs['x_mask'][0, 2] = 0
    lags = np.asarray(model_lib.seasonal_lags(inputs, queries))
    np.testing.assert_allclose(lags[0, 0, :3], [0, 0, 0], atol=1e-6)

  def test_queries_at_any_times_are_answered_independently(self):
    # Between and beyond the steps, in any order: each query's forecast is
    # the same alone as among others.
    batch = dict(self.batch)
    batch['q_time'] = np.array(
      [[0.013, 0.5, 0.0021, 2.7, 0.25]] * 2, np.float32
    )
    together = self.apply(batch)
    for j in range(5):
      alone = dict(batch)
      for key in ('q_time', 'q_phase', 'q_channel', 'q_mask'):
        alone[key] = batch[key][:, j : j + 1]
      np.testing.assert_allclose(
        self.apply(alone)[:, 0], together[:, j], rtol=1e-5, atol=1e-5
      )
    self.assertTrue(np.all(np.isfinite(together)))

  def test_bad_inputs_are_named(self):
    batch = dict(self.batch)
    del batch['x_mask']
    with self.assertRaisesRegex(ValueError, "lack 'x_mask'"):
      self.model.apply(self.params, self.state, None, **batch)
    bad = dict(self.batch, q_phase=self.batch['q_phase'][..., :1])
    with self.assertRaisesRegex(ValueError, 'same phases'):
      self.model.apply(self.params, self.state, None, **bad)
    with self.assertRaisesRegex(ValueError, 'must include 0.5'):
      _model(quantiles=(0.1, 0.9)).init(jax.random.PRNGKey(0), **self.batch)
    with self.assertRaisesRegex(ValueError, 'increasing'):
      _model(quantiles=(0.5, 0.1)).init(jax.random.PRNGKey(0), **self.batch)

  def test_unknown_config_keys_are_named(self):
    config = forecasting_config.get_config('local,tiny')
    config.model.num_latent = 3
    with self.assertRaisesRegex(ValueError, "'num_latent'"):
      train.build_model(config)
    config = forecasting_config.get_config('local,tiny')
    config.data.series.co2.horizn = 3
    with self.assertRaisesRegex(ValueError, "series.co2 key 'horizn'"):
      train.series_specs(config)
    config = forecasting_config.get_config('local,tiny')
    config.data.datasets = ('co2', 'gasoline')
    with self.assertRaisesRegex(ValueError, "'gasoline'"):
      train.series_specs(config)


if __name__ == '__main__':
  absltest.main()
