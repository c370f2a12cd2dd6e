"""The forecaster: a Perceiver IO from observation tokens to quantiles.

Shape letters: B windows, M context tokens, H query times, P named phases,
N latents, D latent channels, Q quantiles.

Each observed (time, channel, value) is one input token: Fourier features of
its relative time, sine/cosine harmonics of its phases (time of day, week,
year), the scaled value and a learned channel embedding, projected to D.
Absent observations are masked out of the cross-attention, so a dropped
observation changes the forecast only through its own token. The latents
(the library's `PerceiverEncoder`) are decoded by the library's
`BasicDecoder` from queries built the same way from the requested times and
channels, without a value: any times, one or many horizons, in one pass.

Seasonal lags (`seasonal_lags=True`): for each named period (a day, a week,
a year) a query also carries the observations found one or more whole
periods before its time: the most recent one, the mean of all of them, and
whether there is any. They are looked up here, among the unmasked input
tokens only (within half a step of t - k * period, k >= 1), so a masked or
absent observation is never read, and a query between the steps of the
grid gets whatever lies a period before it. The lags enter the query
embedding and, through a linear layer, the outputs directly: the model
learns a correction of the seasonal profile rather than rebuilding it from
the latents.

The decoder's outputs are made monotone in the quantile level: the median
is one output, and the others are reached from it by adding (above) or
subtracting (below) cumulative softplus steps, so the quantiles are ordered
by construction.
"""

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_io import decoders
from perceiver_io import encoder as encoder_lib
from perceiver_io import position_encoding
from perceiver_io import runtime as runtime_lib

INPUT_KEYS = ('x_time', 'x_value', 'x_phase', 'x_channel', 'x_mask')
QUERY_KEYS = ('q_time', 'q_phase', 'q_channel', 'q_mask')
LAG_KEYS = ('period', 'half_step')


def time_features(time, num_bands, max_resolution):
  """[B, T] relative times -> [B, T, 1 + 2K] Fourier features."""
  b, t = time.shape
  flat = jnp.reshape(time, (b * t, 1))
  features = position_encoding.generate_fourier_features(
    flat, num_bands, max_resolution=(max_resolution,)
  )
  return jnp.reshape(features, (b, t, -1))


def phase_features(phase, num_harmonics):
  """[B, T, P] phases in [0, 1) -> [B, T, 2 P K] harmonics."""
  k = jnp.arange(1, num_harmonics + 1, dtype=phase.dtype)
  angle = 2 * jnp.pi * phase[..., None] * k  # [B, T, P, K]
  features = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1)
  return jnp.reshape(features, phase.shape[:2] + (-1,))


def seasonal_lags(inputs, queries):
  """The observations whole periods before each query.

  Args:
    inputs: 'x_time', 'x_value', 'x_mask': [B, M].
    queries: 'q_time': [B, H]; 'period': [B, P] in time units (0: none);
      'half_step': [B].

  Returns:
    [B, H, 3 P]: for each period, the value of the most recent unmasked
    observation within half a step of q - k * period (k >= 1), the mean of
    all of them, and 1 if there is any (the first two are 0 if not).
  """
  x_time, x_value = inputs['x_time'], inputs['x_value']
  mask = inputs['x_mask'] > 0
  period = queries['period'][:, None, None, :]  # [B, 1, 1, P]
  half = queries['half_step'][:, None, None, None]
  lag = queries['q_time'][:, :, None] - x_time[:, None, :]  # [B, H, M]
  lag = lag[..., None]
  safe = jnp.where(period > 0, period, 1.0)
  cycles = jnp.round(lag / safe)
  hit = (
    (jnp.abs(lag - cycles * safe) <= half)
    & (cycles >= 1)
    & (period > 0)
    & mask[:, None, :, None]
  )  # [B, H, M, P]
  count = jnp.sum(hit, axis=2)  # [B, H, P]
  value = x_value[:, None, :, None]
  mean = jnp.sum(jnp.where(hit, value, 0.0), 2) / jnp.maximum(count, 1)
  recent = jnp.argmax(jnp.where(hit, x_time[:, None, :, None], -jnp.inf), 2)
  last = jnp.take_along_axis(
    jnp.broadcast_to(value, hit.shape), recent[:, :, None, :], axis=2
  )[:, :, 0]
  present = count > 0
  last = jnp.where(present, last, 0.0)
  features = jnp.stack([last, mean, present.astype(last.dtype)], -1)
  features = jax.lax.stop_gradient(features)  # [B, H, P, 3]
  return jnp.reshape(features, features.shape[:2] + (-1,))


