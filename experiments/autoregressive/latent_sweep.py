r"""Bits per byte of one trained Perceiver AR at several latent counts N.

  python -m experiments.autoregressive.latent_sweep --checkpoint=runs/ar

evaluates the run's newest checkpoint on its config's eval windows with
N = N0/4, N0/2, N0, 2 N0 and 4 N0 latents (N0 the trained count; those above
the context are left out), or `--latents=64,256,...`. The parameters do not
depend on N: the model reads the same context of M bytes and predicts the
last N of each window, so a larger N scores more targets per window (the
earlier ones with less context before them). Each row gives, on exactly its
own targets, the model's bits per byte, the order-3 n-gram's and the
accuracy; `--out=FILE` also writes the rows as JSON.
"""

import json
import time

import jax
import numpy as np

from experiments import runs
from experiments.autoregressive import train

EXPERIMENT = 'experiments.autoregressive.train'


def default_latents(trained: int, context: int) -> list[int]:
  """N0/4 .. 4 N0, within [1, context]."""
  values = [max(1, trained // 4), max(1, trained // 2), trained]
  values += [trained * 2, trained * 4]
  return sorted({n for n in values if n <= context})


def sweep(run, latents, batch_size=8):
  """[{'num_latents', 'bits_per_byte', 'ngram_bits_per_byte', ...}]."""
  config = run.config
  context = int(config.model.max_context)
  for n in latents:
    if not 1 <= n <= context:
      raise ValueError(
        f'--latents: N={n} must be in [1, the context {context}].'
      )
  windows = train.eval_set(config)
  total = len(windows['tokens'])
  params = jax.tree.map(jax.numpy.asarray, run.params)
  rows = []
  for n in latents:
    eval_fn = jax.jit(train.make_eval_fn(run.model, n))
    sums = None
    start = time.perf_counter()
    for lo in range(0, total, batch_size):
      batch = {k: v[lo : lo + batch_size] for k, v in windows.items()}
      real = len(batch['tokens'])
      pad = batch_size - real
      if pad:  # Padded rows carry mask 0.
        batch = {
          k: np.concatenate([v, np.repeat(v[-1:], pad, 0)])
          for k, v in batch.items()
        }
      batch['mask'] = (np.arange(batch_size) < real).astype(np.float32)
      out = jax.device_get(eval_fn(params, run.state, batch))
      sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
    row = train.eval_finalize(sums)
    row['num_latents'] = n
    row['seconds'] = time.perf_counter() - start
    rows.append(row)
  return rows


def main(argv):
  from absl import flags

  del argv
  f = flags.FLAGS
  run = runs.load_run(f.checkpoint, f.step, experiment=EXPERIMENT)
  trained = int(run.config.model.num_latents)
  context = int(run.config.model.max_context)
  latents = (
    [int(x) for x in f.latents]
    if f.latents
    else default_latents(trained, context)
  )
  rows = sweep(run, latents, f.batch_size)
  print(
    f'Run {run.workdir}, step {run.step}: context M = {context}, trained '
    f'with N = {trained}.'
  )
  print(
    '| N | bits/byte | n-gram bits/byte (same targets) | accuracy | targets |'
  )
  print('| --- | --- | --- | --- | --- |')
  for row in rows:
    mark = ' (trained)' if row['num_latents'] == trained else ''
    print(
      f'| {row["num_latents"]}{mark} | {row["bits_per_byte"]:.3f} | '
      f'{row["ngram_bits_per_byte"]:.3f} | {row["accuracy"]:.3f} | '
      f'{int(row["targets"])} |'
    )
  if f.out:
    with open(f.out, 'w') as fh:
      json.dump([{**r, 'step': run.step} for r in rows], fh, indent=1)


def define_flags():
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'A Perceiver AR run (its --workdir).')
  flags.DEFINE_integer('step', None, 'The checkpoint step; default: newest.')
  flags.DEFINE_list('latents', [], 'N values; default N0/4 .. 4 N0.')
  flags.DEFINE_integer('batch_size', 8, 'Eval windows per batch.')
  flags.DEFINE_string('out', '', 'Optional JSON file for the rows.')
  flags.mark_flags_as_required(['checkpoint'])


if __name__ == '__main__':
  define_flags()
  from experiments import cli

  cli.run(main, tool=True)
