"""Tests of the input preprocessors: shapes, names and errors."""

import haiku as hk
import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import position_encoding
from perceiver_io import preprocessors

FOURIER = dict(
  position_encoding_type='fourier',
  fourier_position_encoding_kwargs=dict(num_bands=2, max_resolution=(4, 4)),
)


def _run(fn, *args, is_training=False):
  transformed = hk.transform_with_state(fn)
  params, state = transformed.init(jax.random.PRNGKey(0), *args)
  out, _ = transformed.apply(params, state, jax.random.PRNGKey(1), *args)
  return out, params


class ImagePreprocessorTest(parameterized.TestCase):
  @parameterized.parameters(
    # prep_type, kwargs, image shape, expected [M, C].
    ('pixels', dict(spatial_downsample=2), (8, 8, 3), (16, 3 + 10)),
    (
      'conv1x1',
      dict(spatial_downsample=2, num_channels=5),
      (8, 8, 3),
      (16, 5 + 10),
    ),
    (
      'conv',
      dict(spatial_downsample=4, num_channels=6),
      (16, 16, 3),
      (16, 6 + 10),
    ),
    ('patches', dict(spatial_downsample=2), (8, 8, 3), (16, 12 + 10)),
    (
      'patches',
      dict(spatial_downsample=2, conv_after_patching=True, num_channels=7),
      (8, 8, 3),
      (16, 7 + 10),
    ),
  )
  def test_shapes(self, prep_type, kwargs, image_shape, expected):
    def fn(images):
      prep = preprocessors.ImagePreprocessor(
        prep_type=prep_type, **FOURIER, **kwargs
      )
      return prep(images, is_training=False)

    (with_pos, sizes, without_pos), _ = _run(
      fn, np.ones((2, *image_shape), np.float32)
    )
    self.assertEqual(with_pos.shape, (2, *expected))
    self.assertIsNone(sizes)
    self.assertEqual(without_pos.shape[:2], (2, expected[0]))

  def test_fourier_features_are_written_into_the_network_inputs(self):
    # 65,536 pixels with 64 bands per axis: the features alone would take
    # 67 MB. Concatenated in place, nothing but the result is allocated.
    size, bands = 256, 64
    features_bytes = size * size * (2 + 4 * bands) * 4

    def fn(images):
      return preprocessors.ImagePreprocessor(
        prep_type='pixels',
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          num_bands=bands, max_resolution=(size, size)
        ),
      )(images, is_training=False)[0]

    transformed = hk.transform(fn)
    images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    compiled = jax.jit(transformed.apply).lower({}, None, images).compile()
    self.assertLess(
      compiled.memory_analysis().temp_size_in_bytes, features_bytes / 8
    )

  def test_explicit_positions_replace_the_grid(self):
    def fn(images, pos):
      prep = preprocessors.ImagePreprocessor(
        prep_type='pixels', spatial_downsample=1, **FOURIER
      )
      return prep(images, is_training=False, pos=pos)[0]

    images = np.random.default_rng(0).normal(size=(2, 4, 4, 3))
    images = images.astype(np.float32)
    grid = position_encoding.build_linear_positions((4, 4)).reshape(1, 16, 2)
    grid = np.broadcast_to(grid, (2, 16, 2))
    transformed = hk.transform(fn)
    default = transformed.apply({}, None, images, None)
    np.testing.assert_allclose(
      transformed.apply({}, None, images, grid), default, atol=1e-6
    )
    flipped = transformed.apply({}, None, images, -grid)
    want = position_encoding.generate_fourier_features(-grid[0], 2, (4, 4))
    np.testing.assert_allclose(flipped[0, :, 3:], want, atol=1e-6)
    np.testing.assert_array_equal(flipped[..., :3], images.reshape(2, 16, 3))

  def test_network_input_is_1d_false_keeps_the_grid(self):
    def fn(images, network_input_is_1d):
      prep = preprocessors.ImagePreprocessor(
        prep_type='pixels', spatial_downsample=1, **FOURIER
      )
      return prep(
        images, is_training=False, network_input_is_1d=network_input_is_1d
      )

    images = np.ones((2, 4, 4, 3), np.float32)
    transformed = hk.transform(fn)
    flat, _, _ = transformed.apply({}, None, images, True)
    grid, _, without_pos = transformed.apply({}, None, images, False)
    self.assertEqual(grid.shape, (2, 4, 4, 3 + 10))
    self.assertEqual(without_pos.shape, (2, 4, 4, 3))
    np.testing.assert_array_equal(np.reshape(grid, flat.shape), flat)

  def test_extra_pos_mlp_and_add(self):
    def fn(images):
      prep = preprocessors.ImagePreprocessor(
        prep_type='conv1x1',
        spatial_downsample=1,
        num_channels=10,
        n_extra_pos_mlp=2,
        concat_or_add_pos='add',
        **FOURIER,
      )
      return prep(images, is_training=False)

    (with_pos, _, without_pos), params = _run(
      fn, np.ones((1, 4, 4, 3), np.float32)
    )
    self.assertEqual(with_pos.shape, (1, 16, 10))
    self.assertIn('image_preprocessor/~_build_network_inputs/linear_1', params)
    self.assertGreater(np.max(np.abs(with_pos - without_pos)), 0.0)

  @parameterized.parameters(
    (dict(prep_type='bicubic'), "Unknown prep_type 'bicubic'"),
    (
      dict(prep_type='pixels', concat_or_add_pos='mul'),
      "Unknown concat_or_add_pos 'mul'",
    ),
    (
      dict(prep_type='pixels', position_encoding_type='rotary'),
      "Unknown position_encoding_type 'rotary'",
    ),
    (dict(prep_type='conv1x1', temporal_downsample=2), 'cannot downsample'),
  )
  def test_constructor_errors(self, kwargs, regex):
    kwargs = {**FOURIER, **kwargs}

    def fn(images):
      return preprocessors.ImagePreprocessor(**kwargs)(
        images, is_training=False
      )

    with self.assertRaisesRegex(ValueError, regex):
      _run(fn, np.ones((1, 4, 4, 3), np.float32))

  def test_add_needs_equal_widths(self):
    def fn(images):
      return preprocessors.ImagePreprocessor(
        prep_type='pixels',
        spatial_downsample=1,
        concat_or_add_pos='add',
        **FOURIER,
      )(images, is_training=False)

    with self.assertRaisesRegex(ValueError, 'as wide as the inputs'):
      _run(fn, np.ones((1, 4, 4, 3), np.float32))


