r"""This tree against an earlier commit, side by side in one run.

  python -m benchmarks.versus --base=62cafa6 --rounds=2

checks `--base` out into a temporary git worktree and, round after round,
runs the same `benchmarks.run` measurement (ours, `--modes`, each
architecture and compute dtype) in the worktree and in this tree, one after
the other, so that both see the same machine load. It prints the median
times of each and their ratio (this tree / base: below 1 is faster), and
appends every measurement to `--out` as JSON lines with a `tree` key
('base' or 'head').

Each measurement is a fresh `python -m benchmarks.run` process whose working
directory (first on `sys.path`) is the tree it measures, so it imports that
tree's `perceiver_io`, `experiments` and `benchmarks`. Flags that name model
config keys (`--override`) must exist in both trees.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('base', None, 'The commit to compare against.')
flags.DEFINE_list(
  'archs',
  ['language_perceiver_io_bytes', 'imagenet_fourier_position_encoding'],
  'Released architectures to measure.',
)
flags.DEFINE_list(
  'batch_sizes', ['2', '1'], 'Batch size per architecture (same order).'
)
flags.DEFINE_list('compute_dtypes', ['float32', 'bfloat16'], 'Dtypes.')
flags.DEFINE_list('modes', ['train'], 'forward and/or train.')
flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (median).')
flags.DEFINE_integer('rounds', 2, 'Base-then-head alternations.')
flags.DEFINE_string('out', None, 'Append JSON lines here.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure(tree, arch, batch_size, dtype):
  """The JSON records of one `benchmarks.run` process run in `tree`."""
  with tempfile.NamedTemporaryFile(suffix='.jsonl', delete=False) as f:
    out = f.name
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.run',
    f'--arch={arch}',
    f'--batch_size={batch_size}',
    '--impls=ours',
    f'--modes={",".join(FLAGS.modes)}',
    f'--repeats={FLAGS.repeats}',
    f'--out={out}',
  ]
  if dtype != 'float32':
    cmd.append(f'--compute_dtype={dtype}')
  env = dict(os.environ, PYTHONPATH=tree)
  done = subprocess.run(
    cmd, cwd=tree, env=env, capture_output=True, text=True, check=False
  )
  if done.returncode:
    raise RuntimeError(
      f'{" ".join(cmd)} failed in {tree}:\n{done.stdout}\n{done.stderr}'
    )
  with open(out, encoding='utf-8') as f:
    records = [json.loads(line) for line in f if line.strip()]
  os.unlink(out)
  return records


def _time(record):
  return record['median_s']


def main(argv):
  del argv
  if not FLAGS.base:
    raise app.UsageError('--base names the commit to compare against.')
  if len(FLAGS.batch_sizes) != len(FLAGS.archs):
    raise app.UsageError('--batch_sizes needs one value per --archs entry.')
  worktree = tempfile.mkdtemp(prefix='versus_')
  subprocess.run(
    ['git', 'worktree', 'add', '--detach', worktree, FLAGS.base],
    cwd=ROOT,
    check=True,
    capture_output=True,
  )
  times = {}
  try:
    for round_index in range(FLAGS.rounds):
      for arch, batch_size in zip(FLAGS.archs, FLAGS.batch_sizes, strict=True):
        for dtype in FLAGS.compute_dtypes:
          for tree_name, tree in (('base', worktree), ('head', ROOT)):
            for record in _measure(tree, arch, batch_size, dtype):
              record.update(tree=tree_name, base=FLAGS.base, round=round_index)
              key = (arch, dtype, record['mode'])
              times.setdefault(key, {}).setdefault(tree_name, []).append(
                _time(record)
              )
              print(
                f'round {round_index} {tree_name:4} {arch} {dtype} '
                f'{record["mode"]}: {_time(record):.3f} s',
                flush=True,
              )
              if FLAGS.out:
                with open(FLAGS.out, 'a', encoding='utf-8') as f:
                  f.write(json.dumps(record) + '\n')
  finally:
    subprocess.run(
      ['git', 'worktree', 'remove', '--force', worktree],
      cwd=ROOT,
      check=False,
      capture_output=True,
    )
  print(f'\nmedian seconds per step, base {FLAGS.base} vs this tree')
  for (arch, dtype, mode), by_tree in times.items():
    base = statistics.median(by_tree['base'])
    head = statistics.median(by_tree['head'])
    print(
      f'{arch:40} {dtype:9} {mode:8} base {base:.3f}  head {head:.3f}  '
      f'head/base {head / base:.3f}  (runs: {by_tree["base"]} vs '
      f'{by_tree["head"]})'
    )


if __name__ == '__main__':
  app.run(main)
