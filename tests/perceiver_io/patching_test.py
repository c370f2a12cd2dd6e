"""Tests of space-to-depth, image patches and restructure."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import patching


def numpy_space_to_depth_video(x, dt, s):
  """Loops over blocks; channels in (dt, dh, dw, c) order."""
  b, t, h, w, c = x.shape
  out = np.zeros((b, t // dt, h // s, w // s, dt * s * s * c), x.dtype)
  for ti in range(t // dt):
    for hi in range(h // s):
      for wi in range(w // s):
        block = x[
          :,
          ti * dt : (ti + 1) * dt,
          hi * s : (hi + 1) * s,
          wi * s : (wi + 1) * s,
          :,
        ]
        out[:, ti, hi, wi] = block.reshape(b, -1)
  return out


def numpy_patches_3x3(x):
  """Each pixel's zero-padded 3x3 neighbourhood, (row, col, c) order."""
  b, h, w, c = x.shape
  padded = np.zeros((b, h + 2, w + 2, c), x.dtype)
  padded[:, 1:-1, 1:-1] = x
  out = np.zeros((b, h, w, 9 * c), x.dtype)
  for i in range(h):
    for j in range(w):
      out[:, i, j] = padded[:, i : i + 3, j : j + 3].reshape(b, -1)
  return out


class PatchingTest(parameterized.TestCase):
  @parameterized.parameters((1, 1), (1, 2), (2, 2), (2, 4))
  def test_space_to_depth_video_matches_numpy(self, dt, s):
    x = np.random.RandomState(0).randn(2, 4, 8, 8, 3).astype(np.float32)
    got = patching.space_to_depth(
      x, temporal_block_size=dt, spatial_block_size=s
    )
    np.testing.assert_array_equal(got, numpy_space_to_depth_video(x, dt, s))
    back = patching.reverse_space_to_depth(got, dt, s)
    np.testing.assert_array_equal(back, x)

  def test_space_to_depth_image_matches_numpy(self):
    x = np.random.RandomState(1).randn(2, 8, 12, 3).astype(np.float32)
    got = patching.space_to_depth(x, spatial_block_size=4)
    want = numpy_space_to_depth_video(x[:, None], 1, 4)[:, 0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
      patching.reverse_space_to_depth(got, spatial_block_size=4), x
    )

  def test_space_to_depth_errors(self):
    with self.assertRaisesRegex(ValueError, 'Block sizes'):
      patching.space_to_depth(np.zeros((1, 6, 8, 3)), spatial_block_size=4)
    with self.assertRaisesRegex(ValueError, 'expects'):
      patching.space_to_depth(np.zeros((6, 8, 3)))

  def test_patches_for_flow_matches_numpy(self):
    frames = np.random.RandomState(2).randn(2, 2, 5, 7, 3).astype(np.float32)
    got = patching.patches_for_flow(frames)
    self.assertEqual(got.shape, (2, 2, 5, 7, 27))
    for t in range(2):
      np.testing.assert_array_equal(got[:, t], numpy_patches_3x3(frames[:, t]))

  def test_patches_for_flow_rank_error(self):
    with self.assertRaisesRegex(ValueError, r'\[B, T, H, W, C\]'):
      patching.patches_for_flow(np.zeros((2, 5, 7, 3)))

  def test_restructure(self):
    x = np.arange(2 * 6 * 1).reshape(2, 6, 1)
    parts = patching.restructure({'b': 2, 'a': 3, 'c': 1}, x)
    np.testing.assert_array_equal(parts['a'], x[:, :3])
    np.testing.assert_array_equal(parts['b'], x[:, 3:5])
    np.testing.assert_array_equal(parts['c'], x[:, 5:])
    with self.assertRaisesRegex(ValueError, 'add up to 5'):
      patching.restructure({'a': 5}, x)


if __name__ == '__main__':
  absltest.main()
