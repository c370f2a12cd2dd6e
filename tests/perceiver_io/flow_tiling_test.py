"""Tests for perceiver_io.flow_tiling: tiled flow on frames of any size."""

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import flow_tiling
from perceiver_io import models


def _pixelwise_flow_fn(calls=None):
  """A stand-in model whose flow at a pixel depends only on that pixel."""

  def flow_fn(tiles):
    tiles = np.asarray(tiles)
    if calls is not None:
      calls.append(tiles.shape)
    return 3.0 * tiles[:, 0, ..., :2] - tiles[:, 1, ..., 1:]

  return flow_fn


def _frames(height, width, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (2, height, width, 3)).astype(np.float32)


class GridTest(parameterized.TestCase):
  @parameterized.parameters(
    (368, 368, 20),
    (436, 368, 20),
    (1024, 496, 20),
    (375, 368, 20),
    (1242, 496, 20),
    (100, 16, 5),
    (17, 16, 0),
    (33, 16, 15),
  )
  def test_tiles_cover_the_axis_with_enough_overlap(self, size, tile, overlap):
    starts = flow_tiling.tile_starts(size, tile, overlap)
    self.assertEqual(starts[0], 0)
    self.assertEqual(starts[-1] + tile, size)
    gaps = np.diff(starts)
    self.assertTrue((gaps > 0).all())
    self.assertLessEqual(int(np.max(gaps, initial=0)), tile - overlap)

  def test_sintel_frame_gets_six_tiles_like_the_paper(self):
    grid = flow_tiling.tile_grid((436, 1024))
    self.assertLen(grid, 6)
    self.assertEqual(sorted({t for t, _ in grid}), [0, 68])
    self.assertEqual(sorted({left for _, left in grid}), [0, 264, 528])

  def test_weights_fall_off_towards_the_edges(self):
    weights = flow_tiling.tile_weights((6, 9))
    self.assertEqual(weights[0, 0], 1)
    self.assertEqual(weights[0, 4], 1)  # Any border pixel.
    self.assertEqual(weights.max(), weights[2:4, 4].max())
    self.assertEqual(weights[2, 4], 3)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'smaller than a tile'):
      flow_tiling.tile_starts(10, 16)
    with self.assertRaisesRegex(ValueError, 'min_overlap'):
      flow_tiling.tile_starts(40, 16, 16)
    with self.assertRaisesRegex(ValueError, r'\[2, H, W, 3\]'):
      flow_tiling.compute_flow(np.zeros((3, 8, 8, 3)), _pixelwise_flow_fn())
    with self.assertRaisesRegex(ValueError, 'small_frames'):
      flow_tiling.compute_flow(
        _frames(8, 8),
        _pixelwise_flow_fn(),
        tile_size=(16, 16),
        small_frames='crop',
      )


