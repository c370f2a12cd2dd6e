"""experiments.forecasting data, windows, metrics and baselines."""

import numpy as np
from absl.testing import absltest

from experiments.forecasting import baselines
from experiments.forecasting import data
from experiments.forecasting import metrics
from experiments.forecasting import windows

SPEC = data.Spec(
  context=8, horizon=3, test_length=6, origin_stride=3, season_lengths=(4,)
)


def _series(length=40, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(length)
  values = 10 + np.sin(2 * np.pi * t / 4) + 0.1 * rng.normal(size=length)
  return data.Series('toy', values, '2020-01-01', 'D')


class DataTest(absltest.TestCase):
  def test_bundled_series_load(self):
    for name, length in (('electricity', 4032), ('co2', 2284), ('wine', 176)):
      series = data.load(name)
      self.assertLen(series.values, length)
      self.assertLen(data.days(series), length)
    self.assertEqual(int(np.isnan(data.load('co2').values).sum()), 59)
    with self.assertRaisesRegex(ValueError, "'gasoline'"):
      data.load('gasoline')

  def test_origins_lie_in_the_held_out_part(self):
    series = _series()
    np.testing.assert_array_equal(data.origins(series, SPEC), [34, 37])
    self.assertEqual(data.train_end(series, SPEC), 34)
    self.assertEmpty(data.calibration_origins(series, SPEC))

  def test_the_calibration_part_precedes_the_test_and_is_not_trained(self):
    series = _series()
    spec = data.Spec(8, 3, 6, 3, (4,), calibration_length=9)
    np.testing.assert_array_equal(data.origins(series, spec), [34, 37])
    self.assertEqual(data.test_start(series, spec), 34)
    self.assertEqual(data.train_end(series, spec), 25)
    # Targets [o, o + 3) of each lie in [25, 34).
    np.testing.assert_array_equal(
      data.calibration_origins(series, spec), [25, 28, 31]
    )
    # The MASE scale does not move with the calibration part.
    self.assertEqual(
      data.mase_scale(series, spec), data.mase_scale(series, SPEC)
    )
    with self.assertRaisesRegex(ValueError, 'calibration_length=2 must be'):
      data.check(series, data.Spec(8, 3, 6, 3, (4,), calibration_length=2))
    with self.assertRaisesRegex(ValueError, 'calibration_length \\(30\\)'):
      data.check(series, data.Spec(8, 3, 6, 3, (4,), calibration_length=30))

  def test_mase_scale_is_the_in_sample_seasonal_naive_error(self):
    values = np.array([1.0, 2, 4, 8, 16, np.nan, 5, 6, 7, 9, 0, 0, 0])
    series = data.Series('s', values, '2020-01-01', 'D')
    spec = data.Spec(2, 1, 3, 1, (3,))
    # Training part: values[:10]; pairs (t, t - 3) without the NaN.
    pairs = [abs(8 - 1), abs(16 - 2), abs(5 - 8), abs(6 - 16), abs(9 - 5)]
    self.assertAlmostEqual(data.mase_scale(series, spec), np.mean(pairs))

  def test_specs_that_do_not_fit_are_named(self):
    series = _series(20)
    with self.assertRaisesRegex(ValueError, 'horizon=7 exceeds test_length'):
      data.check(series, data.Spec(4, 7, 6, 1, (4,)))
    with self.assertRaisesRegex(ValueError, 'are needed'):
      data.check(series, data.Spec(16, 3, 6, 1, (4,)))
    with self.assertRaisesRegex(ValueError, 'season_lengths'):
      data.check(series, data.Spec(4, 3, 6, 1, (9,)))

  def test_interpolation_and_thinning(self):
    np.testing.assert_allclose(
      data.interpolate(np.array([np.nan, 1.0, np.nan, 3.0, np.nan])),
      [1, 1, 2, 3, 3],
    )
    thinned = data.thin(np.ones(10_000), 0.5, np.random.default_rng(0))
    self.assertAlmostEqual(np.isnan(thinned).mean(), 0.5, delta=0.02)


class WindowTest(absltest.TestCase):
  def test_nothing_after_the_origin_reaches_the_inputs(self):
    series = _series()
    changed = series.values.copy()
    changed[30:] = 1e9
    kwargs = dict(
      channel=1, phases=('day', 'week'), max_context=8, max_horizon=3
    )
    days = data.days(series)
    a = windows.window(series.values, days, 30, 8, days[30:33], **kwargs)
    b = windows.window(changed, days, 30, 8, days[30:33], **kwargs)
    for key in a:  # Inputs, queries, loc and scale.
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)

  def test_window_features_and_scaling(self):
    values = np.array([1.0, np.nan, 3.0, 5.0, 7.0])
    days = np.arange(5.0) + 0.25
    w = windows.window(
      values,
      days,
      4,
      4,
      np.array([4.25, 4.75]),
      channel=2,
      phases=('day', 'week'),
      max_context=6,
      max_horizon=3,
      targets=np.array([9.0, np.nan]),
    )
    known = np.array([1.0, 3.0, 5.0])
    self.assertAlmostEqual(float(w['loc']), known.mean(), places=5)
    self.assertAlmostEqual(float(w['scale']), known.std(), places=5)
    np.testing.assert_array_equal(w['x_mask'], [0, 0, 1, 0, 1, 1])
    # The history spans [-1, 0) in units of context steps; queries from 0.
    np.testing.assert_allclose(w['x_time'][2:], [-1, -0.75, -0.5, -0.25])
    np.testing.assert_allclose(w['q_time'], [0, 0.125, 0])
    np.testing.assert_allclose(w['x_phase'][2:, 0], 0.25)  # Time of day.
    np.testing.assert_array_equal(w['q_mask'], [1, 0, 0])
    self.assertAlmostEqual(
      float(w['y'][0]), (9 - known.mean()) / known.std(), places=5
    )
    only_week = windows.phase_features(days, ('day', 'week'), ('week',))
    np.testing.assert_array_equal(only_week[:, 0], 0)

  def test_a_history_without_observations_is_an_error(self):
    with self.assertRaisesRegex(ValueError, 'no observed value'):
      windows.scaling(np.array([np.nan, np.nan]))
    with self.assertRaisesRegex(ValueError, "Unknown phase 'month'"):
      windows.check_phases(('day', 'month'))


