r"""Speed and memory of the released architectures, side by side.

  python -m benchmarks.run --arch=language_perceiver_io_bytes --batch_size=2

prints, for each implementation ('ours', 'straightforward': DeepMind's
formulation of the same parameters, 'pytorch': HuggingFace's port) and mode
(forward, train = forward + backward + Adam), the median time, examples/s,
peak memory, compile time, analytic FLOPs per example and the fraction of the
matmul peak that this process measured just before. Each implementation runs
in its own worker process (clean peak-memory figures); `--rounds=2`
alternates them twice, so ratios see the same load. Results are appended as
JSON lines to `--out`.

Other uses:
  --experiment_config=configs/image_classification.py:digits  (config.model)
  --image_size=1000,1000  (ImageNet architectures at another resolution)
  --override=runtime.remat_blocks=True  (any model config key; repeatable)
  --device  (GPU: ours only, float32 and bf16, cuDNN ('auto') vs 'chunked')
"""

import json
import subprocess
import sys
import time

from absl import app
from absl import flags

from experiments import host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'arch',
  'language_perceiver_io_bytes',
  'A released architecture (perceiver_io.models).',
)
flags.DEFINE_string(
  'experiment_config',
  None,
  'A configs/ file[:arg] whose config.model to measure.',
)
flags.DEFINE_integer('batch_size', 1, 'Examples per step.')
flags.DEFINE_list(
  'impls',
  ['ours', 'straightforward', 'pytorch'],
  'Implementations to measure; with --interleave also '
  "'ours:<attention_impl>[:<compute_dtype>]', e.g. ours:einsum,ours:chunked "
  'or ours:auto:bfloat16.',
)
flags.DEFINE_list('modes', ['forward', 'train'], 'forward and/or train.')
flags.DEFINE_string('attention_impl', 'auto', "Ours: attend's implementation.")
flags.DEFINE_string('compute_dtype', None, "Ours: e.g. 'bfloat16'.")
flags.DEFINE_list('image_size', None, 'H,W for the ImageNet architectures.')
flags.DEFINE_multi_string('override', [], 'model.config key=value (Python).')
flags.DEFINE_integer('repeats', 3, 'Timed calls per figure (median).')
flags.DEFINE_integer('rounds', 1, 'How many times to alternate the impls.')
flags.DEFINE_bool('device', False, 'GPU mode: f32/bf16 x auto/chunked.')
flags.DEFINE_list(
  'device_variants',
  None,
  'With --device, the variants to measure instead of the default three, '
  "each '<compute_dtype>:<attention_impl>[:<key>=<value>]', the last a model "
  'config override of that variant alone, e.g. float32:auto,'
  'float32:auto:runtime.grid_inputs=False.',
)
flags.DEFINE_bool(
  'interleave',
  False,
  'Time all impls in one process, alternating calls each '
  'round (robust ratios on a loaded machine; no memory).',
)
flags.DEFINE_string('out', None, 'Append JSON lines here.')
flags.DEFINE_string('worker', None, 'Internal: run one spec (JSON).')
flags.DEFINE_integer('timeout', 3600, 'Seconds per worker.')
flags.DEFINE_bool(
  'keep_freed_memory',
  False,
  'Workers keep freed host memory (experiments.host_memory), as the '
  'experiments do; applies to every implementation alike. Off by default: '
  'it did not speed up the big models here (experiments/host_memory.py).',
)


# (compute dtype, attention implementation) pairs that --device measures.
DEVICE_VARIANTS = (
  ('float32', 'auto'),
  ('bfloat16', 'auto'),
  ('bfloat16', 'chunked'),
)


