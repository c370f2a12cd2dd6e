r"""The tables of a forecasting run: ours beside every baseline, per series.

  python -m experiments.forecasting.report --workdir=runs/forecasting

reads the newest evaluation in `<workdir>/metrics.jsonl` and prints, for
each series, one Markdown table of MASE, sMAPE, scaled pinball loss and the
80% interval's coverage (ours and each baseline, same origins and points;
for ours, where a series has a calibration part, also the coverage and
pinball loss of the calibrated interval and its widening factor c), then
one table of how much each method's MASE degrades when half of the history
is dropped (the classical methods after linear interpolation).
"""

import math

from experiments.forecasting import metrics as metrics_lib

OURS = 'perceiver_io'


def latest_eval(records):
  """The newest record with eval metrics, or raise naming the file."""
  for record in reversed(records):
    if any(k.startswith('eval/') and k.endswith('_mase') for k in record):
      return record
  raise ValueError(
    'No forecasting evaluation in metrics.jsonl: run the training command '
    'first (it evaluates at the end).'
  )


def _series_and_methods(record):
  names, methods = [], []
  for key in record:
    if not key.startswith('eval/') or '_thinned' in key:
      continue
    body = key[len('eval/') :]
    if body.endswith('_mase') and body.count('_') == 1:
      names.append(body[: -len('_mase')])
  for name in names:
    prefix = f'eval/{name}_mase_'
    for key in record:
      if key.startswith(prefix):
        method = key[len(prefix) :]
        if method not in methods and method != 'vs_seasonal_naive':
          methods.append(method)
  return names, methods


def _fmt(value, digits=3):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return f'{value:.{digits}f}'


def tables(record) -> str:
  """The Markdown tables of one eval record."""
  names, methods = _series_and_methods(record)
  lines = [f'Step {record.get("step")}.', '']
  for name in names:
    # The calibrated columns only where the series has a calibration part.
    calibrated = not math.isnan(
      record.get(f'eval/{name}_calibration_coverage', math.nan)
    )
    header = '| method | MASE | sMAPE % | pinball | 80% coverage |'
    if calibrated:
      header += ' calibrated: coverage | pinball | c |'
    lines += [f'### {name}', '', header, '|---' * (header.count('|') - 1) + '|']
    for method in [OURS] + [
      m for m in methods if f'eval/{name}_mase_{m}' in record
    ]:
      suffix = '' if method == OURS else f'_{method}'
      row = [
        _fmt(
          record.get(f'eval/{name}_{metric}{suffix}'),
          2 if metric == 'smape' else 3,
        )
        for metric in metrics_lib.NAMES
      ]
      for key in (
        ('coverage_calibrated', 'pinball_calibrated', 'interval_scale')
        if calibrated
        else ()
      ):
        value = record.get(f'eval/{name}_{key}') if method == OURS else None
        row.append(_fmt(value, 2 if key == 'interval_scale' else 3))
      lines.append(f'| {method} | ' + ' | '.join(row) + ' |')
    lines.append('')
  lines += [
    '### Half of the history dropped',
    '',
    '| series | method | MASE full | MASE thinned | change |',
    '|---|---|---|---|---|',
  ]
  for name in names:
    for method in [OURS] + methods:
      suffix = '' if method == OURS else f'_{method}'
      full = record.get(f'eval/{name}_mase{suffix}')
      thinned = record.get(f'eval/{name}_thinned_mase{suffix}')
      if full is None or thinned is None:
        continue
      change = f'{100 * (thinned / full - 1):+.0f}%' if full else '-'
      lines.append(
        f'| {name} | {method} | {_fmt(full)} | {_fmt(thinned)} | {change} |'
      )
  return '\n'.join(lines)


def main(argv):
  from absl import flags

  from experiments import metrics_writer

  del argv
  records = metrics_writer.read_metrics(flags.FLAGS.workdir)
  if not records:
    raise FileNotFoundError(
      f'No metrics.jsonl in --workdir={flags.FLAGS.workdir!r}.'
    )
  print(tables(latest_eval(records)))


if __name__ == '__main__':
  from absl import flags

  flags.DEFINE_string('workdir', None, 'The run to report.', required=True)
  from experiments import cli

  cli.run(main, tool=True)
