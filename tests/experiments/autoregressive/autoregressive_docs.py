"""Docs registry entries for docs/autoregressive.md.

Merged into `docs_commands_test.REGISTRY` (see `_merge_task_fragments`).
The local commands train 2 steps at batch 2 and evaluate 4 windows (on
Python's own standard library, as written); generate and the latent sweep
then read that run.
"""

import doc_commands

Names = doc_commands.Names
NotRun = doc_commands.NotRun
Run = doc_commands.Run
steps = doc_commands.steps

LOCAL = (
  'python -m experiments.autoregressive '
  '--config=configs/autoregressive.py:local --workdir=runs/ar'
)
SMALL = (
  '--config.batch_size=2',
  '--config.eval_batch_size=2',
  '--config.data.num_eval_windows=4',
)

REGISTRY = {
  'python -m experiments.autoregressive.generate': Names(
    'experiments.autoregressive.generate'
  ),
  'python -m experiments.autoregressive.latent_sweep': Names(
    'experiments.autoregressive.latent_sweep'
  ),
  LOCAL: Run(steps(2) + SMALL, expect=r'eval/ngram_bits_per_byte='),
  'python -m experiments.autoregressive '
  '--config=configs/autoregressive.py:local,context_factor=1 '
  '--workdir=runs/ar_m_equals_n': Run(
    steps(2) + SMALL, expect=r'eval/bits_per_byte='
  ),
  "python -m experiments.autoregressive.generate --checkpoint=runs/ar --prompt='def main(' --max_new_bytes=200": Run(
    ('--max_new_bytes=6',), needs=LOCAL, expect=r'def main\('
  ),
  'python -m experiments.autoregressive.latent_sweep --checkpoint=runs/ar': Run(
    ('--latents=64,256',), needs=LOCAL, expect=r'\| 256 \(trained\) \|'
  ),
  'python -m benchmarks.ar_decode': Run(
    (
      '--context=96',
      '--new_bytes=6',
      '--latents=16',
      '--long_context=1024',
      '--long_latents=32',
      '--channels=16',
    ),
    expect=r'cache speed-up',
  ),
  'python -m experiments.autoregressive '
  '--config=configs/autoregressive.py:pg19 --workdir=runs/ar_pg19 '
  '--config.data.data_dir=/data/tensorflow_datasets': NotRun(
    'needs the prepared tfds pg19 and accelerators'
  ),
  'python -m experiments.autoregressive '
  '--config=configs/autoregressive.py:imagenet64 --workdir=runs/ar_imagenet64 '
  '--config.data.data_dir=/data/tensorflow_datasets': NotRun(
    'needs the prepared tfds downsampled_imagenet/64x64 and accelerators'
  ),
}
