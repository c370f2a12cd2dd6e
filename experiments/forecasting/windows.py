"""Forecast windows as model inputs: tokens of observations, queries of times.

Shape letters: B windows, M context tokens, H query times, P named phases.

A window is a forecast origin of one series: its history tokens (one per
observed step in the `context` steps before the origin; missing steps are
masked out, not imputed) and its queries (the `horizon` times from the
origin on). Every time feature is computed here, in float64, from the
time in days since 1970-01-01, so that the model can be queried at any time,
including between the steps of the grid:

  time   (t - t_origin) / (context * step): the history lies in [-1, 0),
         the forecast times at 0 and after.
  phase  frac(t / period) for each named period of PERIOD_DAYS (the time of
         day, of the week, of the year), the same for every series.
  period each named period in time units (0 for a phase the series does
         not carry) and half a step in time units: the model looks up the
         observations one or more periods before a query (model.py).

Values are scaled per window: loc and scale are the mean and standard
deviation of the observed history (scale at least SCALE_FLOOR * |loc|, and
positive); targets are scaled the same way and forecasts unscaled with it.

Arrays of a batch (numpy):
  x_time, x_value: float32[B, M]; x_phase: float32[B, M, P];
  x_channel: int32[B, M]; x_mask: int32[B, M] (1 observed, 0 absent);
  q_time: float32[B, H]; q_phase: float32[B, H, P]; q_channel: int32[B, H];
  q_mask: int32[B, H] (1 for a query whose target is known);
  period: float32[B, P]; half_step: float32[B];
  y: float32[B, H] scaled targets (0 where unknown);
  loc, scale: float32[B].
"""

import numpy as np

from experiments.forecasting import data as data_lib

PERIOD_DAYS = {'day': 1.0, 'week': 7.0, 'year': 365.2425}
SCALE_FLOOR = 1e-3


def check_phases(phases) -> tuple[str, ...]:
  phases = tuple(phases)
  unknown = [p for p in phases if p not in PERIOD_DAYS]
  if unknown:
    raise ValueError(
      f'Unknown phase {unknown[0]!r} in config.data.phases; use names of '
      f'{sorted(PERIOD_DAYS)}.'
    )
  return phases


def phase_features(days: np.ndarray, phases, used=None) -> np.ndarray:
  """float64[...] days -> float32[..., P] phases in [0, 1).

  Phases not in `used` (None: all) are 0.
  """
  out = [
    np.mod(days / PERIOD_DAYS[p], 1.0)
    if used is None or p in used
    else np.zeros_like(days)
    for p in phases
  ]
  return np.stack(out, -1).astype(np.float32)


def scaling(values: np.ndarray) -> tuple[float, float]:
  """(loc, scale) of the observed (finite) values of a history."""
  known = values[np.isfinite(values)]
  if not len(known):
    raise ValueError('A history with no observed value cannot be forecast.')
  loc = float(np.mean(known))
  scale = float(np.std(known))
  return loc, max(scale, SCALE_FLOOR * abs(loc), 1e-8)


def window(
  values: np.ndarray,
  days: np.ndarray,
  origin: int,
  context: int,
  query_days: np.ndarray,
  *,
  channel: int,
  phases,
  max_context: int,
  max_horizon: int,
  targets: np.ndarray | None = None,
  used_phases=None,
) -> dict[str, np.ndarray]:
  """One window: the history before step `origin`, queries at `query_days`.

  Only `values[:origin]` and `days[:origin]` are read, so nothing at or after
  the origin can reach the inputs. The time unit is the mean step of the
  history. Tokens are right-aligned in [max_context] (padding first) and
  queries left-aligned in [max_horizon].

  Args:
    values: float[L] with NaN where missing.
    days: float64[L] times of the steps.
    origin: the first step not seen.
    context: steps of history read (fewer at the start of a series).
    query_days: float64[h] the times to forecast (any, h <= max_horizon).
    channel: the series' channel id.
    phases: names of PERIOD_DAYS (the feature layout).
    max_context, max_horizon: padded sizes M and H.
    targets: optional float[h] true values at `query_days` (NaN unknown).
    used_phases: the names of `phases` this series carries (None: all).

  Returns:
    The arrays of the module docstring for one window (no batch axis).
  """
  start = max(0, origin - context)
  hist_values = np.asarray(values[start:origin], np.float64)
  hist_days = np.asarray(days[start:origin], np.float64)
  if len(hist_values) > max_context or len(query_days) > max_horizon:
    raise ValueError(
      f'A window of {len(hist_values)} steps and {len(query_days)} queries '
      f'does not fit max_context={max_context}, max_horizon={max_horizon}.'
    )
  loc, scale = scaling(hist_values)
  if len(hist_days) > 1:
    step = (hist_days[-1] - hist_days[0]) / (len(hist_days) - 1)
  else:
    step = 1.0
  origin_day = hist_days[-1] + step
  unit = context * step
  phases = tuple(phases)
  m, h = len(hist_values), len(query_days)
  observed = np.isfinite(hist_values)
  out = {
    'x_time': np.zeros(max_context, np.float32),
    'x_value': np.zeros(max_context, np.float32),
    'x_phase': np.zeros((max_context, len(phases)), np.float32),
    'x_channel': np.full(max_context, channel, np.int32),
    'x_mask': np.zeros(max_context, np.int32),
    'q_time': np.zeros(max_horizon, np.float32),
    'q_phase': np.zeros((max_horizon, len(phases)), np.float32),
    'q_channel': np.full(max_horizon, channel, np.int32),
    'q_mask': np.zeros(max_horizon, np.int32),
    'y': np.zeros(max_horizon, np.float32),
    'period': np.array(
      [
        PERIOD_DAYS[p] / unit if used_phases is None or p in used_phases else 0
        for p in phases
      ],
      np.float32,
    ),
    'half_step': np.float32(0.5 * step / unit),
    'loc': np.float32(loc),
    'scale': np.float32(scale),
  }
  tail = slice(max_context - m, max_context)
  out['x_time'][tail] = (hist_days - origin_day) / unit
  out['x_value'][tail] = np.where(observed, (hist_values - loc) / scale, 0.0)
  out['x_phase'][tail] = phase_features(hist_days, phases, used_phases)
  out['x_mask'][tail] = observed
  query_days = np.asarray(query_days, np.float64)
  out['q_time'][:h] = (query_days - origin_day) / unit
  out['q_phase'][:h] = phase_features(query_days, phases, used_phases)
  if targets is None:
    out['q_mask'][:h] = 1
  else:
    known = np.isfinite(targets)
    out['q_mask'][:h] = known
    out['y'][:h] = np.where(known, (targets - loc) / scale, 0.0)
  return out


def stack(windows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([w[k] for w in windows]) for k in windows[0]}


def series_window(
  series: data_lib.Series,
  spec: data_lib.Spec,
  origin: int,
  *,
  channel: int,
  phases,
  max_context: int,
  max_horizon: int,
  values: np.ndarray | None = None,
  used_phases=None,
) -> dict[str, np.ndarray]:
  """The window of `series` at `origin` for `spec.horizon` steps.

  `values` replaces the series' values as history (e.g. thinned); the
  targets are always the true values.
  """
  days = np.asarray(data_lib.days(series))
  history = series.values if values is None else values
  end = origin + spec.horizon
  return window(
    history,
    days,
    origin,
    spec.context,
    days[origin:end],
    channel=channel,
    phases=phases,
    max_context=max_context,
    max_horizon=max_horizon,
    targets=series.values[origin:end],
    used_phases=used_phases,
  )
