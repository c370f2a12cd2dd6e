r"""Multimodal autoencoding with Perceiver IO (paper Sec. 4.3).

  python -m experiments.multimodal_autoencoding \
    --config=configs/multimodal_autoencoding.py:local --workdir=runs/mmae

trains on moving sklearn digits with a sound track and reports
`eval/video_psnr`, `eval/audio_psnr` and `eval/label_top1` (label masked)
beside their baselines (`eval/*_mean_baseline`,
`eval/label_top1_majority_baseline`) in `<workdir>/metrics.jsonl`. `:paper`
is the paper's recipe on Kinetics-700. See docs/multimodal_autoencoding.md.
"""

import os

from experiments import trainer
from experiments.multimodal_autoencoding import train


def main(argv):
  from absl import flags

  del argv
  workdir = os.path.abspath(flags.FLAGS.workdir)
  trainer.run_main(flags.FLAGS.config, workdir, train.build_task)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
