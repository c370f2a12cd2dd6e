r"""GLUE fine-tuning of a pretrained byte-level Perceiver IO (paper App. F.4).

One task:

  python -m experiments.glue --config=configs/glue.py:mrpc \
    --config.init_from=language_perceiver_io_bytes.pickle \
    --workdir=runs/glue/mrpc

All tasks, then the GLUE average (`<workdir>/summary.json`):

  python -m experiments.glue --config=configs/glue.py \
    --config.init_from=runs/mlm --tasks=all --workdir=runs/glue

`--grid` runs the paper's grid (batch {16, 32, 64} x learning rate {1e-4,
5e-5, 2e-5, 1e-5}) for each task, in `<workdir>/<task>/bs<B>_lr<LR>`, and
keeps the best dev score per task, as the paper does. `init_from` is one of
our masked-LM workdirs or DeepMind's language checkpoint: its embedding,
input position table and encoder are loaded; the one-query decoder and the
2-layer tanh head start fresh.
"""

import os

from experiments import host_memory
from experiments import trainer
from experiments.glue import train


def main(argv):
  from absl import flags

  del argv
  flags_ = flags.FLAGS
  config = flags_.config
  workdir = os.path.abspath(flags_.workdir)  # orbax wants absolute paths.
  if not flags_.tasks and not flags_.grid:
    trainer.run_main(config, workdir, train.build_task)  # Keeps freed memory.
    return
  host_memory.keep_freed_memory()
  tasks = train.parse_tasks(flags_.tasks or config.task)
  summary = train.run_tasks(config, workdir, tasks, flags_.grid)
  print(train.format_summary(summary), flush=True)


if __name__ == '__main__':
  from absl import flags

  trainer.define_flags()
  flags.DEFINE_string('tasks', '', "Comma-separated GLUE tasks, or 'all'.")
  flags.DEFINE_bool(
    'grid', False, "Run the paper's batch x learning-rate grid."
  )
  from experiments import cli

  cli.run(main)
