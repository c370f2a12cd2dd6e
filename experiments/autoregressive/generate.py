r"""Continues a prompt with a trained Perceiver AR, byte by byte.

  python -m experiments.autoregressive.generate --checkpoint=runs/ar \
    --prompt='def main(' --max_new_bytes=200

loads the run's newest checkpoint (or `--step`) and samples bytes after the
prompt (`--temperature=0` is greedy; `--top_k`, `--top_p` and `--seed` as
usual). The cross-attention keys and values of the context are cached and
extended by one position per byte (`--nouse_cache` recomputes them, for
checking). A prompt longer than the context the model was trained for keeps
its last bytes, and says so. It prints the prompt and its continuation and,
on stderr, the bytes per second of the decoding loop.
"""

import codecs
import time

import jax

from experiments import runs
from perceiver_io import generation

EXPERIMENT = 'experiments.autoregressive.train'


def load(path: str, step: int | None = None):
  """(params, model kwargs, N) of the Perceiver AR run in `path`."""
  run = runs.load_run(path, step, experiment=EXPERIMENT)
  if run.config.model.get('vocab_size', 256) != 256:
    raise ValueError(
      f'The run {run.workdir} models {run.config.model.vocab_size} tokens, '
      'not bytes (an imagenet64 run?); generate writes bytes only.'
    )
  model = run.model
  kwargs = dict(model.kwargs)
  kwargs['runtime'] = model.runtime
  params = jax.tree.map(jax.numpy.asarray, run.params)
  return params, kwargs, model.num_latents


def fit_prompt(prompt: bytes, max_context: int, max_new_bytes: int) -> bytes:
  """The last bytes of `prompt` that leave room for `max_new_bytes`."""
  if not prompt:
    raise ValueError('The prompt is empty; give at least one byte.')
  if max_new_bytes < 1:
    raise ValueError(f'max_new_bytes={max_new_bytes}: generate at least one.')
  if max_new_bytes >= max_context:
    raise ValueError(
      f"max_new_bytes={max_new_bytes} does not fit the model's context of "
      f'{max_context} bytes with a prompt; use at most {max_context - 1}.'
    )
  room = max_context - max_new_bytes
  return prompt[-room:]


def main(argv):
  from absl import flags
  from absl import logging

  del argv
  f = flags.FLAGS
  if f.prompt is not None and f.prompt_file:
    raise ValueError('Give --prompt or --prompt_file, not both.')
  if f.prompt_file:
    with open(f.prompt_file, 'rb') as fh:
      prompt = fh.read()
  elif f.prompt is not None:
    prompt = f.prompt.encode('utf-8')
  else:
    raise ValueError('Give --prompt or --prompt_file.')
  params, kwargs, num_latents = load(f.checkpoint, f.step)
  max_context = kwargs.get('max_context', 8192)
  fitted = fit_prompt(prompt, max_context, f.max_new_bytes)
  if len(fitted) < len(prompt):
    logging.warning(
      'The prompt has %d bytes; the model reads %d, so its last %d are kept.',
      len(prompt),
      max_context,
      len(fitted),
    )
  start = time.perf_counter()
  out = generation.generate(
    params,
    fitted,
    model_kwargs=kwargs,
    num_latents=num_latents,
    max_new_bytes=f.max_new_bytes,
    temperature=f.temperature,
    top_k=f.top_k,
    top_p=f.top_p,
    seed=f.seed,
    stop_bytes=codecs.escape_decode(f.stop.encode('utf-8'))[0],
    use_cache=f.use_cache,
  )
  seconds = time.perf_counter() - start
  print(prompt.decode('utf-8', errors='replace'), end='')
  print(out.decode('utf-8', errors='replace'))
  logging.info(
    '%d bytes in %.2f s (%.1f bytes/s, compilation included; cache %s)',
    len(out),
    seconds,
    len(out) / max(seconds, 1e-9),
    'on' if f.use_cache else 'off',
  )


def define_flags():
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'A Perceiver AR run (its --workdir).')
  flags.DEFINE_integer('step', None, 'The checkpoint step; default: newest.')
  flags.DEFINE_string('prompt', None, 'The prompt text (UTF-8).')
  flags.DEFINE_string(
    'prompt_file', '', 'Or: a file whose bytes are the prompt.'
  )
  flags.DEFINE_integer('max_new_bytes', 200, 'How many bytes to generate.')
  flags.DEFINE_float('temperature', 0.8, '0: greedy.')
  flags.DEFINE_integer(
    'top_k', 0, 'Sample from the k likeliest bytes (0: all).'
  )
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1: all).')
  flags.DEFINE_integer('seed', 0, 'The sampling seed.')
  flags.DEFINE_string(
    'stop', '', 'Stop after any of these bytes (escapes such as \\n work).'
  )
  flags.DEFINE_bool('use_cache', True, 'Cache the context keys and values.')
  flags.mark_flags_as_required(['checkpoint'])


if __name__ == '__main__':
  define_flags()
  from experiments import cli

  cli.run(main, tool=True)
