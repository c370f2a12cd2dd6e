r"""Byte-level masked language modelling with Perceiver IO (paper Sec. 4.1).

  python -m experiments.masked_lm --config=configs/masked_lm.py:local \
    --workdir=runs/mlm

trains a small model on Python's own reference documentation and reports
`eval/masked_accuracy` (accuracy on the masked bytes of held-out text) and
`eval/loss` in `<workdir>/metrics.jsonl`. `:paper` is the paper's
pretraining on C4 and Wikipedia. See docs/masked_lm.md.
"""

import os

from experiments import trainer
from experiments.masked_lm import train


def main(argv):
  from absl import flags

  del argv
  # orbax wants absolute paths; `--workdir=runs/mlm` is relative.
  workdir = os.path.abspath(flags.FLAGS.workdir)
  trainer.run_main(flags.FLAGS.config, workdir, train.build_task)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
