"""Tests of the data-parallel helpers (1 device here; 8 in a subprocess)."""

import os
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from experiments import parallel

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


class ParallelTest(absltest.TestCase):
  def test_mesh_and_batch(self):
    mesh = parallel.make_mesh()
    self.assertEqual(mesh.axis_names, ('data',))
    self.assertEqual(mesh.devices.size, jax.device_count())
    batch = {'x': np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}
    out = parallel.make_global_batch(batch, parallel.batch_sharding(mesh))
    self.assertEqual(out['x'].shape, (8, 3))
    np.testing.assert_array_equal(out['x'], batch['x'])

  def test_check_batch_size(self):
    parallel.check_batch_size(4)
    with self.assertRaisesRegex(ValueError, 'must be positive'):
      parallel.check_batch_size(0)
    with self.assertRaisesRegex(
      ValueError, r'batch_size=6 is not divisible .* grad_accum_steps \(4\)'
    ):
      parallel.check_batch_size(6, grad_accum_steps=4)
    self.assertEqual(parallel.local_batch_size(6), 6)

  def test_no_distributed_without_cluster_env(self):
    for key in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS'):
      self.assertNotIn(key, os.environ)
    self.assertFalse(parallel.maybe_initialize_distributed())

  def test_cluster_env_reaches_initialize(self):
    # The variables of docs/training.md's "without a scheduler" launch.
    calls = []
    env = {
      'JAX_COORDINATOR_ADDRESS': '10.0.0.1:8476',
      'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '2',
    }
    with (
      mock.patch.dict(os.environ, env),
      mock.patch.object(
        jax.distributed, 'initialize', lambda **kw: calls.append(kw)
      ),
      mock.patch.object(jax, 'process_index', lambda: 2),
      mock.patch.object(jax, 'process_count', lambda: 4),
    ):
      self.assertTrue(parallel.maybe_initialize_distributed())
    # JAX reads JAX_COORDINATOR_ADDRESS itself; the other two are ours.
    self.assertEqual(calls, [{'num_processes': 4, 'process_id': 2}])
    calls.clear()
    with (
      mock.patch.dict(os.environ, {'SLURM_NTASKS': '8'}),
      mock.patch.object(
        jax.distributed, 'initialize', lambda **kw: calls.append(kw)
      ),
    ):
      self.assertTrue(parallel.maybe_initialize_distributed())
    self.assertEqual(calls, [{}])  # SLURM: JAX detects everything.

  def test_eight_fake_devices(self):
    code = textwrap.dedent("""
      import jax, numpy as np
      from experiments import parallel
      mesh = parallel.make_mesh()
      sharding = parallel.batch_sharding(mesh)
      x = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
      g = parallel.make_global_batch({'x': x}, sharding)['x']
      shards = sorted((s.index[0].start, s.data.shape) for s in
                      g.addressable_shards)
      print(jax.device_count(), shards[0], shards[-1],
            bool((np.asarray(g) == x).all()))
      try:
        parallel.check_batch_size(12)
      except ValueError as e:
        print(e)
    """)
    env = dict(
      os.environ,
      PYTHONPATH=REPO,
      XLA_FLAGS='--xla_force_host_platform_device_count=8',
    )
    out = subprocess.run(
      [sys.executable, '-c', code],
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
    ).stdout.splitlines()
    self.assertEqual(out[0], '8 (0, (2, 2)) (14, (2, 2)) True')
    self.assertIn('devices (8)', out[1])
    self.assertIn('multiple of 8', out[1])


class ProcessShareTest(parameterized.TestCase):
  """Several processes simulated by passing process_index/process_count."""

  def test_process_slice_partitions_the_batch(self):
    self.assertEqual(parallel.process_slice(6), slice(0, 6))  # 1 process.
    for count in (1, 2, 4):
      rows = [
        np.arange(8)[parallel.process_slice(8, p, count)] for p in range(count)
      ]
      self.assertTrue(all(len(r) == 8 // count for r in rows))
      np.testing.assert_array_equal(np.concatenate(rows), np.arange(8))

  def test_process_slice_errors(self):
    with self.assertRaisesRegex(
      ValueError, 'batch size 6 does not split over 4 processes.*multiple'
    ):
      parallel.process_slice(6, 0, 4)
    with self.assertRaisesRegex(ValueError, 'does not split'):
      parallel.process_slice(0, 0, 1)
    with self.assertRaisesRegex(
      ValueError, r'process_index 2 is not one of process_count 2'
    ):
      parallel.process_slice(4, 2, 2)

  @parameterized.product(
    num_examples=(0, 1, 7, 8, 13), batch_size=(4, 8), count=(1, 2, 4)
  )
  def test_every_example_once_and_padding_masked(
    self, num_examples, batch_size, count
  ):
    per_process = [
      list(parallel.padded_eval_indices(num_examples, batch_size, p, count))
      for p in range(count)
    ]
    num_batches = -(-num_examples // batch_size)
    real, padding = [], 0
    for batches in per_process:
      self.assertLen(batches, num_batches)  # The global batches line up.
      for index, mask in batches:
        self.assertEqual(index.shape, (batch_size // count,))
        self.assertEqual(mask.dtype, np.float32)
        real.extend(index[mask == 1].tolist())
        padding += int(np.sum(mask == 0))
        np.testing.assert_array_equal(index[mask == 0], 0)  # Example 0.
    self.assertCountEqual(real, range(num_examples))
    self.assertEqual(padding, num_batches * batch_size - num_examples)
    # Global batch k, stitched from the processes in order, is [kB, (k+1)B).
    for k in range(num_batches):
      stitched = np.concatenate([b[k][0] for b in per_process])
      mask = np.concatenate([b[k][1] for b in per_process])
      expected = np.arange(k * batch_size, (k + 1) * batch_size)
      np.testing.assert_array_equal(stitched[mask == 1], expected[mask == 1])

  def test_padded_eval_batches_gathers_every_array(self):
    arrays = {
      'x': np.arange(10 * 3, dtype=np.float32).reshape(10, 3),
      'y': np.arange(10, 20),
    }
    batches = list(parallel.padded_eval_batches(arrays, 4, 1, 2))
    self.assertLen(batches, 3)
    for batch in batches:
      self.assertEqual(set(batch), {'x', 'y', 'mask'})
      self.assertEqual(batch['x'].shape, (2, 3))
      self.assertEqual(batch['y'].shape, (2,))
    # Process 1 of 2 feeds rows 2, 3 of each global batch: 2, 3, 6, 7; the
    # last batch's rows 10, 11 are padding (copies of example 0).
    np.testing.assert_array_equal(
      np.concatenate([b['y'] for b in batches]), [12, 13, 16, 17, 10, 10]
    )
    np.testing.assert_array_equal(batches[-1]['mask'], [0, 0])
    np.testing.assert_array_equal(batches[-1]['x'], arrays['x'][[0, 0]])

  def test_padded_eval_batches_errors(self):
    with self.assertRaisesRegex(ValueError, r"different numbers.*'b': 2"):
      next(
        parallel.padded_eval_batches({'a': np.zeros(3), 'b': np.zeros(2)}, 4)
      )
    with self.assertRaisesRegex(ValueError, "named 'mask'"):
      next(parallel.padded_eval_batches({'mask': np.zeros(3)}, 4))


if __name__ == '__main__':
  absltest.main()
