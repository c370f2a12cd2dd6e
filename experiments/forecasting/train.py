"""Forecasting as a `trainer.Task`: windows, pinball loss, rolling-origin eval.

Shape letters: B windows, H horizon, Q quantiles, G = 4 * S groups (S
series; the full and the thinned history of each, at the held-out origins
and at the calibration origins), C interval widening factors.

One model is trained across every series of `config.data.datasets` on
windows that end before each series' held-out part (windows.py), with the
pinball loss of its quantiles on the scaled targets. Evaluation forecasts
every rolling origin of every series twice, from the full history and from
one with `eval_thin_rate` of its observations dropped, and scores the
unscaled median and interval with metrics.py beside the classical
baselines of baselines.py on exactly the same points.

Interval calibration (split conformal): the series' `calibration_length`
steps before the held-out part are not trained on. Our interval is widened
(or narrowed) about the median by the smallest factor c of metrics.FACTORS whose
interval covers at least the nominal share (times 1 + 1/n, n points) of the
calibration origins' targets, and the held-out points are scored with it
too. The raw interval's figures stay beside the calibrated ones. Keys, per
series s:

  eval/s_mase, eval/s_smape, eval/s_pinball, eval/s_coverage   ours
  eval/s_coverage_calibrated, eval/s_pinball_calibrated        ours, c
  eval/s_interval_scale, eval/s_calibration_coverage           c; raw there
  eval/s_mase_<baseline>, ...                                   baselines
  eval/s_thinned_mase, eval/s_thinned_mase_<baseline>, ...     thinned
  eval/s_mase_vs_seasonal_naive                                 ours / SN
"""

import multiprocessing
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import parallel
from experiments import trainer
from experiments.forecasting import baselines as baselines_lib
from experiments.forecasting import data as data_lib
from experiments.forecasting import metrics as metrics_lib
from experiments.forecasting import model as model_lib
from experiments.forecasting import windows
from perceiver_io import models

MODEL_KEYS = (
  'quantiles',
  'num_latents',
  'latent_channels',
  'num_self_attends',
  'num_heads',
  'num_cross_attend_heads',
  'num_decoder_heads',
  'num_time_bands',
  'max_resolution',
  'num_harmonics',
  'widening_factor',
  'dropout_prob',
  'seasonal_lags',
)
SERIES_KEYS = (
  'context',
  'horizon',
  'test_length',
  'origin_stride',
  'season_lengths',
  'phases',
  'baselines',
  'calibration_length',
  'weight',
)


def num_channels(config) -> int:
  """Channel 0 is the generic one; series i of `datasets` is i + 1."""
  return len(config.data.datasets) + 1


def build_model(config: ml_collections.ConfigDict) -> model_lib.Model:
  runtime = models.runtime_of(config.model)
  unknown = sorted(set(config.model.keys()) - set(MODEL_KEYS) - {'runtime'})
  if unknown:
    raise ValueError(
      f'Unknown config.model key {unknown[0]!r}; the keys are '
      f'{MODEL_KEYS + ("runtime",)}.'
    )
  kwargs = {k: config.model[k] for k in MODEL_KEYS if k in config.model}
  kwargs['quantiles'] = tuple(kwargs.get('quantiles', (0.1, 0.5, 0.9)))
  kwargs.update(num_channels=num_channels(config), runtime=runtime)
  return model_lib.Model(tuple(sorted(kwargs.items())))


def series_specs(config) -> dict[str, tuple[data_lib.Series, data_lib.Spec]]:
  """{name: (series, spec)} of `config.data.datasets`, checked."""
  out = {}
  for name in config.data.datasets:
    if name not in config.data.series:
      raise ValueError(
        f'config.data.datasets names {name!r}, which config.data.series '
        f'does not define (it has {sorted(config.data.series)}).'
      )
    section = config.data.series[name]
    unknown = sorted(set(section.keys()) - set(SERIES_KEYS))
    if unknown:
      raise ValueError(
        f'Unknown config.data.series.{name} key {unknown[0]!r}; the keys '
        f'are {SERIES_KEYS}.'
      )
    series = data_lib.load(name)
    spec = data_lib.Spec.of(section)
    data_lib.check(series, spec)
    baselines_lib.check_methods(section.baselines)
    used = windows.check_phases(section.get('phases', config.data.phases))
    if set(used) - set(config.data.phases):
      raise ValueError(
        f'config.data.series.{name}.phases={used} names phases outside '
        f'config.data.phases={tuple(config.data.phases)}.'
      )
    out[name] = (series, spec)
  if not out:
    raise ValueError('config.data.datasets is empty.')
  return out


