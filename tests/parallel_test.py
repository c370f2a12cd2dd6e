"""Tests of the data-parallel helpers (1 device here; 8 in a subprocess)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
from absl.testing import absltest

from experiments import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


if __name__ == '__main__':
  absltest.main()