def _device_variants():
  """[compute_dtype, attention_impl, overrides] of each --device variant."""
  if not FLAGS.device_variants:
    return [[dtype, impl, {}] for dtype, impl in DEVICE_VARIANTS]
  variants = []
  for text in FLAGS.device_variants:
    parts = text.split(':', 2)
    if len(parts) < 2 or parts[0] not in ('float32', 'bfloat16'):
      raise app.UsageError(
        f'--device_variants: {text!r} is not '
        '<float32|bfloat16>:<attention_impl>[:<key>=<value>].'
      )
    overrides = dict([_parse_override(parts[2])]) if len(parts) == 3 else {}
    variants.append([parts[0], parts[1], overrides])
  return variants


def _parse_override(text):
  key, _, value = text.partition('=')
  try:
    import ast

    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass
  return key.strip(), value


def _specs():
  """The worker specs of this invocation, in run order."""
  base = dict(
    arch=FLAGS.arch,
    experiment_config=FLAGS.experiment_config,
    batch_size=FLAGS.batch_size,
    modes=FLAGS.modes,
    repeats=FLAGS.repeats,
    image_size=[int(x) for x in FLAGS.image_size or []],
    overrides=dict(_parse_override(o) for o in FLAGS.override),
    keep_freed_memory=FLAGS.keep_freed_memory,
  )
  if FLAGS.interleave:
    return [
      dict(
        base,
        impl='interleaved',
        impls=FLAGS.impls,
        attention_impl=FLAGS.attention_impl,
        compute_dtype=FLAGS.compute_dtype,
      )
    ]
  if FLAGS.device:
    # One worker runs every variant: GPU start-up and warm-up are paid once.
    return [
      dict(
        base,
        impl='ours',
        compute_dtype=None,
        attention_impl='auto',
        variants=_device_variants(),
      )
    ]
  specs = []
  for impl in FLAGS.impls:
    spec = dict(
      base,
      impl=impl,
      attention_impl=FLAGS.attention_impl,
      compute_dtype=FLAGS.compute_dtype,
    )
    if impl == 'straightforward':
      spec.update(attention_impl='einsum', compute_dtype=None)
    specs.append(spec)
  return specs


def _run_worker(spec):
  """Runs one spec in a fresh process; returns its result dicts."""
  command = [
    sys.executable,
    '-m',
    'benchmarks.run',
    f'--worker={json.dumps(spec)}',
  ]
  try:
    done = subprocess.run(
      command,
      stdout=subprocess.PIPE,
      # --device streams the worker's log (compiles, warnings, a hang's last
      # words) to ours, so a run that is cut off still says where it was.
      stderr=None if FLAGS.device else subprocess.PIPE,
      text=True,
      timeout=FLAGS.timeout,
      check=False,
    )
    stdout, stderr, failed = done.stdout, done.stderr, done.returncode != 0
  except subprocess.TimeoutExpired as e:
    # Keep what the worker measured before its time ran out.
    stdout, stderr, failed = e.stdout or '', '', True
    if isinstance(stdout, bytes):
      stdout = stdout.decode(errors='replace')
    stderr = f'timed out after {FLAGS.timeout} s'
  results = [
    json.loads(line[len('RESULT ') :])
    for line in stdout.splitlines()
    if line.startswith('RESULT ')
  ]
  if failed or not results:
    tail = (stderr or stdout).strip().splitlines()[-3:]
    results.append(dict(spec, error=' | '.join(tail) or 'no output'))
  return results


def _gb(value):
  return '-' if value is None else f'{value / 2**30:.2f}'


