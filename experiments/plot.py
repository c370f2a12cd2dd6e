r"""Training curves of one or more runs, one PNG per metric group.

  python -m experiments.plot runs/a runs/b --out=plots

reads each run's `metrics.jsonl` and writes `plots/loss.png` (train `loss`
and `eval/loss` against the step), `plots/eval.png` (every other `eval/*`
metric, one panel each) and `plots/steps_per_sec.png`
(`perf/steps_per_sec`), with the runs overlaid and labelled by their
directory names. A group no run has is skipped.
"""

import argparse
import os
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import metrics_writer  # noqa: E402


def series(records: Sequence[dict], key: str) -> tuple[list, list]:
  """(steps, values) of the records that have `key`, in file order."""
  steps, values = [], []
  for r in records:
    if key in r and 'step' in r and isinstance(r[key], (int, float)):
      steps.append(r['step'])
      values.append(r[key])
  return steps, values


def groups(runs: dict[str, list[dict]]) -> dict[str, list[str]]:
  """Metric group name -> the metric keys in it, over all runs."""
  keys = set()
  for records in runs.values():
    for r in records:
      keys.update(r)
  loss = [k for k in ('loss', 'eval/loss') if k in keys]
  evals = sorted(
    k for k in keys if k.startswith('eval/') and k not in ('eval/loss',)
  )
  evals = [k for k in evals if k != 'eval/count']
  speed = [k for k in ('perf/steps_per_sec',) if k in keys]
  out = {'loss': loss, 'eval': evals, 'steps_per_sec': speed}
  return {name: ks for name, ks in out.items() if ks}


def plot(run_dirs: Sequence[str], out_dir: str) -> list[str]:
  """Writes the PNGs of `run_dirs` to `out_dir`; returns their paths."""
  runs = {}
  for d in run_dirs:
    records = metrics_writer.read_metrics(d)
    if not records:
      raise FileNotFoundError(f'no metrics in {d!r} (metrics.jsonl)')
    runs[os.path.basename(os.path.normpath(d)) or d] = records
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, keys in groups(runs).items():
    fig, axes = plt.subplots(
      1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=True):
      for label, records in runs.items():
        steps, values = series(records, key)
        if steps:
          marker = '.' if len(steps) < 30 else None
          ax.plot(steps, values, label=label, marker=marker)
      ax.set_title(key)
      ax.ticklabel_format(axis='y', useOffset=False)
      ax.set_xlabel('step')
      ax.grid(alpha=0.3)
      ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f'{name}.png')
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.plot', description=__doc__
  )
  parser.add_argument('run_dirs', nargs='+')
  parser.add_argument('--out', default='plots')
  flags = parser.parse_args(argv)
  try:
    paths = plot(flags.run_dirs, flags.out)
  except FileNotFoundError as e:
    print(f'plot: error: {e}', file=sys.stderr)
    return 1
  for p in paths:
    print(p)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
