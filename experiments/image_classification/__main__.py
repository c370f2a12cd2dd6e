r"""Image classification with Perceiver IO: ImageNet, and digits on a laptop.

  python -m experiments.image_classification \
    --config=configs/image_classification.py:digits --workdir=runs/digits

trains the embedded digits config to >= 0.96 held-out accuracy in minutes
on a CPU. `:fourier`, `:learned` and `:conv` are the paper's ImageNet runs;
`--config.mode=eval --config.init_from=<released .pystate>` evaluates
DeepMind's checkpoints. See docs/training.md.
"""

from experiments import trainer
from experiments.image_classification import train


def main(argv):
  from absl import flags

  del argv
  flags_ = flags.FLAGS
  trainer.run_main(flags_.config, flags_.workdir, train.build_task)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
