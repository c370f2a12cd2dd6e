"""Tests of metrics.jsonl, TensorBoard output and the progress line."""

import json
import os
import time

import ml_collections
from absl.testing import absltest
from tensorboard.util import tensor_util

from experiments import metrics_writer


class MetricsWriterTest(absltest.TestCase):
  def test_records_header_and_resume(self):
    workdir = self.create_tempdir().full_path
    writer = metrics_writer.MetricsWriter(workdir, is_chief=True)
    writer.write_config(ml_collections.ConfigDict({'a': (1, 2)}), steps=5)
    writer.write_header(num_devices=8, num_processes=1)
    for step in (10, 20, 30):
      writer.write(step, {'loss': 1.0 / step, 'eval/accuracy': 0.5})
    writer.close()
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f), {'a': [1, 2], 'steps': 5})
    records = metrics_writer.read_metrics(workdir)
    self.assertEqual(
      records[0], {'step': 0, 'num_devices': 8, 'num_processes': 1}
    )
    self.assertEqual([r['step'] for r in records[1:]], [10, 20, 30])
    self.assertEqual(records[2]['eval/accuracy'], 0.5)
    self.assertTrue(os.listdir(os.path.join(workdir, 'tensorboard')))

    # A run killed after logging step 30 but checkpointed at 20.
    writer = metrics_writer.MetricsWriter(workdir, is_chief=True)
    writer.resume_at(20)
    writer.write_header(num_devices=8, num_processes=1)  # Unchanged: none.
    self.assertEqual(
      [r['step'] for r in metrics_writer.read_metrics(workdir)], [0, 10, 20]
    )
    writer.write_header(num_devices=4, num_processes=1)  # Changed: again.
    records = metrics_writer.read_metrics(workdir)
    self.assertEqual(
      records[-1], {'step': 20, 'num_devices': 4, 'num_processes': 1}
    )
    writer.close()

  def test_tensorboard_has_no_duplicates_after_resume(self):
    workdir = self.create_tempdir().full_path
    writer = metrics_writer.MetricsWriter(workdir, is_chief=True)
    writer.resume_at(0)  # What the loop calls at a fresh start.
    for step in (10, 20, 30):
      writer.write(step, {'loss': float(step)})
    writer.close()
    # Killed after logging 30, checkpointed at 20: 30 is logged again.
    time.sleep(1.1)  # Event file names carry the time in seconds.
    writer = metrics_writer.MetricsWriter(workdir, is_chief=True)
    writer.resume_at(20)
    for step in (30, 40):
      writer.write(step, {'loss': step + 0.5})
    writer.close()
    self.assertLen(os.listdir(os.path.join(workdir, 'tensorboard')), 2)
    points = tensorboard_points(workdir, 'loss')
    self.assertEqual(points, [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)])

  def test_non_chief_writes_nothing(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'w')
    writer = metrics_writer.MetricsWriter(workdir, is_chief=False)
    writer.write_config(ml_collections.ConfigDict({'a': 1}))
    writer.write(1, {'loss': 1.0})
    writer.close()
    self.assertFalse(os.path.exists(workdir))


def tensorboard_points(workdir, tag):
  """[(step, value)] of `tag` as TensorBoard loads them (with its purge of
  orphaned data on a session START)."""
  from tensorboard.backend.event_processing import plugin_event_accumulator

  accumulator = plugin_event_accumulator.EventAccumulator(
    os.path.join(workdir, 'tensorboard'), purge_orphaned_data=True
  )
  accumulator.Reload()
  return [
    (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
    for e in accumulator.Tensors(tag)
  ]


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class ProgressTest(absltest.TestCase):
  def test_eta_leaves_out_the_compiling_step(self):
    # Resumed at 50 of 100; step 51 compiles for 60 s, then 1 s per step.
    clock = FakeClock()
    progress = metrics_writer.Progress(100, 8, start_step=50, clock=clock)
    clock.now = 60.0
    progress.mark_steady(51)
    clock.now = 69.0
    progress.update(60)
    self.assertAlmostEqual(progress.rates()['perf/steps_per_sec'], 1.0)
    self.assertAlmostEqual(progress.eta_seconds(), 40.0)
    self.assertIn('ETA 40s', progress.line(60, {}))
    clock.now = 89.0  # Ten slower steps: 2 s each; mean 29 s / 19 steps.
    progress.update(70)
    self.assertAlmostEqual(progress.rates()['perf/steps_per_sec'], 0.5)
    self.assertAlmostEqual(progress.eta_seconds(), 30 * 29 / 19)

  def test_eta_unknown_until_a_steady_window(self):
    clock = FakeClock()
    progress = metrics_writer.Progress(100, 8, clock=clock)
    clock.now = 50.0
    progress.update(10)  # Not marked: this window compiled.
    self.assertEqual(progress.eta_seconds(), float('inf'))
    clock.now = 60.0
    progress.update(20)
    self.assertAlmostEqual(progress.eta_seconds(), 80.0)

  def test_rates_and_line(self):
    progress = metrics_writer.Progress(100, batch_size=32, start_step=0)
    time.sleep(0.05)
    progress.update(10)
    rates = progress.rates()
    self.assertGreater(rates['perf/steps_per_sec'], 0)
    self.assertAlmostEqual(
      rates['perf/examples_per_sec'], 32 * rates['perf/steps_per_sec']
    )
    self.assertGreater(progress.eta_seconds(), 0)
    line = progress.line(10, {'loss': 0.5, 'eval/accuracy': 0.1})
    self.assertStartsWith(line, 'step 10/100 (10%) | loss 0.5 | ')
    self.assertIn('steps/s', line)
    self.assertIn('ex/s', line)
    self.assertIn('ETA ', line)
    self.assertNotIn('eval/accuracy', line)

  def test_format_duration(self):
    self.assertEqual(metrics_writer.format_duration(42), '42s')
    self.assertEqual(metrics_writer.format_duration(185), '3m05s')
    self.assertEqual(metrics_writer.format_duration(3720), '1h02m')
    self.assertEqual(metrics_writer.format_duration(float('inf')), '?')


if __name__ == '__main__':
  absltest.main()
