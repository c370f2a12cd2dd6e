"""The benchmark harness end to end, at a tiny size (no timing asserted)."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_harness(*flags, timeout=900):
  """`python -m benchmarks.run <flags>` from the repository root."""
  return subprocess.run(
    [sys.executable, '-m', 'benchmarks.run', *flags],
    check=False,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


class HarnessTest(absltest.TestCase):
  def test_experiment_configs_name_their_architecture(self):
    from benchmarks import workloads
    from perceiver_io import models

    for path, want in (
      ('configs/masked_lm.py:local', models.LANGUAGE),
      ('configs/optical_flow.py', models.OPTICAL_FLOW),
      ('configs/image_classification.py:digits', models.IMAGENET_FOURIER),
    ):
      name, config = workloads.load_experiment_model(os.path.join(ROOT, path))
      self.assertEqual(name, want, path)
      self.assertNotIn('architecture', config)
    other = os.path.join(tempfile.mkdtemp(), 'my_task.py')
    with open(other, 'w') as f:
      f.write(
        'import ml_collections\n'
        'def get_config(arg=None):\n'
        '  return ml_collections.ConfigDict(dict(model=dict(d_model=8)))\n'
      )
    with self.assertRaisesRegex(ValueError, 'no `architecture` key'):
      workloads.load_experiment_model(other)

  def test_ours_and_straightforward_in_worker_processes(self):
    out = os.path.join(tempfile.mkdtemp(), 'results.jsonl')
    done = _run_harness(
      '--experiment_config=configs/image_classification.py:digits',
      '--batch_size=4',
      '--repeats=1',
      '--impls=ours,straightforward',
      f'--out={out}',
      '--timeout=600',
    )
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    with open(out) as f:
      results = [json.loads(line) for line in f]
    by_key = {(r['impl'], r['mode']): r for r in results}
    self.assertSetEqual(
      set(by_key),
      {
        (impl, mode)
        for impl in ('ours', 'straightforward')
        for mode in ('forward', 'train')
      },
    )
    for (impl, mode), r in by_key.items():
      self.assertNotIn('error', r, (impl, mode))
      self.assertGreater(r['median_s'], 0.0)
      self.assertGreater(r['peak_bytes'], 0)
      self.assertGreater(r['peak_gflops'], 0.0)
      # Same model: the same analytic FLOPs, 3x for a training step.
      forward = by_key[(impl, 'forward')]['gflop_per_example']
      self.assertAlmostEqual(
        r['gflop_per_example'], forward * (3 if mode == 'train' else 1)
      )
    self.assertIn('faster than straightforward', done.stdout)

  def test_device_variants_with_their_own_overrides(self):
    out = os.path.join(tempfile.mkdtemp(), 'results.jsonl')
    base = (
      '--experiment_config=configs/image_classification.py:digits',
      '--batch_size=2',
      '--repeats=1',
      '--modes=forward',
      '--device',
      f'--out={out}',
      '--timeout=600',
    )
    done = _run_harness(
      *base,
      '--device_variants=float32:auto,float32:einsum:runtime.grid_inputs=False',
    )
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    with open(out) as f:
      results = [json.loads(line) for line in f]
    self.assertLen(results, 2)
    for r in results:
      self.assertNotIn('error', r)
    auto, einsum = results
    self.assertEqual(auto['attention_impl'], 'auto')
    self.assertEqual(auto['variant_label'], '')
    self.assertNotIn('runtime.grid_inputs', auto['overrides'])
    self.assertEqual(einsum['attention_impl'], 'einsum')
    self.assertFalse(einsum['overrides']['runtime.grid_inputs'])
    self.assertIn('einsum runtime.grid_inputs=False', done.stdout)
    # Same model, same FLOP count; a malformed variant is refused by name.
    self.assertEqual(auto['gflop_per_example'], einsum['gflop_per_example'])
    bad = _run_harness(*base, '--device_variants=float16:auto', timeout=300)
    self.assertNotEqual(bad.returncode, 0)
    self.assertIn("'float16:auto' is not", bad.stderr)


class ARDecodeTest(absltest.TestCase):
  def test_rows_at_a_tiny_size(self):
    done = subprocess.run(
      [
        sys.executable,
        '-m',
        'benchmarks.ar_decode',
        '--context=96',
        '--new_bytes=6',
        '--latents=16',
        '--long_context=1024',
        '--long_latents=32',
        '--channels=16',
      ],
      check=False,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
    )
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    self.assertRegex(done.stdout, r'\| with cache \| [0-9.]+ \|')
    self.assertRegex(done.stdout, r'\| without cache \| [0-9.]+ \|')
    self.assertRegex(
      done.stdout, r'forward, context 1024, N=32 \| [0-9.]+ s \| peak RSS'
    )


if __name__ == '__main__':
  absltest.main()
