r"""Forecast a user's own CSV with a trained forecaster.

  python -m experiments.forecasting.forecast --checkpoint=runs/forecasting \
    --csv=demand.csv --time_column=time --value_columns=load --horizon=48 \
    --out=forecast.csv --plot=forecast.png

reads the CSV (a time column pandas can parse, one or more numeric value
columns; blank cells are missing observations and are simply left out, the
rows may be irregular), takes the last `--context` observations of each value
column (default: the run's longest training context) and forecasts
`--horizon` steps after the last time. The step is `--frequency` (a pandas
frequency such as 30min, h, D, W-SAT, MS) or, when not given, the one
pandas infers from the times, else their median spacing. Each column is
forecast on its own with the generic channel of the run and the phases its
step suggests (`--phases`) (what the model
learnt for a series it has not seen, see config.data.channel_dropout).

The interval is calibrated on the column's own history, which the model
has not been trained on: the last `--calibration_origins` forecasts of
`horizon` observations each (origins `horizon` observations apart, each
from the observations before it) give the smallest factor by which the
interval, widened about the median, covers its nominal share
(metrics.calibrate, as in training's evaluation). It is printed with the
raw interval's coverage there; 0 origins (or too short a history) keeps the
raw interval.

Writes `--out`: one row per forecast time with `<column>_median`,
`<column>_low` and `<column>_high` (the run's lowest and highest quantile,
by default the 80% interval, calibrated), and `--plot`: a PNG per column of
the history, the median and the interval.
"""

import functools

import jax
import numpy as np

from experiments.forecasting import metrics as metrics_lib
from experiments.forecasting import windows

MIN_HISTORY = 8


def read_csv(path, time_column, value_columns):
  """(times: DatetimeIndex[L], values: {column: float64[L]}), sorted.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a missing column, an unparseable date or a non-numeric
      value, naming the column and row.
  """
  import os

  import pandas as pd

  if not os.path.exists(path):
    raise FileNotFoundError(f'--csv={path!r}: no such file.')
  frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  missing = [c for c in [time_column, *value_columns] if c not in frame]
  if missing:
    raise ValueError(
      f'{path} has no column {missing[0]!r}; its columns are '
      f'{list(frame.columns)}.'
    )
  times = pd.to_datetime(frame[time_column], errors='coerce')
  bad = np.flatnonzero(times.isna().to_numpy())
  if len(bad):
    row = int(bad[0])
    raise ValueError(
      f'{path}: cannot parse {frame[time_column].iloc[row]!r} in column '
      f'{time_column!r} (row {row + 2} of the file) as a date or time.'
    )
  values = {}
  for column in value_columns:
    text = frame[column].str.strip()
    numbers = pd.to_numeric(text.where(text != '', None), errors='coerce')
    bad = np.flatnonzero((numbers.isna() & (text != '')).to_numpy())
    if len(bad):
      row = int(bad[0])
      raise ValueError(
        f'{path}: {frame[column].iloc[row]!r} in column {column!r} (row '
        f'{row + 2} of the file) is not a number.'
      )
    values[column] = numbers.to_numpy(np.float64)
  order = np.argsort(times.to_numpy(), kind='stable')
  if len(np.unique(times.to_numpy())) != len(times):
    raise ValueError(f'{path}: column {time_column!r} repeats a time.')
  times = pd.DatetimeIndex(times.to_numpy()[order])
  return times, {c: v[order] for c, v in values.items()}


def future_times(times, horizon, frequency=''):
  """The `horizon` times after the last of `times` (a DatetimeIndex)."""
  import pandas as pd

  if not frequency and len(times) >= 3:
    frequency = pd.infer_freq(times) or ''
  if frequency:
    offset = pd.tseries.frequencies.to_offset(frequency)
    return pd.date_range(times[-1], periods=horizon + 1, freq=offset)[1:]
  step = np.median(np.diff(times.asi8))
  return pd.DatetimeIndex(times.asi8[-1] + step * np.arange(1, horizon + 1))


