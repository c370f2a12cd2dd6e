"""experiments.forecasting: training, resume, eval keys, report, CSV command."""

import dataclasses
import os
import tempfile

import numpy as np
import pandas as pd
import preemption
from absl.testing import absltest

from configs import forecasting as forecasting_config
from experiments import metrics_writer
from experiments import runs
from experiments import trainer
from experiments.forecasting import forecast
from experiments.forecasting import metrics
from experiments.forecasting import report
from experiments.forecasting import train


def tiny_config(cache_dir):
  config = forecasting_config.get_config('local,tiny')
  config.data.baseline_cache_dir = cache_dir
  config.checkpoint_async = False
  return config


def _no_perf(records):
  return [
    {k: v for k, v in r.items() if not k.startswith('perf/')} for r in records
  ]


def write_csv(path, length=60, bad=None):
  times = pd.date_range('2024-03-01', periods=length, freq='h')
  values = 50 + 10 * np.sin(2 * np.pi * np.arange(length) / 24)
  frame = pd.DataFrame(
    {'time': times.strftime('%Y-%m-%d %H:%M'), 'load': values.astype(str)}
  )
  frame.loc[7, 'load'] = ''  # A missing observation: left out.
  if bad:
    frame.loc[3, bad[0]] = bad[1]
  frame.to_csv(path, index=False)
  return path


class TrainTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A fresh folder: a run left by an earlier session must not resume.
    os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
    cls.root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.cache = os.path.join(cls.root, 'baselines')
    cls.workdir = os.path.join(cls.root, 'forecasting_run')
    cls.config = tiny_config(cls.cache)
    cls.final = trainer.train_and_evaluate(
      cls.config, cls.workdir, train.build_task(cls.config)
    )

  def test_every_series_is_scored_beside_its_baselines(self):
    for name in ('electricity', 'co2', 'wine'):
      for suffix in ('', '_thinned'):
        for metric in ('mase', 'smape', 'pinball', 'coverage'):
          for method in ('', '_seasonal_naive'):
            key = f'eval/{name}{suffix}_{metric}{method}'
            self.assertIn(key, self.final)
            self.assertTrue(np.isfinite(self.final[key]), key)
        for key in (
          'coverage_calibrated',
          'pinball_calibrated',
          'interval_scale',
          'calibration_coverage',
        ):
          self.assertTrue(np.isfinite(self.final[f'eval/{name}{suffix}_{key}']))
      self.assertIn(f'eval/{name}_mase_vs_seasonal_naive', self.final)
    # 3 series x (2 held-out + 1 calibration origins) x (full, thinned).
    self.assertEqual(self.final['eval/count'], 18)

  def test_batches_mix_series_and_resume_at_any_step(self):
    specs = train.series_specs(self.config)
    full = train.train_batches(self.config, specs, 0, 0, 1)
    batches = [next(full) for _ in range(3)]
    resumed = next(train.train_batches(self.config, specs, 2, 0, 1))
    for key in batches[2]:
      np.testing.assert_array_equal(resumed[key], batches[2][key])
    channels = np.concatenate([b['x_channel'][:, -1] for b in batches])
    self.assertContainsSubset({1, 2, 3}, set(channels) | {0})
    # The history lies before the forecast times.
    first = batches[0]
    for row in range(len(first['x_time'])):
      seen = first['x_time'][row][first['x_mask'][row] == 1]
      self.assertLess(seen.max(), first['q_time'][row][0])

  def test_series_weights_set_the_mix_and_targets_avoid_held_out_parts(self):
    config = tiny_config(self.cache)
    config.data.channel_dropout = 0.0
    config.batch_size = 50
    config.data.series.electricity.weight = 3.0
    config.data.series.wine.weight = 0.0
    specs = train.series_specs(config)
    # Every value from the calibration part on is a sentinel: a training
    # target there would be far outside the scaled range.
    marked = {}
    for name, (series, spec) in specs.items():
      values = series.values.copy()
      start = train.data_lib.test_start(series, spec) - spec.calibration_length
      values[start:] = 1e9
      marked[name] = (dataclasses.replace(series, values=values), spec)
    batches = train.train_batches(config, marked, 0, 0, 1)
    channels = np.concatenate(
      [next(batches)['x_channel'][:, -1] for _ in range(8)]
    )
    counts = np.bincount(channels, minlength=4)
    self.assertEqual(counts[3], 0)  # Wine's weight is 0.
    self.assertBetween(counts[1] / len(channels), 0.65, 0.85)  # 3 / 4.
    for _ in range(4):
      batch = next(batches)
      self.assertLess(np.abs(batch['y'] * batch['q_mask']).max(), 1e3)
    config.data.series.co2.weight = -1.0
    with self.assertRaisesRegex(ValueError, 'weight must be >= 0'):
      train.series_weights(config, list(specs))

  def test_resume_is_exact(self):
    config = tiny_config(self.cache)
    config.num_train_steps = 4
    part_dir = self.create_tempdir().full_path
    part = trainer.train_and_evaluate(
      config,
      part_dir,
      preemption.sigterm_at_step(train.build_task(config), 2),
    )
    self.assertTrue(part['preempted'])
    resumed = trainer.train_and_evaluate(
      config, part_dir, train.build_task(config)
    )
    self.assertEqual(
      _no_perf(metrics_writer.read_metrics(self.workdir)),
      _no_perf(metrics_writer.read_metrics(part_dir)),
    )
    self.assertEqual(self.final['eval/co2_mase'], resumed['eval/co2_mase'])

  def test_report_prints_one_table_per_series(self):
    text = report.tables(
      report.latest_eval(metrics_writer.read_metrics(self.workdir))
    )
    for name in ('electricity', 'co2', 'wine'):
      self.assertIn(f'### {name}', text)
      self.assertRegex(text, rf'\| {name} \| seasonal_naive \| [0-9.]+ \|')
    self.assertRegex(text, r'\| perceiver_io \|( [0-9.]+ \|){7}')
    with self.assertRaisesRegex(ValueError, 'No forecasting evaluation'):
      report.latest_eval([{'step': 1, 'loss': 0.1}])

  def test_a_csv_is_forecast(self):
    run = runs.load_run(self.workdir)
    path = write_csv(os.path.join(self.create_tempdir(), 'in.csv'))
    times, values = forecast.read_csv(path, 'time', ['load'])
    self.assertTrue(np.isnan(values['load'][7]))
    future = forecast.future_times(times, 5)
    self.assertEqual(str(future[0]), '2024-03-03 12:00:00')
    days = forecast.to_days(times)
    self.assertEqual(
      forecast.default_phases(days, ('day', 'week', 'year')), ('day', 'week')
    )
    out = forecast.forecast_series(
      run, values['load'], days, forecast.to_days(future), 24
    )
    self.assertEqual(out['median'].shape, (5,))
    self.assertTrue(np.all(out['low'] <= out['median']))
    self.assertTrue(np.all(out['median'] <= out['high']))
    with self.assertRaisesRegex(ValueError, 'too short'):
      forecast.forecast_series(
        run, values['load'][:5], days[:5], forecast.to_days(future), 24
      )
    # Calibration on the history's own last forecasts: 3 origins x 5 points.
    factor, raw, points = forecast.calibration(
      run, values['load'], days, 5, 24, None, 3
    )
    self.assertEqual(points, 15)
    self.assertIn(factor, metrics.FACTORS)
    self.assertBetween(raw, 0.0, 1.0)
    self.assertEqual(
      forecast.calibration(run, values['load'], days, 5, 24, None, 0)[0], 1.0
    )
    wide = forecast.widen(out, 2.0)
    np.testing.assert_allclose(
      wide['high'] - wide['median'], 2 * (out['high'] - out['median'])
    )

  def test_bad_csvs_are_named(self):
    folder = self.create_tempdir().full_path
    bad_date = write_csv(os.path.join(folder, 'a.csv'), bad=('time', 'soon'))
    with self.assertRaisesRegex(ValueError, r"'soon' in column 'time' \(row 5"):
      forecast.read_csv(bad_date, 'time', ['load'])
    bad_value = write_csv(os.path.join(folder, 'b.csv'), bad=('load', 'n/a?'))
    with self.assertRaisesRegex(ValueError, r"'n/a\?' in column 'load'"):
      forecast.read_csv(bad_value, 'time', ['load'])
    with self.assertRaisesRegex(ValueError, "no column 'demand'"):
      forecast.read_csv(bad_value, 'time', ['demand'])
    with self.assertRaisesRegex(FileNotFoundError, 'no such file'):
      forecast.read_csv(os.path.join(folder, 'none.csv'), 'time', ['load'])


if __name__ == '__main__':
  absltest.main()
