"""Real series that ship with maintained packages, and their forecast windows.

Shape letters: L series length, E rolling origins.

A series is one channel of values on a regular grid of steps (half-hours,
weeks, months), with NaN where an observation is missing. Its last
`test_length` steps are held out: forecasts are made from rolling origins in
that part (every `origin_stride` steps), each from the `context` steps before
the origin, for the `horizon` steps after it. Nothing at or after an origin is
an input of its forecast. The `calibration_length` steps before the held-out
part are held out of training too: forecasts from origins there (targets
before the held-out part) calibrate the width of our interval
(train.py). Training windows end before both.

The bundled series (no download):
  electricity  pmdarima `load_taylor`: half-hourly electricity demand of
               England and Wales, Mon 5 June - Sun 27 August 2000 (4,032
               points; daily and weekly seasonality).
  co2          statsmodels `co2`: weekly Mauna Loa CO2, March 1958 -
               December 2001 (2,284 weeks, 59 missing).
  wine         pmdarima `load_wineind`: monthly Australian wine sales,
               January 1980 - August 1994 (176 points). It stands in for the
               issue's weekly gasoline series, which pmdarima downloads
               instead of bundling.
"""

import dataclasses
import functools

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Series:
  """One series on a regular grid.

  Attributes:
    name: the dataset's name (also its metric prefix).
    values: float64[L], NaN where missing.
    start: the time of step 0, as a string pandas parses.
    freq: a pandas frequency string ('30min', 'W-SAT', 'MS').
  """

  name: str
  values: np.ndarray
  start: str
  freq: str


def _electricity() -> Series:
  from pmdarima import datasets

  values = np.asarray(datasets.load_taylor(), np.float64)
  return Series('electricity', values, '2000-06-05 00:00', '30min')


def _co2() -> Series:
  from statsmodels.datasets import co2

  frame = co2.load_pandas().data
  values = frame['co2'].to_numpy(np.float64)
  return Series('co2', values, str(frame.index[0].date()), 'W-SAT')


def _wine() -> Series:
  from pmdarima import datasets

  values = np.asarray(datasets.load_wineind(), np.float64)
  return Series('wine', values, '1980-01-01', 'MS')


def days(series: Series) -> np.ndarray:
  """float64[L]: the time of each step in days since 1970-01-01."""
  import pandas as pd

  index = pd.date_range(
    series.start, periods=len(series.values), freq=series.freq
  )
  return (index - pd.Timestamp('1970-01-01')) / pd.Timedelta(days=1)


LOADERS = {'electricity': _electricity, 'co2': _co2, 'wine': _wine}


@functools.cache
def load(name: str) -> Series:
  """The bundled series `name` (one of LOADERS)."""
  if name not in LOADERS:
    raise ValueError(
      f'Unknown series {name!r}; the bundled ones are {sorted(LOADERS)}.'
    )
  return LOADERS[name]()


@dataclasses.dataclass(frozen=True)
class Spec:
  """How one series is cut into windows; see the module docstring.

  Attributes:
    context: M, steps of history a forecast reads.
    horizon: H, steps forecast from each origin.
    test_length: steps held out at the end.
    origin_stride: steps between rolling origins.
    season_lengths: the series' seasonal periods in steps, shortest first.
      The classical baselines use them (MSTL all, ETS/Theta/ARIMA the
      first); the seasonal naive baseline and the MASE scale use the last.
    calibration_length: steps before the held-out part kept out of
      training, whose forecasts calibrate our interval (0: none).
  """

  context: int
  horizon: int
  test_length: int
  origin_stride: int
  season_lengths: tuple[int, ...]
  calibration_length: int = 0

  @property
  def season_length(self) -> int:
    """The seasonal naive period, m of MASE: the longest season."""
    return self.season_lengths[-1]

  @classmethod
  def of(cls, section: ml_collections.ConfigDict) -> 'Spec':
    return cls(
      context=int(section.context),
      horizon=int(section.horizon),
      test_length=int(section.test_length),
      origin_stride=int(section.origin_stride),
      season_lengths=tuple(int(m) for m in section.season_lengths),
      calibration_length=int(section.get('calibration_length', 0)),
    )