def to_days(times):
  import pandas as pd

  return np.asarray(
    (pd.DatetimeIndex(times) - pd.Timestamp('1970-01-01'))
    / pd.Timedelta(days=1),
    np.float64,
  )


def default_phases(days, phases):
  """The phases a series of these step lengths carries: the time of day
  and week below a day's step, of week and year below four weeks', else of
  the year (as the bundled series do)."""
  step = float(np.median(np.diff(days))) if len(days) > 1 else 1.0
  if step < 1.0:
    wanted = ('day', 'week')
  elif step < 28.0:
    wanted = ('week', 'year')
  else:
    wanted = ('year',)
  return tuple(p for p in phases if p in wanted)


@functools.lru_cache(maxsize=4)
def _apply(model):
  return jax.jit(functools.partial(model.apply, is_training=False))


def forecast_series(
  run, values, days, query_days, context, used_phases=None, max_context=0
):
  """{'low', 'median', 'high'}: float64[H] for one column.

  The window is padded to `max_context` tokens (default: the history's
  length), so that forecasts of one shape share one compiled program.

  Raises:
    ValueError: too short a history.
  """
  config = run.config
  observed = np.isfinite(values)
  if observed.sum() < MIN_HISTORY:
    raise ValueError(
      f'A history of {int(observed.sum())} observations is too short to '
      f'forecast; at least {MIN_HISTORY} are needed.'
    )
  values, days = values[observed][-context:], days[observed][-context:]
  w = windows.window(
    values,
    days,
    len(values),
    len(values),
    query_days,
    channel=0,
    phases=tuple(config.data.phases),
    max_context=max(max_context, len(values)),
    max_horizon=len(query_days),
    used_phases=used_phases,
  )
  batch = {k: v[None] for k, v in w.items()}
  pred, _ = _apply(run.model)(run.params, run.state, None, **batch)
  pred = float(w['loc']) + float(w['scale']) * np.asarray(pred[0], np.float64)
  median = list(config.model.quantiles).index(0.5)
  return {'low': pred[:, 0], 'median': pred[:, median], 'high': pred[:, -1]}


def calibration(run, values, days, horizon, context, used_phases, origins):
  """The interval's widening factor from the history's own last forecasts.

  Args:
    run: the trained run.
    values, days: float64[L] the history (NaN: missing) and its times.
    horizon: observations forecast from each origin.
    context: observations of history read.
    used_phases: the phases the series carries.
    origins: at most this many origins, `horizon` observations apart and
      ending at the last observation; each needs MIN_HISTORY before it.

  Returns:
    (factor, raw coverage, points): the factor of metrics.FACTORS, the
    coverage of the uncalibrated interval, and the number of points scored
    (1.0, NaN, 0 without an origin).
  """
  observed = np.isfinite(values)
  values, days = values[observed], days[observed]
  tokens = min(context, len(values))  # The final forecast's window size.
  q = [float(x) for x in run.config.model.quantiles]
  factors = np.asarray(metrics_lib.FACTORS)[:, None]  # [C, 1]
  covered = np.zeros(len(factors))
  points = raw = 0
  for j in range(1, origins + 1):
    origin = len(values) - j * horizon
    if origin < MIN_HISTORY:
      break
    truth = values[origin : origin + horizon]
    f = forecast_series(
      run,
      values[:origin],
      days[:origin],
      days[origin : origin + horizon],
      context,
      used_phases,
      max_context=tokens,
    )
    low, high = metrics_lib.widen(f['low'], f['median'], f['high'], factors)
    covered += np.sum((low <= truth) & (truth <= high), axis=1)
    raw += int(np.sum((f['low'] <= truth) & (truth <= f['high'])))
    points += len(truth)
  if not points:
    return 1.0, float('nan'), 0
  index = metrics_lib.calibrate(covered, points, q[-1] - q[0])
  return metrics_lib.FACTORS[index], raw / points, points


def widen(forecast, factor):
  """The forecast with its interval widened by `factor` about the median."""
  low, high = metrics_lib.widen(
    forecast['low'], forecast['median'], forecast['high'], factor
  )
  return {'median': forecast['median'], 'low': low, 'high': high}


