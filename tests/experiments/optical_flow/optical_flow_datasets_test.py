"""Tests for experiments.optical_flow.datasets: layouts and synthetic pairs."""

import os

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import flow_fixtures
from experiments.optical_flow import datasets


class LayoutTest(parameterized.TestCase):
  def test_sintel_pairs_consecutive_frames(self):
    root = flow_fixtures.make_sintel(self.create_tempdir().full_path)
    for pass_name in ('clean', 'final'):
      examples = datasets.sintel_examples(root, pass_name=pass_name)
      # alley_1 has 3 frames (2 pairs), cave_2 has 2 (1 pair).
      self.assertLen(examples, 3)
      first = examples[0]
      self.assertEqual(first.name, f'{pass_name}/alley_1/frame_0001')
      self.assertTrue(first.image1.endswith('frame_0001.png'))
      self.assertTrue(first.image2.endswith('frame_0002.png'))
      self.assertTrue(
        first.flow.endswith(os.path.join('flow', 'alley_1', 'frame_0001.flo'))
      )
    item = datasets.load_example(examples[2])
    self.assertEqual(item['frames'].shape, (2, 12, 20, 3))
    self.assertEqual(item['frames'].dtype, np.uint8)
    self.assertEqual(item['flow'].shape, (12, 20, 2))
    self.assertTrue(item['valid'].all())

  def test_sintel_missing_flow_is_named(self):
    root = flow_fixtures.make_sintel(self.create_tempdir().full_path)
    os.remove(
      os.path.join(root, 'training', 'flow', 'cave_2', 'frame_0001.flo')
    )
    with self.assertRaisesRegex(FileNotFoundError, 'cave_2'):
      datasets.sintel_examples(root)

  def test_kitti_reads_validity(self):
    root = flow_fixtures.make_kitti(self.create_tempdir().full_path)
    examples = datasets.kitti_examples(root)
    self.assertEqual([e.name for e in examples], ['000000', '000001'])
    item = datasets.load_example(examples[1])
    self.assertEqual(item['frames'].shape, (2, 13, 22, 3))
    self.assertGreater(item['valid'].mean(), 0.4)
    self.assertLess(item['valid'].mean(), 0.9)
    np.testing.assert_array_equal(item['flow'][~item['valid']], 0.0)

  @parameterized.parameters(('train', 2), ('val', 1), ('all', 3))
  def test_chairs_split_file(self, split, count):
    root = flow_fixtures.make_chairs(self.create_tempdir().full_path)
    examples = datasets.chairs_examples(root, split)
    self.assertLen(examples, count)
    if split == 'val':
      self.assertEqual(examples[0].name, '00002')
    item = datasets.load_example(examples[0])
    self.assertEqual(item['frames'].shape, (2, 12, 16, 3))

  def test_autoflow(self):
    root = flow_fixtures.make_autoflow(self.create_tempdir().full_path)
    examples = datasets.list_examples('autoflow', root)
    self.assertLen(examples, 2)
    self.assertEqual(
      examples[0].name, os.path.join('static_40k_png_1_of_4', 'table_0')
    )
    self.assertEqual(
      datasets.load_example(examples[1])['flow'].shape, (12, 16, 2)
    )

  @parameterized.parameters('sintel_clean', 'kitti', 'chairs', 'autoflow')
  def test_missing_root_names_the_layout(self, name):
    missing = os.path.join(self.create_tempdir().full_path, 'nothing')
    with self.assertRaisesRegex(FileNotFoundError, 'no folder|no frame pairs'):
      datasets.list_examples(name, missing)

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(ValueError, 'Unknown flow dataset'):
      datasets.list_examples('middlebury', '/tmp')

  def test_flow_that_does_not_match_frames(self):
    root = flow_fixtures.make_autoflow(self.create_tempdir().full_path)
    example = datasets.autoflow_examples(root)[0]
    from experiments.optical_flow import flow_files

    flow_files.write_flo(example.flow, np.zeros((5, 5, 2), np.float32))
    with self.assertRaisesRegex(ValueError, 'does not match frames'):
      datasets.load_example(example)


