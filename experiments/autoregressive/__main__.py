r"""Perceiver AR: causal byte modelling over long contexts.

  python -m experiments.autoregressive --config=configs/autoregressive.py:local \
    --workdir=runs/ar

trains a small Perceiver AR on the source files of Python's own standard
library (held out by file) and reports `eval/bits_per_byte`,
`eval/accuracy` and, on the same targets, `eval/ngram_bits_per_byte` of an
order-3 byte n-gram fitted on the training files, in
`<workdir>/metrics.jsonl`. See configs/autoregressive.py.
"""

import os

from experiments import trainer
from experiments.autoregressive import train


def main(argv):
  from absl import flags

  del argv
  workdir = os.path.abspath(flags.FLAGS.workdir)  # orbax wants absolute.
  trainer.run_main(flags.FLAGS.config, workdir, train.build_task)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
