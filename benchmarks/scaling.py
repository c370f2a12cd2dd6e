r"""How forward time and memory grow with the number of inputs M.

  python -m benchmarks.scaling --impls=straightforward,einsum,chunked

runs one encoder forward (128 latents x 256 channels, one cross-attention
from M inputs of 64 channels, then 4 self-attention layers) at M = 1k ... 1M,
each size and implementation in a fresh worker process, and fits
time ~ M^a and memory ~ M^b by least squares in log-log space over
M >= --fit_from: b_rss for the process's peak RSS (which has a constant
floor: interpreter, libraries, code), b_xla for XLA's buffers (arguments plus
the peak of temporaries). 'straightforward' is DeepMind's formulation
(`perceiver_io.testing.reference`); the others are `attend` implementations
in our encoder.
"""

import json
import subprocess
import sys

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list(
  'impls',
  ['straightforward', 'einsum', 'chunked'],
  "'straightforward' or attend implementations.",
)
flags.DEFINE_list(
  'sizes', [str(4**i * 1024) for i in range(6)], 'Numbers of inputs M.'
)
flags.DEFINE_integer('fit_from', 16384, 'Fit exponents over M >= this.')
flags.DEFINE_integer('channels', 64, 'Input channels.')
flags.DEFINE_integer('repeats', 3, 'Timed calls per point (median).')
flags.DEFINE_string('out', None, 'Append JSON lines here.')
flags.DEFINE_string('worker', None, 'Internal: one point (JSON).')
flags.DEFINE_integer('timeout', 1800, 'Seconds per point.')

ENCODER = dict(
  num_self_attends_per_block=4,
  num_blocks=1,
  z_index_dim=128,
  num_z_channels=256,
  num_cross_attend_heads=1,
  num_self_attend_heads=8,
)


def _point(spec):
  """Times one forward at one size; returns the result dict."""
  import haiku as hk
  import jax
  import jax.numpy as jnp

  from benchmarks import measure
  from perceiver_io import encoder as encoder_lib
  from perceiver_io import runtime as runtime_lib
  from perceiver_io.testing import reference

  impl, size = spec['impl'], spec['size']

  def forward(inputs):
    if impl == 'straightforward':
      encoder = reference.PerceiverEncoder(**ENCODER)
    else:
      encoder = encoder_lib.PerceiverEncoder(
        **ENCODER, runtime=runtime_lib.Runtime(attention_impl=impl)
      )
    return encoder(inputs, encoder.latents(inputs), is_training=False)

  model = hk.without_apply_rng(hk.transform(forward))
  inputs = jax.random.normal(
    jax.random.PRNGKey(0), (1, size, spec['channels']), jnp.float32
  )
  params = model.init(jax.random.PRNGKey(1), inputs)
  compiled = jax.jit(model.apply).lower(params, inputs).compile()
  jax.block_until_ready(compiled(params, inputs))
  measure.reset_peak_rss()
  median, times = measure.time_call(
    lambda: compiled(params, inputs), spec['repeats'], warmup=0
  )
  peak = measure.device_peak_bytes() or measure.peak_rss_bytes()
  return dict(
    spec,
    median_s=median,
    times_s=times,
    peak_bytes=peak,
    xla_memory=measure.xla_memory(compiled),
  )


def fit_exponent(sizes, values):
  """The slope of log(values) against log(sizes)."""
  slope, _ = np.polyfit(np.log(sizes), np.log(values), 1)
  return float(slope)


def main(argv):
  del argv
  if FLAGS.worker:
    print('RESULT ' + json.dumps(_point(json.loads(FLAGS.worker))), flush=True)
    return
  results = []
  for impl in FLAGS.impls:
    for size in (int(s) for s in FLAGS.sizes):
      spec = dict(
        impl=impl, size=size, channels=FLAGS.channels, repeats=FLAGS.repeats
      )
      command = [
        sys.executable,
        '-m',
        'benchmarks.scaling',
        f'--worker={json.dumps(spec)}',
      ]
      try:
        done = subprocess.run(
          command,
          capture_output=True,
          text=True,
          timeout=FLAGS.timeout,
          check=False,
        )
        lines = [
          line
          for line in done.stdout.splitlines()
          if line.startswith('RESULT ')
        ]
        result = (
          json.loads(lines[0][7:])
          if lines
          else dict(spec, error=(done.stderr.strip().splitlines() or ['?'])[-1])
        )
      except subprocess.TimeoutExpired:
        result = dict(spec, error='timed out')
      results.append(result)
      if FLAGS.out:
        with open(FLAGS.out, 'a') as f:
          f.write(json.dumps(result) + '\n')
      if 'error' in result:
        print(f'{impl:16s} M={size:8d}  ERROR {result["error"][:70]}')
      else:
        print(
          f'{impl:16s} M={size:8d}  {result["median_s"]:8.3f} s  '
          f'{result["peak_bytes"] / 2**30:6.2f} GB peak RSS',
          flush=True,
        )
  print(f'\nExponents over M >= {FLAGS.fit_from} (time ~ M^a, memory ~ M^b):')
  for impl in FLAGS.impls:
    points = [
      r
      for r in results
      if r['impl'] == impl and 'error' not in r and r['size'] >= FLAGS.fit_from
    ]
    if len(points) < 2:
      print(f'{impl:16s} too few points')
      continue
    sizes = [r['size'] for r in points]
    time_exp = fit_exponent(sizes, [r['median_s'] for r in points])
    rss_exp = fit_exponent(sizes, [r['peak_bytes'] for r in points])
    xla_exp = fit_exponent(
      sizes,
      [r['xla_memory']['temp'] + r['xla_memory']['arguments'] for r in points],
    )
    largest = max(points, key=lambda r: r['size'])
    print(
      f'{impl:16s} a={time_exp:.2f}  b_rss={rss_exp:.2f}  '
      f'b_xla={xla_exp:.2f}  at '
      f'M={largest["size"]}: {largest["median_s"]:.2f} s, '
      f'{largest["peak_bytes"] / 2**30:.2f} GB'
    )


if __name__ == '__main__':
  app.run(main)
