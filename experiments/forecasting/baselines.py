"""Classical baselines from `statsforecast`, on the same origins and points.

Shape letters: E rolling origins, H horizon.

Each method is fitted at every origin on the history before it (the whole
history, interpolated linearly over missing or thinned steps, as these
methods need a complete grid; each origin's history is interpolated on its
own, so nothing after the origin is used) and forecasts `horizon` steps with
a central prediction interval. Its median is the point forecast.

  seasonal_naive  the value one longest season earlier.
  autoets         AutoETS with the shortest season (statsforecast drops the
                  seasonal part of ETS for seasons above 24, as R does).
  autotheta       AutoTheta with the shortest season.
  autoarima       AutoARIMA with the shortest season.
  mstl            MSTL with every season (trend by AutoETS).

Results are cached in `cache_dir` under a hash of what they depend on (the
history, the origins, the horizon and seasons, the method, the interval and
the library version; not the context, which baselines do not read), since
the slow ones take minutes.
"""

import hashlib
import os
import time
import warnings

import numpy as np
from absl import logging

from experiments.forecasting import data as data_lib

METHODS = ('seasonal_naive', 'autoets', 'autotheta', 'autoarima', 'mstl')


def _model(method, spec):
  from statsforecast import models

  short = spec.season_lengths[0]
  if method == 'seasonal_naive':
    return models.SeasonalNaive(season_length=spec.season_length)
  if method == 'autoets':
    return models.AutoETS(season_length=short)
  if method == 'autotheta':
    return models.AutoTheta(season_length=short)
  if method == 'autoarima':
    return models.AutoARIMA(season_length=short)
  if method == 'mstl':
    return models.MSTL(season_length=list(spec.season_lengths))
  raise ValueError(f'Unknown baseline {method!r}; use names of {METHODS}.')


def check_methods(methods) -> tuple[str, ...]:
  methods = tuple(methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(
      f'Unknown baseline {unknown[0]!r}; use names of {METHODS}.'
    )
  return methods


def _key(values, origins, spec, method, interval):
  """What a method's forecasts depend on: the history, the origins, the
  horizon and seasons, the method, the interval and the library version."""
  import statsforecast

  digest = hashlib.sha256(np.asarray(values, np.float64).tobytes())
  digest.update(np.asarray(origins, np.int64).tobytes())
  what = (spec.horizon, spec.season_lengths, method, interval)
  digest.update(repr(what).encode())
  digest.update(statsforecast.__version__.encode())
  return digest.hexdigest()[:24]


def forecast(
  values: np.ndarray,
  origins: np.ndarray,
  spec: data_lib.Spec,
  method: str,
  interval: float,
  cache_dir: str = '',
) -> dict[str, np.ndarray]:
  """One method's forecasts at every origin.

  Args:
    values: float[L] the history values (NaN where missing or thinned).
    origins: int[E] rolling origins.
    spec: the series' windows.
    method: a name of METHODS.
    interval: the central interval's coverage, e.g. 0.8.
    cache_dir: where results are kept ('' : not cached).

  Returns:
    {'low', 'median', 'high'}: float64[E, H].
  """
  import pandas as pd
  from statsforecast import StatsForecast

  path = None
  if cache_dir:
    key = _key(values, origins, spec, method, interval)
    path = os.path.join(cache_dir, f'{method}-{key}.npz')
    if os.path.exists(path):
      with np.load(path) as cached:
        return {k: cached[k] for k in ('low', 'median', 'high')}
  frames = []
  for origin in origins:
    history = data_lib.interpolate(values[:origin])
    frames.append(
      pd.DataFrame(
        {'unique_id': int(origin), 'ds': np.arange(origin), 'y': history}
      )
    )
  level = int(round(100 * interval))
  start = time.time()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    result = StatsForecast(
      models=[_model(method, spec)], freq=1, n_jobs=1
    ).forecast(df=pd.concat(frames), h=spec.horizon, level=[level])
  name = [c for c in result.columns if c not in ('unique_id', 'ds')][0]
  name = name.split('-lo-')[0].split('-hi-')[0]
  result = result.reset_index().sort_values(['unique_id', 'ds'])
  order = np.argsort(np.argsort(origins))  # Row of each origin, sorted.
  out = {}
  for key, column in (
    ('median', name),
    ('low', f'{name}-lo-{level}'),
    ('high', f'{name}-hi-{level}'),
  ):
    table = result[column].to_numpy(np.float64)
    out[key] = table.reshape(len(origins), spec.horizon)[order]
  logging.info(
    '%s at %d origins: %.1f s.', method, len(origins), time.time() - start
  )
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    temporary = f'{path}.{os.getpid()}.tmp.npz'
    np.savez(temporary, **out)
    os.replace(temporary, path)
  return out