class MetricsTest(absltest.TestCase):
  def test_sums_match_a_hand_computation(self):
    y = np.array([[10.0, 20.0, 30.0]])
    median = np.array([[12.0, 20.0, 0.0]])
    low, high = median - 1, median + 1
    mask = np.array([[1.0, 1.0, 0.0]])
    out = metrics.sums(
      np, low, median, high, y, mask, np.array([2.0]), (0.1, 0.5, 0.9)
    )
    self.assertAlmostEqual(out['mase'][0], 2 / 2 + 0)
    self.assertAlmostEqual(out['smape'][0], 200 * 2 / 22)
    # Point 1: y=10 under low=11, median=12, high=13: (1 - 0.1) * 1 +
    # (1 - 0.5) * 2 + (1 - 0.9) * 3; point 2: y=20 -> 0.1 * 1 + 0 + 0.1 * 1.
    pinball = (0.9 * 1 + 0.5 * 2 + 0.1 * 3) + (0.1 + 0.1)
    self.assertAlmostEqual(out['pinball'][0], pinball / (3 * 2))
    self.assertAlmostEqual(out['coverage'][0], 1.0)
    self.assertAlmostEqual(out['points'][0], 2.0)
    final = metrics.finalize({k: v[0] for k, v in out.items()})
    self.assertAlmostEqual(final['coverage'], 0.5)
    self.assertAlmostEqual(final['mase'], 0.5)

  def test_calibration_picks_the_smallest_factor_reaching_the_target(self):
    factors = np.asarray(metrics.FACTORS)
    covered = 100 * np.minimum(1.0, 0.5 * factors)  # Coverage 0.5 c.
    # Target 0.8 * (1 + 1/100) = 0.808: c = 1.65 is the first to reach it.
    self.assertEqual(
      metrics.FACTORS[metrics.calibrate(covered, 100, 0.8)], 1.65
    )
    self.assertEqual(metrics.FACTORS[metrics.calibrate(covered, 0, 0.8)], 1.0)
    never = np.zeros(len(factors))
    self.assertEqual(metrics.FACTORS[metrics.calibrate(never, 10, 0.8)], 4.0)


class BaselinesTest(absltest.TestCase):
  def test_seasonal_naive_repeats_the_last_season(self):
    series = _series()
    origins = data.origins(series, SPEC)
    f = baselines.forecast(series.values, origins, SPEC, 'seasonal_naive', 0.8)
    for row, origin in enumerate(origins):
      np.testing.assert_allclose(
        f['median'][row], series.values[origin - 4 : origin - 1]
      )
      self.assertTrue(np.all(f['low'][row] < f['median'][row]))

  def test_theta_is_cached_and_reads_only_the_past(self):
    series = _series()
    origins = data.origins(series, SPEC)
    cache = self.create_tempdir().full_path
    f = baselines.forecast(
      series.values, origins, SPEC, 'autotheta', 0.8, cache_dir=cache
    )
    again = baselines.forecast(
      series.values, origins, SPEC, 'autotheta', 0.8, cache_dir=cache
    )
    np.testing.assert_array_equal(f['median'], again['median'])
    # The future changed: the forecast from the first origin is not.
    changed = series.values.copy()
    changed[origins[0] :] += 100
    g = baselines.forecast(changed, origins[:1], SPEC, 'autotheta', 0.8)
    np.testing.assert_allclose(g['median'][0], f['median'][0])
    with self.assertRaisesRegex(ValueError, "Unknown baseline 'prophet'"):
      baselines.check_methods(('prophet',))


if __name__ == '__main__':
  absltest.main()