class ComputeFlowTest(parameterized.TestCase):
  @parameterized.parameters((16, 24), (40, 70), (17, 25), (45, 24))
  def test_pixelwise_model_is_reproduced_exactly(self, height, width):
    frames = _frames(height, width)
    calls = []
    flow = flow_tiling.compute_flow(
      frames,
      _pixelwise_flow_fn(calls),
      tile_size=(16, 24),
      min_overlap=4,
      tile_batch_size=3,
    )
    expected = _pixelwise_flow_fn()(frames[None])[0]
    np.testing.assert_allclose(flow, expected, atol=1e-5)
    num_tiles = len(flow_tiling.tile_grid((height, width), (16, 24), 4))
    # Batches of exactly 3 tiles (the last padded), as few as possible.
    self.assertLen(calls, -(-num_tiles // 3))
    self.assertTrue(all(shape == (3, 2, 16, 24, 3) for shape in calls))

  def test_overlaps_are_blended_by_edge_distance(self):
    # Each tile predicts one constant: its own left offset.
    def flow_fn(tiles):
      offsets = np.asarray(tiles)[:, 0, 0, 0, 0]
      return np.broadcast_to(
        offsets[:, None, None, None], tiles.shape[:1] + (8, 10, 2)
      )

    width = 16
    frames = np.zeros((2, 8, width, 3), np.float32)
    frames[0, ..., 0] = np.arange(width)[None, :]  # Pixel x holds x.
    flow = flow_tiling.compute_flow(
      frames, flow_fn, tile_size=(8, 10), min_overlap=2, tile_batch_size=1
    )
    # Two tiles, at x = 0 and x = 6, overlapping on x in [6, 10).
    weights = flow_tiling.tile_weights((8, 10))
    for x in range(width):
      w0 = weights[3, x] if x < 10 else 0.0
      w1 = weights[3, x - 6] if x >= 6 else 0.0
      self.assertAlmostEqual(flow[3, x, 0], (w0 * 0 + w1 * 6) / (w0 + w1), 5)

  def test_small_frames_resize_scales_the_vectors(self):
    def constant_flow_fn(tiles):
      return np.broadcast_to(
        np.array([2.0, 1.0], np.float32),
        tiles.shape[:1] + tiles.shape[2:4] + (2,),
      )

    flow = flow_tiling.compute_flow(
      _frames(10, 15),
      constant_flow_fn,
      tile_size=(16, 24),
      small_frames='resize',
    )
    self.assertEqual(flow.shape, (10, 15, 2))
    # The frames were magnified 1.6x; the motion shrinks back by as much.
    np.testing.assert_allclose(flow[..., 0], 2.0 / 1.6, rtol=1e-5)
    np.testing.assert_allclose(flow[..., 1], 1.0 / 1.6, rtol=1e-5)

  def test_small_frames_pad_keeps_the_pixels(self):
    frames = _frames(10, 30)
    flow = flow_tiling.compute_flow(
      frames,
      _pixelwise_flow_fn(),
      tile_size=(16, 24),
      small_frames='pad',
      min_overlap=4,
    )
    self.assertEqual(flow.shape, (10, 30, 2))
    np.testing.assert_allclose(
      flow, _pixelwise_flow_fn()(frames[None])[0], atol=1e-5
    )

  def test_sintel_sized_frames(self):
    frames = _frames(436, 1024)
    calls = []
    flow = flow_tiling.compute_flow(
      frames, _pixelwise_flow_fn(calls), tile_batch_size=6
    )
    self.assertEqual(flow.shape, (436, 1024, 2))
    self.assertLen(calls, 1)
    np.testing.assert_allclose(
      flow, _pixelwise_flow_fn()(frames[None])[0], atol=1e-5
    )


class ModelTilingTest(parameterized.TestCase):
  """Tiling around the real flow model."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = models.get_config(models.OPTICAL_FLOW)
    config.train_size = (8, 12)
    config.input_preprocessor.num_channels = 8
    for section in (config.input_preprocessor, config.decoder):
      section.fourier_position_encoding_kwargs.update(
        dict(num_bands=2, max_resolution=(8, 12))
      )
    config.encoder.update(
      dict(
        num_self_attends_per_block=1,
        z_index_dim=8,
        num_z_channels=16,
        num_self_attend_heads=2,
      )
    )
    cls.model = models.build(models.OPTICAL_FLOW, config)
    frames = np.zeros((1, 2, 8, 12, 3), np.float32)
    params, cls.state = cls.model.init(jax.random.PRNGKey(0), frames=frames)
    # The output layer starts at zero; randomise it so the flow is not 0.
    rng = np.random.default_rng(0)
    cls.params = jax.tree.map(
      lambda p: p + rng.normal(0, 0.5, p.shape).astype(p.dtype), params
    )

  def test_one_tile_frame_equals_a_direct_run(self):
    frames = _frames(8, 12, seed=3)
    direct, _ = self.model.apply(
      self.params, self.state, None, frames=frames[None]
    )
    flow_fn = flow_tiling.make_flow_fn(self.model, self.params, self.state)
    tiled = flow_tiling.compute_flow(
      frames, flow_fn, tile_size=(8, 12), tile_batch_size=2
    )
    self.assertGreater(np.abs(direct).max(), 1e-3)
    np.testing.assert_allclose(
      tiled, np.asarray(direct[0]), rtol=1e-5, atol=1e-5
    )

  def test_large_frame_tiles_match_direct_runs_where_covered_once(self):
    frames = _frames(8, 30, seed=4)
    flow_fn = flow_tiling.make_flow_fn(self.model, self.params, self.state)
    tiled = flow_tiling.compute_flow(
      frames, flow_fn, tile_size=(8, 12), min_overlap=2, tile_batch_size=4
    )
    self.assertEqual(tiled.shape, (8, 30, 2))
    # The first tile alone covers the first columns.
    first, _ = self.model.apply(
      self.params, self.state, None, frames=frames[None, :, :, :12]
    )
    lefts = [left for _, left in flow_tiling.tile_grid((8, 30), (8, 12), 2)]
    np.testing.assert_allclose(
      tiled[:, : lefts[1]],
      np.asarray(first[0, :, : lefts[1]]),
      rtol=1e-5,
      atol=1e-5,
    )


if __name__ == '__main__':
  absltest.main()
