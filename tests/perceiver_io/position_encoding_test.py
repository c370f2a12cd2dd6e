"""Tests of position encodings against NumPy references."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import position_encoding
from perceiver_io.ops import concat


def numpy_linear_positions(index_dims):
  axes = [np.linspace(-1.0, 1.0, n) for n in index_dims]
  return np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1)


def numpy_fourier_features(
  pos, num_bands, max_resolution, concat_pos, sine_only
):
  """Loops over every position, axis and band; no vectorisation tricks."""
  rows = []
  for p in pos:
    phases = []
    for axis, res in enumerate(max_resolution):
      for freq in np.linspace(1.0, res / 2.0, num_bands):
        phases.append(np.pi * p[axis] * freq)
    phases = np.array(phases)
    row = [np.sin(phases)] if sine_only else [np.sin(phases), np.cos(phases)]
    if concat_pos:
      row = [p] + row
    rows.append(np.concatenate(row))
  return np.array(rows)


class FourierFeaturesTest(parameterized.TestCase):
  @parameterized.product(
    grid=[
      ((5,), (16,)),
      ((4, 6), (4, 6)),
      ((2, 3, 4), (8, 6, 4)),
      ((3, 7), (224, 224)),
    ],
    num_bands=[1, 4],
    concat_pos=[True, False],
    sine_only=[True, False],
  )
  def test_matches_numpy(self, grid, num_bands, concat_pos, sine_only):
    index_dims, max_resolution = grid
    pos = numpy_linear_positions(index_dims).reshape(-1, len(index_dims))
    got = position_encoding.generate_fourier_features(
      pos.astype(np.float32), num_bands, max_resolution, concat_pos, sine_only
    )
    want = numpy_fourier_features(
      pos, num_bands, max_resolution, concat_pos, sine_only
    )
    self.assertEqual(got.shape, want.shape)
    self.assertEqual(
      got.shape[-1],
      position_encoding.fourier_num_channels(
        len(index_dims), num_bands, concat_pos, sine_only
      ),
    )
    # float32 phases of up to pi * 112 carry ~3e-5 of rounding.
    np.testing.assert_allclose(got, want, atol=1e-4)

  def test_released_widths(self):
    # 2-D K=64 (ImageNet, flow), 3-D K=32 (video), 1-D K=192 (audio).
    self.assertEqual(position_encoding.fourier_num_channels(2, 64), 258)
    self.assertEqual(position_encoding.fourier_num_channels(3, 32), 195)
    self.assertEqual(position_encoding.fourier_num_channels(1, 192), 385)

  def test_linear_positions_match_numpy(self):
    np.testing.assert_allclose(
      position_encoding.build_linear_positions((3, 5)),
      numpy_linear_positions((3, 5)),
      atol=1e-7,
    )

  def test_module_grid_and_explicit_positions(self):
    def fn(pos):
      enc = position_encoding.FourierPositionEncoding(
        index_dims=(4, 6), num_bands=3, max_resolution=(8, 12)
      )
      return enc(batch_size=2), enc(batch_size=2, pos=pos)

    pos = numpy_linear_positions((4, 6)).reshape(1, 24, 2).repeat(2, 0)
    grid, explicit = hk.transform(fn).apply({}, None, pos.astype(np.float32))
    self.assertEqual(grid.shape, (2, 24, 2 + 2 * 2 * 3))
    np.testing.assert_allclose(grid, explicit, atol=1e-6)

  def test_mismatched_dimensions_raise(self):
    def build():
      position_encoding.FourierPositionEncoding(
        index_dims=(4, 6), num_bands=3, max_resolution=(8,)
      )

    with self.assertRaisesRegex(ValueError, 'same number of dimensions'):
      hk.transform(build).init(None)
    with self.assertRaisesRegex(ValueError, 'max_resolution'):
      position_encoding.generate_fourier_features(
        np.zeros((3, 2), np.float32), 4, max_resolution=(8,)
      )


class TrainablePositionEncodingTest(absltest.TestCase):
  def test_shape_indices_and_init_scale(self):
    def fn():
      enc = position_encoding.TrainablePositionEncoding(
        index_dim=1000, num_channels=8, init_scale=0.02
      )
      return enc(batch_size=3), enc(batch_size=None, indices=np.array([7, 2]))

    transformed = hk.transform(fn)
    params = transformed.init(jax.random.PRNGKey(0))
    table = params['trainable_position_encoding']['pos_embs']
    self.assertEqual(table.shape, (1000, 8))
    self.assertAlmostEqual(float(np.std(table)), 0.02 * 0.88, delta=0.003)
    full, rows = transformed.apply(params, None)
    self.assertEqual(full.shape, (3, 1000, 8))
    np.testing.assert_array_equal(rows, table[np.array([7, 2])])

  def test_build_position_encoding_errors(self):
    def build(fn):
      return lambda: hk.transform(fn).init(None)

    with self.assertRaisesRegex(ValueError, 'Unknown position_encoding_type'):
      build(
        lambda: position_encoding.build_position_encoding('sinusoid', (4,))
      )()
    with self.assertRaisesRegex(ValueError, 'fourier_position_encoding_kwargs'):
      build(
        lambda: position_encoding.build_position_encoding('fourier', (4,))
      )()
    with self.assertRaisesRegex(ValueError, 'positive'):
      build(lambda: position_encoding.TrainablePositionEncoding(index_dim=0))()

  def test_projection(self):
    def fn():
      return position_encoding.build_position_encoding(
        'trainable',
        (4, 4),
        project_pos_dim=5,
        trainable_position_encoding_kwargs=dict(num_channels=3),
      )(2)

    transformed = hk.transform(fn)
    params = transformed.init(jax.random.PRNGKey(0))
    self.assertIn('position_encoding_projector/linear', params)
    self.assertEqual(transformed.apply(params, None).shape, (2, 16, 5))


class ConcatChannelsTest(absltest.TestCase):
  def test_equals_concatenate(self):
    rng = np.random.default_rng(0)
    parts = [
      rng.normal(size=(2, 5, 3)).astype(np.float32),
      rng.normal(size=(2, 5, 1)).astype(np.float16),
      rng.normal(size=(2, 5, 4)).astype(np.float32),
    ]
    got = concat.concat_channels([jnp.asarray(x) for x in parts])
    want = jnp.concatenate([jnp.asarray(x) for x in parts], axis=-1)
    self.assertEqual(got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)

  def test_mismatched_leading_shapes_raise(self):
    with self.assertRaisesRegex(ValueError, 'equal leading shapes'):
      concat.concat_channels([jnp.zeros((2, 5, 3)), jnp.zeros((2, 4, 1))])


if __name__ == '__main__':
  absltest.main()
