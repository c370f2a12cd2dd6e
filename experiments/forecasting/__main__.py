r"""Time-series forecasting with Perceiver IO.

  python -m experiments.forecasting --config=configs/forecasting.py:local \
    --workdir=runs/forecasting

trains one forecaster across the bundled electricity, CO2 and wine series
and evaluates it at rolling origins beside classical baselines (see
configs/forecasting.py and docs/forecasting.md); the metrics are in
`<workdir>/metrics.jsonl`, and `python -m experiments.forecasting.report
--workdir=runs/forecasting` prints them as tables.
"""

import os

from experiments import trainer
from experiments.forecasting import train


def main(argv):
  from absl import flags

  del argv
  workdir = os.path.abspath(flags.FLAGS.workdir)
  trainer.run_main(flags.FLAGS.config, workdir, train.build_task)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