def print_interleaved(results):
  header = ('mode', 'impl', 'median s', 'ex/s', '% peak', 'time / first')
  rows = [header]
  for r in results:
    if 'error' in r:
      rows.append((r.get('mode', '-'), 'ERROR', r['error'][:70], '', '', ''))
      continue
    for impl, median in r['median_s'].items():
      rows.append(
        (
          r['mode'],
          impl,
          f'{median:.3f}',
          f'{r["examples_per_s"][impl]:.2f}',
          f'{100 * r["fraction_of_peak"][impl]:.0f}',
          f'{r["ratio_to_ours"].get(impl, float("nan")):.2f}',
        )
      )
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
  for row in rows:
    print('  '.join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
  for r in results:
    if 'peak_gflops_per_round' in r:
      peaks = ', '.join(f'{p:.0f}' for p in r['peak_gflops_per_round'])
      print(f'{r["mode"]}: matmul peak per round (GFLOP/s): {peaks}')


def print_table(results):
  header = (
    'impl',
    'mode',
    'dtype',
    'attn',
    'median s',
    'ex/s',
    'peak GB',
    'compile s',
    'GFLOP/ex',
    '% peak',
  )
  rows = [header]
  for r in results:
    if 'error' in r:
      rows.append(
        (
          r['impl'],
          r.get('mode', '-'),
          '-',
          '-',
          'ERROR',
          r['error'][:60],
          '',
          '',
          '',
          '',
        )
      )
      continue
    rows.append(
      (
        r['impl'],
        r['mode'],
        r.get('compute_dtype') or 'float32',
        r.get('attention_impl', '-') + r.get('variant_label', ''),
        f'{r["median_s"]:.3f}',
        f'{r["examples_per_s"]:.2f}',
        _gb(r.get('peak_bytes')),
        f'{r["compile_s"]:.1f}',
        f'{r["gflop_per_example"]:.1f}',
        f'{100 * r["fraction_of_peak"]:.0f}',
      )
    )
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
  for row in rows:
    print('  '.join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
  by_key = {(r['impl'], r['mode']): r for r in results if 'error' not in r}
  for r in results:
    if 'torch_peak_gflops' in r:
      print(
        f'{r["mode"]}: matmul peak (2048^2, '
        f'{r.get("compute_dtype") or "float32"}) XLA '
        f'{r["peak_gflops"]:.0f} GFLOP/s, PyTorch '
        f'{r["torch_peak_gflops"]:.0f} GFLOP/s; PyTorch ran at '
        f'{100 * r["fraction_of_torch_peak"]:.0f}% of its own'
      )
  for mode in ('forward', 'train'):
    ours = by_key.get(('ours', mode))
    for other in ('straightforward', 'pytorch'):
      theirs = by_key.get((other, mode))
      if ours and theirs:
        print(
          f'{mode}: ours is {theirs["median_s"] / ours["median_s"]:.2f}x '
          f'faster than {other}'
        )


def main(argv):
  del argv
  if FLAGS.worker:
    from benchmarks import worker

    spec = json.loads(FLAGS.worker)
    if spec.get('keep_freed_memory'):
      host_memory.keep_freed_memory()
    run = worker.run_interleaved if spec.get('impls') else worker.run
    for result in run(spec):
      print('RESULT ' + json.dumps(result), flush=True)
    return
  if 'pytorch' in FLAGS.impls and not FLAGS.device:
    from benchmarks import torch_models

    note = torch_models.available()
    if not note and FLAGS.arch not in torch_models.ARCHITECTURES:
      note = f'PyTorch column skipped: no port wired for {FLAGS.arch}.'
    if FLAGS.experiment_config:
      note = 'PyTorch column skipped: experiment configs are ours only.'
    if note:
      print(note)
      FLAGS.impls = [i for i in FLAGS.impls if i != 'pytorch']
  specs = _specs()
  results = []
  for round_index in range(FLAGS.rounds):
    order = specs if round_index % 2 == 0 else specs[::-1]
    for spec in order:
      print(
        f'[{time.strftime("%H:%M:%S")}] round {round_index + 1}: '
        f'{spec["impl"]} {spec.get("compute_dtype") or "float32"} '
        f'{spec["attention_impl"]}',
        flush=True,
      )
      for result in _run_worker(spec):
        result['round'] = round_index
        results.append(result)
        if FLAGS.out:
          with open(FLAGS.out, 'a') as f:
            f.write(json.dumps(result) + '\n')
  if FLAGS.interleave:
    print_interleaved(results)
  else:
    print_table(results)


if __name__ == '__main__':
  app.run(main)
