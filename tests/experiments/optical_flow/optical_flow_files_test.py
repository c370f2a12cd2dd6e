"""Tests for experiments.optical_flow.flow_files: every flow format round-trips."""

import os

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from experiments.optical_flow import flow_files


def _random_flow(height, width, seed=0, scale=20.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(height, width, 2)) * scale).astype(np.float32)


class FloTest(parameterized.TestCase):
  @parameterized.parameters((1, 1), (5, 7), (436, 1024))
  def test_round_trip_is_exact(self, height, width):
    flow = _random_flow(height, width)
    path = os.path.join(self.create_tempdir().full_path, 'a.flo')
    flow_files.write_flo(path, flow)
    self.assertEqual(os.path.getsize(path), 12 + height * width * 8)
    np.testing.assert_array_equal(flow_files.read_flo(path), flow)

  def test_layout_is_middlebury(self):
    # Width before height in the header; u, v interleaved row by row.
    flow = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    path = os.path.join(self.create_tempdir().full_path, 'a.flo')
    flow_files.write_flo(path, flow)
    with open(path, 'rb') as f:
      raw = f.read()
    self.assertEqual(np.frombuffer(raw[:4], '<f4')[0], 202021.25)
    self.assertEqual(list(np.frombuffer(raw[4:12], '<i4')), [3, 2])
    np.testing.assert_array_equal(
      np.frombuffer(raw[12:], '<f4'), np.arange(12, dtype=np.float32)
    )

  def test_bad_tag_is_named(self):
    path = os.path.join(self.create_tempdir().full_path, 'bad.flo')
    with open(path, 'wb') as f:
      f.write(np.array([1.0, 0, 0], '<f4').tobytes())
    with self.assertRaisesRegex(ValueError, 'not a .flo file'):
      flow_files.read_flo(path)

  def test_truncated_file_is_named(self):
    path = os.path.join(self.create_tempdir().full_path, 'short.flo')
    flow_files.write_flo(path, _random_flow(4, 5))
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(data[:-4])
    with self.assertRaisesRegex(ValueError, 'truncated or corrupt'):
      flow_files.read_flo(path)

  def test_wrong_shape_is_refused(self):
    path = os.path.join(self.create_tempdir().full_path, 'a.flo')
    with self.assertRaisesRegex(ValueError, r'\[H, W, 2\]'):
      flow_files.write_flo(path, np.zeros((4, 5, 3), np.float32))


class KittiTest(parameterized.TestCase):
  def test_round_trip_keeps_validity_and_64th_pixels(self):
    rng = np.random.default_rng(1)
    flow = np.round(rng.uniform(-300, 300, (6, 9, 2)) * 64) / 64
    valid = rng.uniform(size=(6, 9)) > 0.3
    path = os.path.join(self.create_tempdir().full_path, '000000_10.png')
    flow_files.write_kitti_flow(path, flow.astype(np.float32), valid)
    got, got_valid = flow_files.read_kitti_flow(path)
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_array_equal(got[valid], flow[valid].astype(np.float32))
    # Invalid pixels read as zero flow, whatever was stored.
    np.testing.assert_array_equal(got[~valid], 0.0)

  def test_rounds_to_a_64th(self):
    flow = np.full((2, 2, 2), 1.0 / 128 + 1e-4, np.float32)
    path = os.path.join(self.create_tempdir().full_path, 'r.png')
    flow_files.write_kitti_flow(path, flow)
    got, valid = flow_files.read_kitti_flow(path)
    self.assertTrue(valid.all())
    np.testing.assert_allclose(got, 1.0 / 64)

  def test_not_a_png_is_named(self):
    path = os.path.join(self.create_tempdir().full_path, 'x.png')
    with open(path, 'wb') as f:
      f.write(b'not a png at all')
    with self.assertRaisesRegex(ValueError, 'x.png'):
      flow_files.read_kitti_flow(path)


class DispatchTest(parameterized.TestCase):
  def test_npy_round_trip(self):
    flow = _random_flow(3, 4)
    path = os.path.join(self.create_tempdir().full_path, 'f.npy')
    flow_files.write_npy_flow(path, flow)
    np.testing.assert_array_equal(flow_files.read_npy_flow(path), flow)

  def test_read_flow_marks_unknown_middlebury_values_invalid(self):
    flow = _random_flow(3, 4)
    flow[1, 2] = 1e10  # Middlebury's "unknown flow".
    path = os.path.join(self.create_tempdir().full_path, 'f.flo')
    flow_files.write_flo(path, flow)
    got, valid = flow_files.read_flow(path)
    self.assertFalse(valid[1, 2])
    self.assertEqual(valid.sum(), 11)
    np.testing.assert_array_equal(got[1, 2], 0.0)

  def test_unknown_extension(self):
    with self.assertRaisesRegex(ValueError, 'unknown flow format'):
      flow_files.read_flow('flow.txt')


class ImageTest(parameterized.TestCase):
  @parameterized.parameters('png', 'ppm', 'jpg')
  def test_rgb_round_trip(self, ext):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    if ext == 'jpg':  # Lossy: a flat image survives.
      image = np.full((8, 8, 3), 120, np.uint8)
    path = os.path.join(self.create_tempdir().full_path, f'i.{ext}')
    flow_files.write_image(path, image)
    got = flow_files.read_image(path)
    self.assertEqual(got.dtype, np.uint8)
    np.testing.assert_allclose(got, image, atol=2 if ext == 'jpg' else 0)

  def test_grey_becomes_rgb(self):
    from PIL import Image

    path = os.path.join(self.create_tempdir().full_path, 'g.png')
    Image.fromarray(np.full((3, 4), 77, np.uint8)).save(path)
    got = flow_files.read_image(path)
    self.assertEqual(got.shape, (3, 4, 3))
    self.assertTrue((got == 77).all())

  def test_missing_and_corrupt_files_are_named(self):
    folder = self.create_tempdir().full_path
    with self.assertRaises(FileNotFoundError):
      flow_files.read_image(os.path.join(folder, 'none.png'))
    bad = os.path.join(folder, 'bad.png')
    with open(bad, 'wb') as f:
      f.write(b'garbage')
    with self.assertRaisesRegex(ValueError, 'bad.png'):
      flow_files.read_image(bad)


if __name__ == '__main__':
  absltest.main()
