"""Tests of metrics.jsonl, TensorBoard output and the progress line."""

import json
import os
import time

import ml_collections
from absl.testing import absltest

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

  def test_non_chief_writes_nothing(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'w')
    writer = metrics_writer.MetricsWriter(workdir, is_chief=False)
    writer.write_config(ml_collections.ConfigDict({'a': 1}))
    writer.write(1, {'loss': 1.0})
    writer.close()
    self.assertFalse(os.path.exists(workdir))


class ProgressTest(absltest.TestCase):
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
