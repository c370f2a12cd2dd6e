r"""Optical flow with Perceiver IO: training and Sintel/KITTI evaluation.

  python -m experiments.optical_flow \
    --config=configs/optical_flow.py:local --workdir=runs/flow

trains a small model on synthetic warped-photo pairs on a CPU and logs
`eval/epe` and `eval/zero_flow_epe` (the error of predicting no motion on the
same held-out pairs) to `runs/flow/metrics.jsonl`. The paper's recipe trains
on AutoFlow (`:paper`, set `--config.data.root`). Evaluating DeepMind's
released weights on the benchmarks, with tiled full-frame inference:

  python -m experiments.optical_flow --config=configs/optical_flow.py:paper \
    --config.mode=eval --config.init_from=optical_flow_checkpoint.pystate \
    --config.eval.sintel_root=/data/Sintel --config.eval.kitti_root=/data/KITTI \
    --workdir=runs/flow_eval

See experiments/optical_flow/train.py for the batches and the metrics.
"""

from experiments import trainer
from experiments.optical_flow import train


def main(argv):
  from absl import flags

  del argv
  train.run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  trainer.define_flags()
  from experiments import cli

  cli.run(main)