def plot(path, times, values, future, forecasts, context):
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  columns = list(forecasts)
  fig, axes = plt.subplots(
    len(columns), 1, figsize=(10, 3 * len(columns)), squeeze=False
  )
  for ax, column in zip(axes[:, 0], columns, strict=False):
    shown = slice(max(0, len(times) - context), None)
    ax.plot(
      times[shown], values[column][shown], color='k', lw=1, label='history'
    )
    f = forecasts[column]
    ax.fill_between(future, f['low'], f['high'], alpha=0.3, label='interval')
    ax.plot(future, f['median'], color='C0', lw=1.5, label='median')
    ax.set_title(column)
    ax.legend(loc='upper left')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  import pandas as pd
  from absl import flags

  from experiments import runs

  del argv
  f = flags.FLAGS
  if f.horizon < 1:
    raise ValueError(f'--horizon={f.horizon} must be positive.')
  run = runs.load_run(f.checkpoint)
  if run.experiment != 'experiments.forecasting.train':
    raise ValueError(
      f'--checkpoint={f.checkpoint!r} was trained by {run.experiment}, not '
      'by python -m experiments.forecasting.'
    )
  columns = [c.strip() for c in f.value_columns.split(',') if c.strip()]
  times, values = read_csv(f.csv, f.time_column, columns)
  context = f.context or max(
    int(s.context) for s in run.config.data.series.values()
  )
  future = future_times(times, f.horizon, f.frequency)
  days, query_days = to_days(times), to_days(future)
  phases = tuple(run.config.data.phases)
  used = tuple(p for p in f.phases.split(',') if p) or default_phases(
    days, phases
  )
  unknown = sorted(set(used) - set(phases))
  if unknown:
    raise ValueError(f'--phases names {unknown[0]!r}; the run knows {phases}.')
  if f.calibration_origins < 0:
    raise ValueError(
      f'--calibration_origins={f.calibration_origins} must be >= 0.'
    )
  forecasts = {}
  for c in columns:
    factor, raw, points = calibration(
      run, values[c], days, f.horizon, context, used, f.calibration_origins
    )
    if points:
      print(
        f'{c}: interval x {factor:.2f}, calibrated on {points} points of '
        f'its own history (raw coverage there {raw:.3f}).'
      )
    else:
      print(f'{c}: interval not calibrated (no backtest origin).')
    forecasts[c] = widen(
      forecast_series(run, values[c], days, query_days, context, used), factor
    )
  table = {f.time_column: future}
  for c in columns:
    for key in ('median', 'low', 'high'):
      table[f'{c}_{key}'] = forecasts[c][key]
  pd.DataFrame(table).to_csv(f.out, index=False)
  print(f'Wrote {f.out}: {f.horizon} times x {len(columns)} column(s).')
  if f.plot:
    plot(f.plot, times, values, future, forecasts, context)
    print(f'Wrote {f.plot}.')


if __name__ == '__main__':
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'A forecasting run.', required=True)
  flags.DEFINE_string('csv', None, 'The CSV to forecast.', required=True)
  flags.DEFINE_string('time_column', 'time', 'The column of times.')
  flags.DEFINE_string(
    'value_columns', None, 'Comma-separated value columns.', required=True
  )
  flags.DEFINE_integer('horizon', None, 'Steps to forecast.', required=True)
  flags.DEFINE_string(
    'frequency', '', 'A pandas frequency (30min, h, D, MS); default: inferred.'
  )
  flags.DEFINE_integer(
    'context', 0, "Observations of history read; 0: the run's context."
  )
  flags.DEFINE_string(
    'phases',
    '',
    'Comma-separated phases (day, week, year) the series carries; default: '
    'day,week below a daily step, week,year below four weeks, else year.',
  )
  flags.DEFINE_integer(
    'calibration_origins',
    8,
    'Backtest forecasts of the history that calibrate the interval (0: the '
    'raw interval).',
  )
  flags.DEFINE_string('out', 'forecast.csv', 'The forecast CSV written.')
  flags.DEFINE_string('plot', 'forecast.png', "The PNG written ('' : none).")
  from experiments import cli

  cli.run(main, tool=True)
