"""Docs registry entries for docs/multimodal_autoencoding.md.

Merged into `docs_commands_test.REGISTRY` (see `_merge_task_fragments`).
The local command trains 2 steps on 4 clips; the own-video command then
autoencodes a clip written with PyAV.
"""

import multimodal_autoencoding_kinetics_test as kinetics_test

import doc_commands

Names = doc_commands.Names
NotRun = doc_commands.NotRun
Run = doc_commands.Run
steps = doc_commands.steps

LOCAL = (
  'python -m experiments.multimodal_autoencoding '
  '--config=configs/multimodal_autoencoding.py:local --workdir=runs/mmae'
)
SMALL = (
  '--config.batch_size=4',
  '--config.eval_batch_size=4',
  '--config.data.num_eval_examples=4',
)

REGISTRY = {
  'python -m experiments.multimodal_autoencoding.autoencode': Names(
    'experiments.multimodal_autoencoding.autoencode'
  ),
  LOCAL: Run(steps(2) + SMALL, expect=r'eval/video_psnr_mean_baseline='),
  'python -m experiments.multimodal_autoencoding.autoencode '
  '--checkpoint=runs/mmae --video=in.mp4 --output_dir=out': Run(
    needs=LOCAL,
    files=(('in.mp4', 'mmae_video'),),
    expect=r'1 window\(s\): video PSNR',
  ),
  'python -m experiments.multimodal_autoencoding '
  '--config=configs/multimodal_autoencoding.py:paper --workdir=runs/mmae_paper '
  '--config.data.kinetics_dir=/data/kinetics700 '
  '--config.data.annotations_csv=/data/kinetics700/annotations.csv': NotRun(
    'needs Kinetics-700 (hundreds of GB) and accelerators'
  ),
  'python -m experiments.multimodal_autoencoding '
  '--config=configs/multimodal_autoencoding.py:paper --workdir=runs/mmae_eval '
  '--config.mode=eval '
  '--config.init_from=video_autoencoding_checkpoint.pystate '
  '--config.data.kinetics_dir=/data/kinetics700 '
  '--config.data.annotations_csv=/data/kinetics700/annotations.csv': NotRun(
    'needs the released file and Kinetics-700; a released-format file is '
    'loaded into eval and training by multimodal_autoencoding_test'
  ),
}

FILES = {
  'mmae_video': lambda p: kinetics_test.write_video(str(p), 9),
}