def _ramp_photo(height=120, width=160):
  """A smooth photo-like image whose bilinear interpolation is exact."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  image = np.stack(
    [
      127 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0),
      127 + 90 * np.sin(x / 5.0 + y / 11.0),
      127 + 80 * np.cos(y / 6.0),
    ],
    axis=-1,
  )
  return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticTest(parameterized.TestCase):
  def test_first_frame_is_second_frame_moved_by_the_flow(self):
    generator = datasets.SyntheticFlowPairs(
      crop_size=(24, 32), photos=[_ramp_photo()], scales=(1.0,), min_texture=0.0
    )
    pair = generator.sample(np.random.default_rng(0))
    first, second = (f.astype(np.float64) for f in pair['frames'])
    flow = pair['flow']
    # frame1(x) = frame2(x + flow(x)) wherever x + flow(x) stays in the crop.
    ys, xs = np.mgrid[0:24, 0:32].astype(np.float64)
    ty, tx = ys + flow[..., 1], xs + flow[..., 0]
    inside = (ty >= 0) & (ty <= 23) & (tx >= 0) & (tx <= 31)
    warped = datasets.bilinear_sample(
      second, np.clip(ty, 0, 23), np.clip(tx, 0, 31)
    )
    err = np.abs(warped - first)[inside]
    self.assertGreater(inside.mean(), 0.5)
    # Only the uint8 rounding of both frames (and bilinear curvature) differ.
    self.assertLess(err.mean(), 1.5)
    zero_err = np.abs(second - first)[inside].mean()
    self.assertGreater(zero_err, 4 * err.mean())

  def test_flow_is_smooth_varied_and_not_a_constant_shift(self):
    generator = datasets.SyntheticFlowPairs(crop_size=(16, 16))
    rng = np.random.default_rng(1)
    flows = np.stack([generator.sample(rng)['flow'] for _ in range(20)])
    # Varies within each pair (affine + local parts) ...
    spatial_std = flows.std(axis=(1, 2)).mean()
    self.assertGreater(spatial_std, 0.1)
    # ... between pairs, in every direction ...
    means = flows.mean(axis=(1, 2))
    self.assertGreater(means.std(axis=0).min(), 0.3)
    # ... and smoothly: neighbours differ far less than the flow varies.
    step = np.abs(np.diff(flows, axis=2)).mean()
    self.assertLess(step, 0.2)

  def test_deterministic_for_a_seed(self):
    generator = datasets.SyntheticFlowPairs(crop_size=(8, 8))
    a = generator.batch(np.random.default_rng(5), 3)
    b = generator.batch(np.random.default_rng(5), 3)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    self.assertEqual(a['frames'].shape, (3, 2, 8, 8, 3))
    self.assertEqual(a['flow'].shape, (3, 8, 8, 2))

  def test_train_and_eval_use_disjoint_photo_bands(self):
    # The top 3/4 is dark, the bottom 1/4 bright: the splits never mix.
    photo = _ramp_photo(200, 160) // 4
    photo[150:] += 160
    kwargs = dict(
      crop_size=(16, 16), photos=[photo], scales=(1.0,), min_texture=0.0
    )
    train = datasets.SyntheticFlowPairs(split='train', **kwargs)
    evals = datasets.SyntheticFlowPairs(split='eval', **kwargs)
    rng = np.random.default_rng(0)
    self.assertLess(
      max(train.sample(rng)['frames'].max() for _ in range(20)), 70
    )
    self.assertGreater(
      min(evals.sample(rng)['frames'].min() for _ in range(20)), 150
    )

  def test_flat_crops_are_redrawn(self):
    photo = np.full((200, 200, 3), 128, np.uint8)
    photo[:, 100:] = _ramp_photo(200, 100)
    generator = datasets.SyntheticFlowPairs(
      crop_size=(16, 16), photos=[photo], scales=(1.0,), holdout_fraction=0.1
    )
    rng = np.random.default_rng(0)
    textures = [
      generator._texture(generator.sample(rng)['frames'][1].astype(np.float32))
      for _ in range(10)
    ]
    self.assertGreater(min(textures), 3.0)

  def test_max_motion_caps_the_flow_and_keeps_it_smooth(self):
    kwargs = dict(max_translation=10.0, max_affine=3.0, local_amplitude=2.0)
    for seed in range(10):
      free = datasets.random_smooth_flow(
        np.random.default_rng(seed), (24, 32), **kwargs
      )
      capped = datasets.random_smooth_flow(
        np.random.default_rng(seed), (24, 32), max_motion=3.0, **kwargs
      )
      lengths = np.sqrt(np.sum(capped**2, axis=-1))
      self.assertLessEqual(lengths.max(), 3.0 + 1e-5)
      # A uniform scaling of the same field: directions are unchanged.
      scale = lengths.max() / np.sqrt(np.sum(free**2, axis=-1)).max()
      np.testing.assert_allclose(capped, free * scale, rtol=1e-5, atol=1e-5)
    # Fields already within the cap are left alone.
    small = dict(max_translation=0.5, max_affine=0.1, local_amplitude=0.1)
    np.testing.assert_array_equal(
      datasets.random_smooth_flow(np.random.default_rng(2), (8, 8), **small),
      datasets.random_smooth_flow(
        np.random.default_rng(2), (8, 8), max_motion=5.0, **small
      ),
    )

  def test_motion_statistics_measure_the_drawn_lengths(self):
    kwargs = dict(
      max_translation=4.0, max_affine=0.0, local_amplitude=0.0, max_motion=8.0
    )
    stats = datasets.motion_statistics((8, 8), kwargs, num_pairs=400)
    # A translation uniform in a disc of radius 4: mean length 2/3 * 4.
    self.assertAlmostEqual(stats['mean'], 8.0 / 3.0, delta=0.15)
    self.assertAlmostEqual(stats['mean_translation'], stats['mean'], places=4)
    self.assertLessEqual(stats['max'], 4.0)
    self.assertGreater(stats['max'], 3.8)
    self.assertLess(stats['median'], stats['p95'])

  def test_max_motion_sets_the_crop_margin(self):
    photo = _ramp_photo(60, 60)
    # Without the cap the sizes could reach 25 px, too far for this photo.
    kwargs = dict(
      crop_size=(16, 16),
      photos=[photo],
      scales=(1.0,),
      max_translation=20.0,
      min_texture=0.0,
    )
    with self.assertRaisesRegex(ValueError, 'large enough'):
      datasets.SyntheticFlowPairs(**kwargs)
    generator = datasets.SyntheticFlowPairs(max_motion=4.0, **kwargs)
    flow = generator.sample(np.random.default_rng(0))['flow']
    self.assertLessEqual(np.sqrt(np.sum(flow**2, axis=-1)).max(), 4.0 + 1e-5)
    with self.assertRaisesRegex(ValueError, 'max_motion must be positive'):
      datasets.SyntheticFlowPairs(max_motion=0.0, **kwargs)

  def test_too_small_photos_are_refused(self):
    with self.assertRaisesRegex(ValueError, 'large enough'):
      datasets.SyntheticFlowPairs(
        crop_size=(64, 64), photos=[_ramp_photo(40, 40)], scales=(1.0,)
      )


if __name__ == '__main__':
  absltest.main()