def check(series: Series, spec: Spec) -> None:
  """Raises a ValueError naming what does not fit."""
  length = len(series.values)
  for what in ('context', 'horizon', 'test_length', 'origin_stride'):
    if getattr(spec, what) < 1:
      raise ValueError(
        f'{series.name}: {what}={getattr(spec, what)} must be positive.'
      )
  if spec.horizon > spec.test_length:
    raise ValueError(
      f'{series.name}: horizon={spec.horizon} exceeds '
      f'test_length={spec.test_length}: no origin fits.'
    )
  if spec.calibration_length < 0 or 0 < spec.calibration_length < (
    spec.horizon
  ):
    raise ValueError(
      f'{series.name}: calibration_length={spec.calibration_length} must be '
      f'0 or at least horizon={spec.horizon}.'
    )
  needed = (
    spec.context + spec.horizon + spec.test_length + spec.calibration_length
  )
  if length < needed:
    raise ValueError(
      f'{series.name}: {length} steps, but context ({spec.context}) + '
      f'horizon ({spec.horizon}) + test_length ({spec.test_length}) + '
      f'calibration_length ({spec.calibration_length}) = {needed} are '
      'needed to train on at least one window.'
    )
  if not spec.season_lengths or any(
    not 1 <= m < (length - spec.test_length) // 2 for m in spec.season_lengths
  ):
    raise ValueError(
      f'{series.name}: season_lengths={spec.season_lengths} must be '
      f'non-empty, each in [1, {(length - spec.test_length) // 2}) (half '
      'the training part).'
    )


def test_start(series: Series, spec: Spec) -> int:
  """The first held-out step (= the first origin)."""
  return len(series.values) - spec.test_length


def train_end(series: Series, spec: Spec) -> int:
  """Training targets lie before this step (the calibration part's start)."""
  return test_start(series, spec) - spec.calibration_length


def origins(series: Series, spec: Spec) -> np.ndarray:
  """int[E]: the rolling origins; forecast i covers [o_i, o_i + H)."""
  last = len(series.values) - spec.horizon
  return np.arange(test_start(series, spec), last + 1, spec.origin_stride)


def calibration_origins(series: Series, spec: Spec) -> np.ndarray:
  """int[C]: origins in the calibration part, their targets before the test.

  Empty when `calibration_length` is 0.
  """
  end = test_start(series, spec)
  return np.arange(
    end - spec.calibration_length, end - spec.horizon + 1, spec.origin_stride
  )


def mase_scale(series: Series, spec: Spec) -> float:
  """Mean |y_t - y_{t-m}| over the training part (m = season_length).

  Pairs with a missing value are skipped. One scale per series for every
  method and origin, so MASE ratios are MAE ratios.
  """
  y = series.values[: test_start(series, spec)]
  m = spec.season_length
  diff = np.abs(y[m:] - y[:-m])
  diff = diff[np.isfinite(diff)]
  if not len(diff) or not np.mean(diff) > 0:
    raise ValueError(
      f'{series.name}: the seasonal naive in-sample error is zero or '
      'undefined; MASE cannot be scaled.'
    )
  return float(np.mean(diff))


def thin(values: np.ndarray, rate: float, rng: np.random.Generator):
  """A copy of float[L] `values` with a random `rate` of them set to NaN."""
  drop = rng.random(values.shape) < rate
  return np.where(drop, np.nan, values)


def interpolate(values: np.ndarray) -> np.ndarray:
  """Linear interpolation over NaN (ends held constant), as classical
  methods need a complete grid."""
  index = np.arange(len(values))
  known = np.isfinite(values)
  if not known.any():
    raise ValueError('A history with no observed value cannot be forecast.')
  return np.interp(index, index[known], values[known])