class AudioAndMultimodalTest(absltest.TestCase):
  def test_audio_patches(self):
    def fn(audio):
      return preprocessors.AudioPreprocessor(
        samples_per_patch=4,
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          num_bands=3, max_resolution=(32,)
        ),
      )(audio, is_training=False)

    (with_pos, _, without_pos), _ = _run(fn, np.ones((2, 32, 1), np.float32))
    self.assertEqual(with_pos.shape, (2, 8, 4 + 7))
    self.assertEqual(without_pos.shape, (2, 8, 4))
    with self.assertRaisesRegex(ValueError, 'do not split'):
      _run(fn, np.ones((2, 30, 1), np.float32))

  def test_multimodal_padding_and_masking(self):
    def fn(audio, label):
      prep = preprocessors.MultimodalPreprocessor(
        modalities={
          'audio': preprocessors.AudioPreprocessor(
            samples_per_patch=4,
            position_encoding_type='fourier',
            fourier_position_encoding_kwargs=dict(
              num_bands=3, max_resolution=(32,)
            ),
          ),
          'label': preprocessors.OneHotPreprocessor(),
        },
        mask_probs={'audio': 0.0, 'label': 1.0},
        min_padding_size=2,
      )
      return prep({'audio': audio, 'label': label}, is_training=False)

    (out, sizes, _), params = _run(
      fn, np.ones((2, 32, 1), np.float32), np.ones((2, 5), np.float32)
    )
    self.assertEqual(sizes, {'audio': 8, 'label': 1})
    self.assertEqual(out.shape, (2, 9, 13))  # max(11, 5) + 2 channels.
    self.assertEqual(
      params['multimodal_preprocessor/label_padding']['pos_embs'].shape, (1, 8)
    )
    mask_token = params['multimodal_preprocessor/label_mask_token']['pos_embs']
    np.testing.assert_allclose(out[:, 8], np.repeat(mask_token, 2, 0))

  def test_bytes_preprocessor_rejects_floats(self):
    def fn(ids):
      return preprocessors.BytesPreprocessor(
        vocab_size=262, d_model=4, max_seq_len=8
      )(ids, is_training=False)

    (embedded, _, _), params = _run(fn, np.ones((2, 8), np.int32))
    self.assertEqual(embedded.shape, (2, 8, 4))
    self.assertIn('embed', params)
    self.assertIn('trainable_position_encoding', params)
    with self.assertRaisesRegex(ValueError, 'integer token ids'):
      _run(fn, np.ones((2, 8), np.float32))


if __name__ == '__main__':
  absltest.main()