def ordered_quantiles(raw, median_index):
  """[..., Q] raw outputs -> [..., Q] non-decreasing quantiles.

  `raw[..., median_index]` is the median; each quantile above (below) it is
  the previous one plus (minus) the softplus of its raw output.
  """
  median = raw[..., median_index : median_index + 1]
  up = jnp.cumsum(jax.nn.softplus(raw[..., median_index + 1 :]), -1)
  down = jnp.cumsum(jax.nn.softplus(raw[..., :median_index][..., ::-1]), -1)
  return jnp.concatenate([median - down[..., ::-1], median, median + up], -1)


class Forecaster(hk.Module):
  """Observation tokens and query times -> [B, H, Q] scaled quantiles."""

  def __init__(
    self,
    *,
    num_channels: int,
    quantiles=(0.1, 0.5, 0.9),
    num_latents: int = 64,
    latent_channels: int = 128,
    num_self_attends: int = 4,
    num_heads: int = 4,
    num_cross_attend_heads: int = 1,
    num_decoder_heads: int = 1,
    num_time_bands: int = 16,
    max_resolution: float = 64.0,
    num_harmonics: int = 4,
    widening_factor: int = 2,
    dropout_prob: float = 0.0,
    seasonal_lags: bool = False,
    runtime: runtime_lib.Runtime = runtime_lib.DEFAULT,
    name: str = 'forecaster',
  ):
    super().__init__(name=name)
    quantiles = tuple(float(q) for q in quantiles)
    if list(quantiles) != sorted(set(quantiles)) or not all(
      0 < q < 1 for q in quantiles
    ):
      raise ValueError(
        f'quantiles={quantiles} must be increasing, distinct, in (0, 1).'
      )
    if 0.5 not in quantiles:
      raise ValueError(
        f'quantiles={quantiles} must include 0.5: the point forecast is '
        'the median.'
      )
    if num_channels < 1:
      raise ValueError(f'num_channels={num_channels} must be positive.')
    self._num_channels = num_channels
    self._median = quantiles.index(0.5)
    self._num_quantiles = len(quantiles)
    self._num_time_bands = num_time_bands
    self._max_resolution = max_resolution
    self._num_harmonics = num_harmonics
    self._latent_channels = latent_channels
    self._runtime = runtime
    self._encoder_kwargs = dict(
      num_self_attends_per_block=num_self_attends,
      num_blocks=1,
      z_index_dim=num_latents,
      num_z_channels=latent_channels,
      num_cross_attend_heads=num_cross_attend_heads,
      num_self_attend_heads=num_heads,
      cross_attend_widening_factor=widening_factor,
      self_attend_widening_factor=widening_factor,
      dropout_prob=dropout_prob,
    )
    self._num_decoder_heads = num_decoder_heads
    self._seasonal_lags = seasonal_lags

  def _embed(self, time, phase, channel, value, name, extra=None):
    features = [
      time_features(time, self._num_time_bands, self._max_resolution),
      phase_features(phase, self._num_harmonics),
    ]
    if value is not None:
      features.append(value[..., None])
    if extra is not None:
      features.append(extra)
    x = hk.Linear(self._latent_channels, name=f'{name}_projection')(
      jnp.concatenate(features, -1)
    )  # [B, T, D]
    table = hk.Embed(
      self._num_channels, self._latent_channels, name=f'{name}_channel'
    )
    return x + table(channel)

  def __call__(self, inputs, queries, *, is_training):
    """Forecasts.

    Args:
      inputs: {'x_time': [B, M], 'x_value': [B, M], 'x_phase': [B, M, P],
        'x_channel': int[B, M], 'x_mask': [B, M]} (windows.py).
      queries: {'q_time': [B, H], 'q_phase': [B, H, P], 'q_channel':
        int[B, H], 'q_mask': [B, H]}, with seasonal lags also {'period':
        [B, P], 'half_step': [B]}.
      is_training: enables dropout.

    Returns:
      [B, H, Q] quantiles of the scaled value, non-decreasing in Q.
    """
    for key in INPUT_KEYS:
      if key not in inputs:
        raise ValueError(f'Forecaster inputs lack {key!r}; need {INPUT_KEYS}.')
    query_keys = QUERY_KEYS + (LAG_KEYS if self._seasonal_lags else ())
    for key in query_keys:
      if key not in queries:
        raise ValueError(f'Forecaster queries lack {key!r}; need {query_keys}.')
    b, m = inputs['x_time'].shape
    if inputs['x_phase'].shape[:2] != (b, m) or inputs['x_value'].shape != (
      b,
      m,
    ):
      raise ValueError(
        'x_time, x_value and x_phase must share [B, M]; got '
        f'{inputs["x_time"].shape}, {inputs["x_value"].shape}, '
        f'{inputs["x_phase"].shape}.'
      )
    if inputs['x_phase'].shape[-1] != queries['q_phase'].shape[-1]:
      raise ValueError(
        'Inputs and queries must have the same phases; got '
        f'{inputs["x_phase"].shape[-1]} and {queries["q_phase"].shape[-1]}.'
      )
    x = self._embed(
      inputs['x_time'],
      inputs['x_phase'],
      inputs['x_channel'],
      inputs['x_value'],
      'input',
    )  # [B, M, D]
    if self._seasonal_lags:
      if queries['period'].shape != (b, inputs['x_phase'].shape[-1]):
        raise ValueError(
          f'period must be [B, P] = {(b, inputs["x_phase"].shape[-1])}; got '
          f'{queries["period"].shape}.'
        )
      lags = seasonal_lags(inputs, queries)  # [B, H, 3 P]
    else:
      lags = None
    q = self._embed(
      queries['q_time'],
      queries['q_phase'],
      queries['q_channel'],
      None,
      'query',
      extra=lags,
    )  # [B, H, D]
    encoder = encoder_lib.PerceiverEncoder(
      runtime=self._runtime, **self._encoder_kwargs
    )
    z = encoder(
      x,
      encoder.latents(x),
      is_training=is_training,
      input_mask=inputs['x_mask'],
    )  # [B, N, D]
    decoder = decoders.BasicDecoder(
      output_num_channels=self._num_quantiles,
      position_encoding_type='none',
      num_heads=self._num_decoder_heads,
      use_query_residual=True,
      runtime=self._runtime,
    )
    raw = decoder(q, z, is_training=is_training)  # [B, H, Q]
    if lags is not None:
      raw += hk.Linear(self._num_quantiles, name='lag_output')(lags)
    return ordered_quantiles(raw, self._median)


