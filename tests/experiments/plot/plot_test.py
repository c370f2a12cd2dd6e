"""experiments.plot: one PNG per metric group, runs overlaid."""

import json
import os

import matplotlib.image

from experiments import plot


def _write_run(workdir, scale):
  os.makedirs(workdir)
  records = [{'step': 0, 'num_devices': 1}]
  for s in range(1, 11):
    records.append(
      {'step': s, 'loss': scale / s, 'perf/steps_per_sec': 2.0 + s}
    )
    if s % 5 == 0:
      records.append(
        {
          'step': s,
          'eval/loss': scale / s,
          'eval/accuracy': s / 10,
          'eval/count': 100.0,
        }
      )
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


def test_groups():
  runs = {
    'a': [{'step': 1, 'loss': 1.0, 'eval/accuracy': 0.5, 'eval/count': 3.0}],
    'b': [{'step': 1, 'eval/loss': 1.0, 'perf/steps_per_sec': 3.0}],
  }
  assert plot.groups(runs) == {
    'loss': ['loss', 'eval/loss'],
    'eval': ['eval/accuracy'],
    'steps_per_sec': ['perf/steps_per_sec'],
  }


def test_series_skips_records_without_the_key():
  records = [{'step': 1, 'loss': 2.0}, {'step': 2}, {'step': 3, 'loss': 1.0}]
  assert plot.series(records, 'loss') == ([1, 3], [2.0, 1.0])


def test_writes_one_png_per_group(tmp_path):
  _write_run(tmp_path / 'run_a', 1.0)
  _write_run(tmp_path / 'run_b', 2.0)
  out = tmp_path / 'plots'
  rc = plot.main(
    [str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), f'--out={out}']
  )
  assert rc == 0
  assert sorted(os.listdir(out)) == [
    'eval.png',
    'loss.png',
    'steps_per_sec.png',
  ]
  image = matplotlib.image.imread(out / 'loss.png')
  assert image.shape[0] > 100 and image.shape[1] > 100


def test_missing_run_is_an_error(tmp_path, capsys):
  assert plot.main([str(tmp_path / 'nothing'), f'--out={tmp_path}']) == 1
  assert 'no metrics' in capsys.readouterr().err
