"""Tests for experiments.host_memory."""

import os
import platform
from unittest import mock

from absl.testing import absltest

from experiments import host_memory


class KeepFreedMemoryTest(absltest.TestCase):
  def test_applies_on_glibc(self):
    libc, _ = platform.libc_ver()
    if platform.system() != 'Linux' or libc != 'glibc':
      self.skipTest('glibc only')
    self.assertTrue(host_memory.keep_freed_memory())
    # Large blocks still work once mmap is off.
    block = bytearray(256 * 2**20)
    block[-1] = 1
    self.assertEqual(block[-1], 1)

  def test_switched_off_by_the_environment(self):
    with mock.patch.dict(os.environ, {host_memory.ENV_VAR: '0'}):
      self.assertFalse(host_memory.keep_freed_memory())


if __name__ == '__main__':
  absltest.main()
