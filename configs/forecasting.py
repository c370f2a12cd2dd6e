r"""Time-series forecasting with Perceiver IO: any history in, any times out.

  python -m experiments.forecasting --config=configs/forecasting.py:local \
    --workdir=runs/forecasting

trains one forecaster across three real series that ship with pmdarima and
statsmodels (half-hourly electricity demand, weekly Mauna Loa CO2 with gaps,
monthly Australian wine sales; no download) and evaluates it at rolling
origins on their held-out ends beside seasonal naive, AutoETS, AutoTheta and
MSTL or AutoARIMA from statsforecast: `eval/<series>_mase`, `_smape`,
`_pinball`, `_coverage` for ours and `eval/<series>_<metric>_<baseline>` for
each baseline, and the same with `_thinned_` for histories with half of
their observations dropped. `python -m experiments.forecasting.report
--workdir=runs/forecasting` prints the tables. See docs/forecasting.md.

Config argument: `local` (default) and `,tiny` (test sizes).

Per series (`config.data.series.<name>`): `context` and `horizon` in steps,
`test_length` steps held out at the end, `origin_stride` steps between
rolling origins, `season_lengths` in steps (shortest first), `phases` (the
names of `config.data.phases` the series' tokens carry; the others are 0),
`baselines`, `calibration_length` (steps before the held-out part, not
trained on, whose forecasts calibrate our interval's width; 0: none) and
`weight` (the series' share of training windows, relative).
"""

import ml_collections

from experiments import config_utils
from perceiver_io import runtime as runtime_lib

SERIES = dict(
  electricity=dict(
    context=672,  # Two weeks of half-hours.
    horizon=48,  # One day.
    test_length=672,  # The last two weeks: 14 origins, one per day.
    origin_stride=48,
    season_lengths=(48, 336),
    # Not 'year': twelve weeks of one summer would let the model look a
    # value up by its date instead of reading the history.
    phases=('day', 'week'),
    baselines=('seasonal_naive', 'autoets', 'autotheta', 'mstl'),
    weight=1.0,
    # No calibration part (calibration_length=0): the week before the test
    # part is atypical (its seasonal naive error is twice the others'), and
    # holding it out of training cost more than calibrating on it gained.
  ),
  co2=dict(
    context=208,  # Four years of weeks.
    horizon=52,  # One year.
    test_length=208,  # The last four years: 13 origins, one per quarter.
    origin_stride=13,
    season_lengths=(52,),
    phases=('year',),
    baselines=('seasonal_naive', 'autoets', 'autotheta', 'mstl'),
    weight=1.0,
  ),
  wine=dict(
    context=48,  # Four years of months.
    horizon=12,
    test_length=36,  # The last three years: 9 origins, one per quarter.
    origin_stride=3,
    season_lengths=(12,),
    phases=('year',),
    baselines=('seasonal_naive', 'autoets', 'autotheta', 'autoarima'),
    # 140 training months against thousands of steps: sampled less, so it
    # is not learnt by heart.
    weight=0.5,
  ),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config; see the module docstring."""
  args = config_utils.parse_arg(arg, variant='local', tiny=False)
  if args.variant != 'local':
    raise ValueError(f"Unknown variant {args.variant!r}; use 'local'.")
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.model = ml_collections.ConfigDict(
    dict(
      quantiles=(0.1, 0.5, 0.9),
      num_latents=64,
      latent_channels=128,
      num_self_attends=4,
      num_heads=4,
      num_cross_attend_heads=1,
      num_decoder_heads=1,
      num_time_bands=16,
      max_resolution=64.0,
      num_harmonics=4,
      widening_factor=2,
      dropout_prob=0.0,
      # Queries carry the observations whole days/weeks/years before them.
      seasonal_lags=True,
      runtime=runtime_lib.config(),
    )
  )
  config.data = ml_collections.ConfigDict(
    dict(
      datasets=tuple(SERIES),
      series=SERIES,
      phases=('day', 'week', 'year'),
      # Training histories are thinned at random: with this probability a
      # window drops a uniform share in [0, thin_max_rate) of its
      # observations.
      thin_prob=0.5,
      thin_max_rate=0.6,
      # The share of training windows that use the generic channel 0 (what
      # a new series gets in `forecast`) instead of their own.
      channel_dropout=0.2,
      # The thinned evaluation drops this share of observations.
      eval_thin_rate=0.5,
      eval_thin_seed=0,
      # '' : ~/.cache/perceiver_io/forecasting.
      baseline_cache_dir='',
      # Fit the baselines in a separate process while the model trains
      # (False: in this process, at the first eval).
      baselines_in_background=True,
    )
  )
  config_utils.add_trainer_fields(
    config,
    batch_size=32,
    num_train_steps=1000,
    log_every_steps=100,
    eval_every_steps=500,
    checkpoint_every_steps=500,
    eval_batch_size=32,
  )
  config.optimizer.update(
    dict(name='adamw', weight_decay=1e-4, max_grad_norm=1.0, eps=1e-8)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=1e-3,
      scale_by_batch=False,
      warmup_steps=100,
      end_value=0.0,
    )
  )
  if args.tiny:
    _tiny(config)
  return config


def _tiny(config):
  """Test sizes: short windows, two origins, the seasonal naive only."""
  config.model.update(
    dict(
      num_latents=4,
      latent_channels=16,
      num_self_attends=1,
      num_heads=2,
      num_time_bands=2,
      num_harmonics=1,
    )
  )
  for name, series in config.data.series.items():
    horizon = 6 if name != 'wine' else 3
    series.update(
      dict(
        context=24,
        horizon=horizon,
        test_length=2 * horizon,
        origin_stride=horizon,
        baselines=('seasonal_naive',),
        calibration_length=horizon,
      )
    )
  config.data.series.electricity.season_lengths = (48,)
  config.data.baselines_in_background = False
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.schedule.warmup_steps = 1
