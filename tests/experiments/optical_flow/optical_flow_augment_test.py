"""Tests for experiments.optical_flow.augment."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from experiments.optical_flow import augment


def _example(height=20, width=30, seed=0):
  rng = np.random.default_rng(seed)
  return {
    'frames': rng.integers(0, 256, (2, height, width, 3)).astype(np.uint8),
    'flow': rng.normal(size=(height, width, 2)).astype(np.float32),
    'valid': rng.uniform(size=(height, width)) > 0.2,
  }


def _shifted_pair(height=10, width=14, shift=(1, 2)):
  """frame2 is frame1 moved by (u, v) = shift: flow is that constant."""
  rng = np.random.default_rng(3)
  big = rng.integers(0, 256, (height + 8, width + 8, 3)).astype(np.uint8)
  u, v = shift
  first = big[4 : 4 + height, 4 : 4 + width]
  second = big[4 - v : 4 - v + height, 4 - u : 4 - u + width]
  flow = np.broadcast_to(np.array([u, v], np.float32), (height, width, 2))
  return {
    'frames': np.stack([first, second]),
    'flow': flow.copy(),
    'valid': np.ones((height, width), bool),
  }


def _consistent(example):
  """frame1(x) == frame2(x + flow) at integer flows, inside the frame."""
  first, second = example['frames']
  height, width = example['flow'].shape[:2]
  for y in range(height):
    for x in range(width):
      u, v = (int(round(c)) for c in example['flow'][y, x])
      inside = 0 <= y + v < height and 0 <= x + u < width
      if inside and not np.array_equal(first[y, x], second[y + v, x + u]):
        return False
  return True


class GeometryTest(parameterized.TestCase):
  def test_crop_moves_everything_together(self):
    example = _example()
    out = augment.random_crop(example, np.random.default_rng(1), (8, 12))
    self.assertEqual(out['frames'].shape, (2, 8, 12, 3))
    # Locate the crop from the flow and check frames and validity match it.
    flow = example['flow']
    hits = [
      (top, left)
      for top in range(13)
      for left in range(19)
      if np.array_equal(flow[top : top + 8, left : left + 12], out['flow'])
    ]
    self.assertLen(hits, 1)
    top, left = hits[0]
    np.testing.assert_array_equal(
      out['frames'], example['frames'][:, top : top + 8, left : left + 12]
    )
    np.testing.assert_array_equal(
      out['valid'], example['valid'][top : top + 8, left : left + 12]
    )

  def test_crop_pads_small_frames_as_not_valid(self):
    example = _example(6, 9)
    out = augment.random_crop(example, np.random.default_rng(0), (8, 12))
    self.assertEqual(out['flow'].shape, (8, 12, 2))
    self.assertFalse(out['valid'][6:].any())
    self.assertFalse(out['valid'][:, 9:].any())
    np.testing.assert_array_equal(out['valid'][:6, :9], example['valid'])

  @parameterized.parameters('horizontal', 'vertical')
  def test_flips_keep_frames_and_flow_consistent(self, which):
    example = _shifted_pair()
    self.assertTrue(_consistent(example))
    flip = getattr(augment, f'flip_{which}')
    flipped = flip(example)
    self.assertTrue(_consistent(flipped))
    u, v = flipped['flow'][0, 0]
    self.assertEqual(
      (u, v), (-1.0, 2.0) if which == 'horizontal' else (1.0, -2.0)
    )
    twice = flip(flipped)
    for key in example:
      np.testing.assert_array_equal(twice[key], example[key])

  def test_random_flips_respect_probabilities(self):
    example = _shifted_pair()
    never = augment.random_flips(example, np.random.default_rng(0), 0.0, 0.0)
    np.testing.assert_array_equal(never['flow'], example['flow'])
    always = augment.random_flips(example, np.random.default_rng(0), 1.0, 1.0)
    np.testing.assert_array_equal(always['flow'][0, 0], [-1.0, -2.0])


class PhotometricTest(parameterized.TestCase):
  def test_neutral_adjustment_is_identity(self):
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 6, 3))
    np.testing.assert_allclose(augment.adjust_color(images), images, atol=1e-3)

  def test_each_adjustment_does_what_it_says(self):
    rng = np.random.default_rng(0)
    image = rng.uniform(60, 200, (8, 8, 3)).astype(np.float32)
    grey = lambda x: x @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    darker = augment.adjust_color(image, brightness=0.5)
    np.testing.assert_allclose(darker, image * 0.5, rtol=1e-5)
    flat = augment.adjust_color(image, contrast=0.0)
    self.assertLess(grey(flat).std(), 1e-3)
    mono = augment.adjust_color(image, saturation=0.0)
    np.testing.assert_allclose(mono[..., 0], mono[..., 2], atol=1e-3)
    # A full hue turn is the identity; half a turn changes colours but not
    # their luma.
    np.testing.assert_allclose(
      augment.adjust_color(image, hue=1.0), image, atol=1e-2
    )
    half = augment.adjust_color(image, hue=0.5)
    self.assertGreater(np.abs(half - image).mean(), 5)
    unclipped = (half > 0) & (half < 255)
    if unclipped.all():
      np.testing.assert_allclose(grey(half), grey(image), atol=0.5)

  def test_jitter_is_shared_unless_asymmetric(self):
    frames = np.repeat(_example()['frames'][:1], 2, axis=0)
    same = augment.photometric_jitter(
      {'frames': frames, 'flow': np.zeros((20, 30, 2), np.float32)},
      np.random.default_rng(0),
      asymmetric_prob=0.0,
    )
    np.testing.assert_array_equal(same['frames'][0], same['frames'][1])
    self.assertFalse(np.array_equal(same['frames'][0], frames[0]))
    apart = augment.photometric_jitter(
      {'frames': frames, 'flow': np.zeros((20, 30, 2), np.float32)},
      np.random.default_rng(0),
      asymmetric_prob=1.0,
    )
    self.assertFalse(np.array_equal(apart['frames'][0], apart['frames'][1]))
    self.assertGreaterEqual(apart['frames'].min(), 0)
    self.assertLessEqual(apart['frames'].max(), 255)


class AugmentTest(parameterized.TestCase):
  def test_output_shapes_types_and_determinism(self):
    example = _example(40, 50)
    a = augment.augment(example, np.random.default_rng(7), crop_size=(16, 24))
    b = augment.augment(example, np.random.default_rng(7), crop_size=(16, 24))
    self.assertEqual(a['frames'].shape, (2, 16, 24, 3))
    self.assertEqual(a['frames'].dtype, np.float32)
    self.assertEqual(a['valid'].dtype, bool)
    for key in ('frames', 'flow', 'valid'):
      np.testing.assert_array_equal(a[key], b[key])
      self.assertTrue(a[key].flags['C_CONTIGUOUS'])

  def test_without_photometric_the_pair_stays_consistent(self):
    example = _shifted_pair(20, 24)
    rng = np.random.default_rng(3)
    for _ in range(5):
      out = augment.augment(
        example,
        rng,
        crop_size=(12, 12),
        photometric=False,
        vertical_flip_prob=0.5,
      )
      self.assertTrue(
        _consistent(dict(out, frames=out['frames'].astype(np.uint8)))
      )

  def test_bad_shapes_are_named(self):
    with self.assertRaisesRegex(ValueError, r'\[2, H, W, 3\]'):
      augment.random_crop(
        {'frames': np.zeros((3, 4, 4, 3)), 'flow': np.zeros((4, 4, 2))},
        np.random.default_rng(0),
        (2, 2),
      )


if __name__ == '__main__':
  absltest.main()
