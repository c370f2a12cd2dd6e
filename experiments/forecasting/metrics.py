"""Forecast metrics, summed so that evaluation can add them over batches.

Shape letters: B windows, H horizon, Q quantiles.

For every method (ours and each baseline) on the same held-out points:
  mase      mean |y - median| / s, s the series' in-sample seasonal naive
            MAE (`data.mase_scale`): below 1 beats the seasonal naive
            in-sample.
  smape     mean 200 |y - median| / (|y| + |median|), in percent.
  pinball   mean over the lowest, the median and the highest quantile of the
            pinball loss, over s (a scaled quantile loss; 0.1/0.5/0.9 by
            default).
  coverage  the share of points inside [lowest, highest] quantile (the 80%
            interval by default).

`calibrate` picks the factor by which an interval, widened or narrowed about
its median, covers its nominal share of points it was not trained on (split
conformal; used by the eval and by the CSV command).

The functions take `xp` (numpy or jax.numpy), so one definition serves the
jitted eval and the baselines on the host.
"""

import numpy as np

NAMES = ('mase', 'smape', 'pinball', 'coverage')
# The factors an interval may be widened by about its median (calibrate).
FACTORS = tuple(round(0.5 + 0.05 * i, 2) for i in range(71))  # 0.5 ... 4.0


def sums(xp, low, median, high, y, mask, scale, levels):
  """Per-window sums of each metric's numerator, and the point count.

  Args:
    xp: numpy or jax.numpy.
    low, median, high: [B, H] the lowest quantile, the median, the highest.
    y: [B, H] the true values.
    mask: [B, H] 1 where the target is known and counts.
    scale: [B] the MASE scale of each window's series.
    levels: (low, 0.5, high) quantile levels.

  Returns:
    {name: [B] sum over the window's points, 'points': [B]}.
  """
  scale = scale[:, None]
  error = xp.abs(y - median)
  denom = xp.abs(y) + xp.abs(median)
  smape = xp.where(denom > 0, 200.0 * error / xp.where(denom > 0, denom, 1), 0)
  loss = 0.0
  for level, pred in zip(levels, (low, median, high), strict=False):
    diff = y - pred
    loss = loss + xp.maximum(level * diff, (level - 1.0) * diff)
  inside = (low <= y) & (y <= high)
  per_point = {
    'mase': error / scale,
    'smape': smape,
    'pinball': loss / (len(levels) * scale),
    'coverage': inside.astype(y.dtype),
  }
  out = {k: xp.sum(v * mask, axis=1) for k, v in per_point.items()}
  out['points'] = xp.sum(mask, axis=1)
  return out


def finalize(totals):
  """{name: sum, 'points': n} -> {name: mean} (NaN without points)."""
  points = float(totals['points'])
  return {
    k: (float(totals[k]) / points if points else float('nan')) for k in NAMES
  }


def widen(low, median, high, factor):
  """(low, high) of the interval scaled by `factor` about the median
  (arrays or scalars that broadcast, numpy or jax.numpy)."""
  return median - factor * (median - low), median + factor * (high - median)


def calibrate(covered, points: float, interval: float) -> int:
  """The index in FACTORS of the calibrated widening factor.

  Args:
    covered: float[C] the calibration points inside the interval widened by
      each factor.
    points: n, the calibration points.
    interval: the nominal coverage, e.g. 0.8.

  Returns:
    The smallest factor whose coverage is at least min(1, interval *
    (1 + 1 / n)) (split conformal), the largest if none is; 1.0's index
    without calibration points.
  """
  if not points:
    return FACTORS.index(1.0)
  target = min(1.0, interval * (1.0 + 1.0 / points))
  reached = np.flatnonzero(np.asarray(covered) / points >= target - 1e-9)
  return int(reached[0]) if len(reached) else len(FACTORS) - 1