def _sizes(specs):
  return (
    max(s.context for _, s in specs.values()),
    max(s.horizon for _, s in specs.values()),
  )


def _used(config, name):
  return tuple(config.data.series[name].get('phases', config.data.phases))


def _levels(config):
  q = tuple(float(x) for x in config.model.quantiles)
  return (q[0], 0.5, q[-1])


# --- Training ---


def train_batches(config, specs, start_step, process_index, process_count):
  """Endless batches of training windows for steps start_step, ...

  Row r of step s comes from a series drawn in proportion to its `weight`
  (default 1), at an origin drawn uniformly among its training origins,
  both from (seed, s, r) alone: training resumes at any step without
  replaying data.
  """
  data = config.data
  phases = windows.check_phases(data.phases)
  max_context, max_horizon = _sizes(specs)
  names = list(specs)
  weights = series_weights(config, names)
  days = {n: np.asarray(data_lib.days(specs[n][0])) for n in names}
  rows = parallel.process_slice(config.batch_size, process_index, process_count)
  step = start_step
  while True:
    out = []
    for row in range(rows.start, rows.stop):
      rng = np.random.default_rng((config.seed, step, row))
      name = names[rng.choice(len(names), p=weights)]
      series, spec = specs[name]
      end = data_lib.train_end(series, spec)
      low = max(1, spec.context // 4)
      origin = int(rng.integers(low, end - spec.horizon + 1))
      values = series.values
      if rng.random() < data.thin_prob:
        values = values.copy()
        start = max(0, origin - spec.context)
        values[start:origin] = data_lib.thin(
          values[start:origin], rng.uniform(0, data.thin_max_rate), rng
        )
        if not np.isfinite(values[start:origin]).any():
          values = series.values
      channel = names.index(name) + 1
      if rng.random() < data.channel_dropout:
        channel = 0
      horizon = spec.horizon
      out.append(
        windows.window(
          values,
          days[name],
          origin,
          spec.context,
          days[name][origin : origin + horizon],
          channel=channel,
          phases=phases,
          max_context=max_context,
          max_horizon=max_horizon,
          targets=series.values[origin : origin + horizon],
          used_phases=_used(config, name),
        )
      )
    yield windows.stack(out)
    step += 1


def series_weights(config, names) -> np.ndarray:
  """float64[S] the training share of each series (`weight`, default 1)."""
  weights = np.array(
    [float(config.data.series[n].get('weight', 1.0)) for n in names]
  )
  bad = [n for n, w in zip(names, weights, strict=True) if not w >= 0]
  if bad or not weights.sum() > 0:
    raise ValueError(
      f'config.data.series.<name>.weight must be >= 0 and not all 0; got '
      f'{dict(zip(names, weights.tolist(), strict=True))}.'
    )
  return weights / weights.sum()


def make_loss_fn(model, levels_all):
  def loss_fn(params, state, batch, rng, is_training):
    pred, state = model.apply(
      params, state, rng, is_training=is_training, **batch
    )
    losses = model_lib.pinball(pred, batch['y'], levels_all)  # [B, H, Q]
    mask = batch['q_mask'].astype(jnp.float32)
    points = jnp.maximum(jnp.sum(mask), 1.0)
    loss = jnp.sum(jnp.mean(losses, -1) * mask) / points
    median = pred[..., list(levels_all).index(0.5)]
    metrics = {
      'scaled_mae': jnp.sum(jnp.abs(median - batch['y']) * mask) / points
    }
    return loss, (metrics, state)

  return loss_fn


# --- Evaluation ---


def eval_set(config, specs) -> dict[str, np.ndarray]:
  """Every held-out and calibration origin of every series, full and
  thinned: windows + group ids (variant * S + series; variants 0/1 the
  held-out origins full/thinned, 2/3 the calibration origins)."""
  data = config.data
  phases = windows.check_phases(data.phases)
  max_context, max_horizon = _sizes(specs)
  out = []
  for index, (name, (series, spec)) in enumerate(specs.items()):
    scale = data_lib.mase_scale(series, spec)
    histories = (series.values, thinned_values(config, index, series))
    for variant in range(4):
      values = histories[variant % 2]
      if variant < 2:
        origins = data_lib.origins(series, spec)
      else:
        origins = data_lib.calibration_origins(series, spec)
      for origin in origins:
        w = windows.series_window(
          series,
          spec,
          int(origin),
          channel=index + 1,
          phases=phases,
          max_context=max_context,
          max_horizon=max_horizon,
          values=values,
          used_phases=_used(config, name),
        )
        w['group'] = np.int32(variant * len(specs) + index)
        w['mase_scale'] = np.float32(scale)
        w['y_raw'] = np.zeros(max_horizon, np.float32)
        w['y_raw'][: spec.horizon] = np.nan_to_num(
          series.values[origin : origin + spec.horizon]
        )
        out.append(w)
  return windows.stack(out)


def thinned_values(config, index, series):
  """The series with `eval_thin_rate` of its values dropped (fixed seed)."""
  rng = np.random.default_rng((config.data.eval_thin_seed, index))
  return data_lib.thin(series.values, config.data.eval_thin_rate, rng)


def make_eval_fn(model, levels_all, num_groups):
  q = list(levels_all)
  low, mid, high = 0, q.index(0.5), len(q) - 1
  factors = jnp.asarray(metrics_lib.FACTORS, jnp.float32)[None, :, None]

  def eval_fn(params, state, batch):
    pred, _ = model.apply(params, state, None, is_training=False, **batch)
    pred = batch['loc'][:, None, None] + batch['scale'][:, None, None] * pred
    mask = batch['q_mask'] * batch['mask'][:, None]
    per_window = metrics_lib.sums(
      jnp,
      pred[..., low],
      pred[..., mid],
      pred[..., high],
      batch['y_raw'],
      mask,
      batch['mase_scale'],
      (q[low], 0.5, q[high]),
    )
    # The interval widened by each factor about the median, flattened to
    # [B * C, H] windows for metrics.sums.
    b, h = mask.shape
    c = len(metrics_lib.FACTORS)
    median = pred[:, None, :, mid]  # [B, 1, H]
    wide_low, wide_high = metrics_lib.widen(
      pred[:, None, :, low], median, pred[:, None, :, high], factors
    )  # [B, C, H]

    def flat(x):
      return jnp.reshape(jnp.broadcast_to(x, (b, c, h)), (-1, h))

    widened = metrics_lib.sums(
      jnp,
      flat(wide_low),
      flat(median),
      flat(wide_high),
      flat(batch['y_raw'][:, None]),
      flat(mask[:, None]),
      jnp.repeat(batch['mase_scale'], c),
      (q[low], 0.5, q[high]),
    )
    for k in ('coverage', 'pinball'):
      per_window[f'{k}_widened'] = jnp.reshape(widened[k], (b, c))
    onehot = jax.nn.one_hot(batch['group'], num_groups) * batch['mask'][:, None]
    out = {
      k: jnp.einsum('bg,b...->g...', onehot, v) for k, v in per_window.items()
    }
    out['count'] = jnp.sum(batch['mask'])
    return out

  return eval_fn


def baseline_metrics(config, specs) -> dict[str, float]:
  """Every baseline's metrics on the eval points, full and thinned."""
  cache_dir = config.data.baseline_cache_dir or os.path.expanduser(
    '~/.cache/perceiver_io/forecasting'
  )
  levels = _levels(config)
  interval = levels[2] - levels[0]
  out = {}
  for index, (name, (series, spec)) in enumerate(specs.items()):
    origins = data_lib.origins(series, spec)
    scale = data_lib.mase_scale(series, spec)
    truth = np.stack([series.values[o : o + spec.horizon] for o in origins])
    mask = np.isfinite(truth).astype(np.float64)
    truth = np.nan_to_num(truth)
    for prefix, values in (
      (name, series.values),
      (f'{name}_thinned', thinned_values(config, index, series)),
    ):
      for method in config.data.series[name].baselines:
        f = baselines_lib.forecast(
          values, origins, spec, method, interval, cache_dir
        )
        sums = metrics_lib.sums(
          np,
          f['low'],
          f['median'],
          f['high'],
          truth,
          mask,
          np.full(len(origins), scale),
          levels,
        )
        totals = {k: np.sum(v) for k, v in sums.items()}
        for metric, value in metrics_lib.finalize(totals).items():
          out[f'{prefix}_{metric}_{method}'] = value
  return out


class BaselineJob:
  """`baseline_metrics`, in a separate process started at once or in-line.

  statsforecast's fits take minutes on the electricity series and hold the
  GIL, so with `config.data.baselines_in_background` they run in a spawned
  process while the model trains, and the first eval waits for what is
  left. Otherwise they run in this process at the first eval.
  """

  def __init__(self, config, specs):
    self._args = (config, specs)
    self._result = None
    self._pool = None
    self._start = time.time()
    if config.data.get('baselines_in_background', False):
      self._pool = multiprocessing.get_context('spawn').Pool(1)
      self._async = self._pool.apply_async(baseline_metrics, self._args)

  def result(self) -> dict[str, float]:
    if self._result is None:
      if self._pool is None:
        self._result = baseline_metrics(*self._args)
      else:
        if not self._async.ready():
          logging.info('Waiting for the baselines to finish fitting.')
        self._result = self._async.get()  # Re-raises the worker's error.
        self._pool.close()
        logging.info(
          'Baselines fitted in a background process in %.1f s.',
          time.time() - self._start,
        )
    return self._result


def make_eval_finalize(config, specs, baselines: BaselineJob):
  names = list(specs)
  n = len(names)
  interval = _levels(config)[2] - _levels(config)[0]

  def finalize(sums):
    sums = {k: np.asarray(v) for k, v in sums.items()}
    out = {}
    for variant, suffix in enumerate(('', '_thinned')):
      for index, name in enumerate(names):
        g = variant * n + index
        totals = {k: sums[k][g] for k in metrics_lib.NAMES + ('points',)}
        for metric, value in metrics_lib.finalize(totals).items():
          out[f'{name}{suffix}_{metric}'] = value
        cal = (variant + 2) * n + index
        cal_points = float(sums['points'][cal])
        i = metrics_lib.calibrate(
          sums['coverage_widened'][cal], cal_points, interval
        )
        points = float(totals['points'])
        prefix = f'{name}{suffix}'
        out[f'{prefix}_interval_scale'] = metrics_lib.FACTORS[i]
        out[f'{prefix}_calibration_coverage'] = (
          float(sums['coverage'][cal]) / cal_points if cal_points else np.nan
        )
        for metric in ('coverage', 'pinball'):
          out[f'{prefix}_{metric}_calibrated'] = (
            float(sums[f'{metric}_widened'][g][i]) / points
            if points
            else np.nan
          )
    out.update(baselines.result())
    for name in names:
      for suffix in ('', '_thinned'):
        naive = out.get(f'{name}{suffix}_mase_seasonal_naive')
        if naive:
          out[f'{name}{suffix}_mase_vs_seasonal_naive'] = (
            out[f'{name}{suffix}_mase'] / naive
          )
    out['count'] = float(sums['count'])
    return out

  return finalize


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The forecasting task of `config` for `trainer.train_and_evaluate`."""
  model = build_model(config)
  specs = series_specs(config)
  levels_all = tuple(float(q) for q in config.model.quantiles)
  process_index, process_count = jax.process_index(), jax.process_count()
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  cache: dict[str, Any] = {}
  logging.info(
    'Forecasting %s; train windows end before the held-out %s steps.',
    ', '.join(specs),
    ', '.join(str(s.test_length) for _, s in specs.values()),
  )

  def eval_batches():
    if 'eval' not in cache:
      cache['eval'] = eval_set(config, specs)
    return parallel.padded_eval_batches(
      cache['eval'], eval_batch_size, process_index, process_count
    )

  first = next(train_batches(config, specs, 0, 0, 1))
  init_batch = {k: v[:1] for k, v in first.items()}
  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=lambda start: train_batches(
      config, specs, start, process_index, process_count
    ),
    loss_fn=make_loss_fn(model, levels_all),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model, levels_all, 4 * len(specs)),
    eval_finalize=make_eval_finalize(config, specs, BaselineJob(config, specs)),
  )