@dataclasses.dataclass(frozen=True)
class Model:
  """`Forecaster` as pure functions for `trainer.Task`.

  `init(rng, *, is_training, **batch)` and `apply(params, state, rng, *,
  is_training, **batch) -> ([B, H, Q] scaled quantiles, state)`; `batch`
  holds the arrays of windows.py (extra keys are ignored).
  """

  kwargs: tuple

  @functools.cached_property
  def _transform(self):
    def forward(inputs, queries, is_training):
      return Forecaster(**dict(self.kwargs))(
        inputs, queries, is_training=is_training
      )

    return hk.transform_with_state(forward)

  @staticmethod
  def _split(batch):
    # Missing keys are named by `Forecaster.__call__`.
    inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
    queries = {k: batch[k] for k in QUERY_KEYS + LAG_KEYS if k in batch}
    return inputs, queries

  def init(self, rng, *, is_training=False, **batch):
    inputs, queries = self._split(batch)
    return self._transform.init(rng, inputs, queries, is_training)

  def apply(self, params, state, rng, *, is_training=False, **batch):
    inputs, queries = self._split(batch)
    return self._transform.apply(
      params, state, rng, inputs, queries, is_training
    )


def pinball(quantiles_pred, y, levels):
  """[..., Q] predictions, [...] targets, Q levels -> [..., Q] pinball loss."""
  levels = jnp.asarray(np.asarray(levels, np.float32))
  error = y[..., None] - quantiles_pred
  return jnp.maximum(levels * error, (levels - 1.0) * error)
