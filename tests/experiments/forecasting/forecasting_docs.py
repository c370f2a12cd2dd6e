"""Docs registry entries for docs/forecasting.md.

Merged into `docs_commands_test.REGISTRY` (see `_merge_task_fragments`).
The local command trains 2 steps at batch 4 on the three bundled series, as
written, and evaluates one origin of each beside the seasonal naive (the
statistical baselines' seconds of fitting are left to
forecasting_data_test); the report and the CSV command then read that run.
"""

import forecasting_train_test as train_test

import doc_commands

Names = doc_commands.Names
NotRun = doc_commands.NotRun
Run = doc_commands.Run
steps = doc_commands.steps

LOCAL = (
  'python -m experiments.forecasting '
  '--config=configs/forecasting.py:local --workdir=runs/forecasting'
)
SMALL = (
  '--config.batch_size=4',
  '--config.eval_batch_size=4',
  '--config.data.baseline_cache_dir=baseline_cache',
) + tuple(
  flag
  for name, horizon in (('electricity', 48), ('co2', 52), ('wine', 12))
  for flag in (
    f'--config.data.series.{name}.test_length={horizon}',
    f"--config.data.series.{name}.baselines=('seasonal_naive',)",
  )
)

REGISTRY = {
  'python -m experiments.forecasting.report': Names(
    'experiments.forecasting.report'
  ),
  'python -m experiments.forecasting.forecast': Names(
    'experiments.forecasting.forecast'
  ),
  LOCAL: Run(steps(2) + SMALL, expect=r'eval/electricity_mase_seasonal_naive='),
  'python -m experiments.forecasting.report --workdir=runs/forecasting': Run(
    needs=LOCAL, expect=r'\| perceiver_io \|'
  ),
  'python -m experiments.forecasting.forecast --checkpoint=runs/forecasting '
  '--csv=demand.csv --time_column=time --value_columns=load --horizon=48 '
  '--out=forecast.csv --plot=forecast.png': Run(
    needs=LOCAL,
    files=(('demand.csv', 'forecasting_csv'),),
    expect=r'load: interval x [0-9.]+, calibrated on 384 points[\s\S]*'
    r'Wrote forecast.png',
  ),
}

FILES = {
  'forecasting_csv': lambda p: train_test.write_csv(str(p), length=400),
}
