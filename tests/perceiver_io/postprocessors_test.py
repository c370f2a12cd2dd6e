"""Tests of the postprocessors: shapes, values and errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import patching
from perceiver_io import postprocessors


def _run(make, inputs, **kwargs):
  """Inits and applies `make()(inputs, ...)`; returns (outputs, params)."""

  def fn(inputs):
    return make()(inputs, is_training=False, **kwargs)

  transformed = hk.transform(fn)
  params = transformed.init(jax.random.PRNGKey(0), inputs)
  return transformed.apply(params, None, inputs), params


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _linear_params(params):
  """The (w, b) of the only linear or 1x1 conv in `params`."""
  (linear,) = params.values()
  return np.asarray(linear['w']), np.asarray(linear['b'])


class ImagePostprocessorTest(parameterized.TestCase):
  def test_pixels_reshapes_flat_outputs_to_the_image(self):
    x = _normal(2, 12, 3)
    out, params = _run(
      lambda: postprocessors.ImagePostprocessor(
        'pixels', input_reshape_size=(3, 4)
      ),
      x,
    )
    self.assertEmpty(params)
    np.testing.assert_array_equal(out, x.reshape(2, 3, 4, 3))

  @parameterized.named_parameters(
    ('image', (2, 4, 6, 3), 1, 2, (2, 3)),
    ('video', (1, 4, 4, 6, 2), 2, 2, (2, 2, 3)),
  )
  def test_patches_inverts_space_to_depth(self, shape, temporal, spatial, grid):
    frames = _normal(*shape)
    patches = patching.space_to_depth(frames, temporal, spatial)
    flat = np.reshape(patches, (shape[0], -1, patches.shape[-1]))  # [B, O, C]
    out, _ = _run(
      lambda: postprocessors.ImagePostprocessor(
        'patches',
        spatial_upsample=spatial,
        temporal_upsample=temporal,
        input_reshape_size=grid,
      ),
      flat,
    )
    np.testing.assert_array_equal(out, frames)

  @parameterized.named_parameters(
    ('image', (2, 3, 4, 5)), ('video', (2, 2, 3, 4, 5))
  )
  def test_conv1x1_is_a_per_pixel_linear(self, shape):
    x = _normal(*shape)
    out, params = _run(
      lambda: postprocessors.ImagePostprocessor('conv1x1', n_outputs=7), x
    )
    w, b = _linear_params(params)
    self.assertEqual(w.shape, (1, 1, 5, 7))
    np.testing.assert_allclose(out, x @ w[0, 0] + b, rtol=1e-5, atol=1e-5)

  def test_conv_upsamples_images_4x(self):
    x = _normal(2, 3, 5, 4)
    out, params = _run(
      lambda: postprocessors.ImagePostprocessor(
        'conv', spatial_upsample=4, n_outputs=3
      ),
      x,
    )
    self.assertEqual(out.shape, (2, 12, 20, 3))
    prefix = 'image_postprocessor/~/conv2_d_upsample/~/'
    self.assertEqual(params[prefix + 'transp_conv_1']['w'].shape, (4, 4, 6, 4))
    self.assertEqual(params[prefix + 'transp_conv_2']['w'].shape, (4, 4, 3, 6))

    def transposed_conv(x, layer):  # 4x4, stride 2, SAME; w is [4, 4, O, I].
      layer = params[prefix + layer]
      return layer['b'] + jax.lax.conv_transpose(
        x,
        layer['w'],
        (2, 2),
        'SAME',
        dimension_numbers=('NHWC', 'HWOI', 'NHWC'),
      )

    want = transposed_conv(
      jax.nn.relu(transposed_conv(x, 'transp_conv_1')), 'transp_conv_2'
    )
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # Per frame for videos: frame t of a video is the image on its own.
    video = np.stack([x, _normal(2, 3, 5, 4, seed=1)], axis=1)
    transformed = hk.transform(
      lambda v: postprocessors.ImagePostprocessor(
        'conv', spatial_upsample=4, n_outputs=3
      )(v, is_training=False)
    )
    video_out = transformed.apply(params, None, video)
    self.assertEqual(video_out.shape, (2, 2, 12, 20, 3))
    np.testing.assert_allclose(video_out[:, 0], out, rtol=1e-5, atol=1e-5)

  def test_conv_upsamples_videos_in_time_and_space(self):
    x = _normal(1, 2, 3, 3, 4)
    out, params = _run(
      lambda: postprocessors.ImagePostprocessor(
        'conv', spatial_upsample=4, temporal_upsample=2, n_outputs=3
      ),
      x,
    )
    self.assertEqual(out.shape, (1, 4, 12, 12, 3))
    # Two layers (max of 1 time and 2 space upsamples): 2n, then n channels.
    prefix = 'image_postprocessor/~/conv3_d_upsample/'
    self.assertEqual(
      params[prefix + 'conv3d_transpose_0']['w'].shape, (4, 4, 4, 6, 4)
    )
    self.assertEqual(
      params[prefix + 'conv3d_transpose_1']['w'].shape, (4, 4, 4, 3, 6)
    )

  @parameterized.named_parameters(
    ('unknown', dict(postproc_type='fft'), "Unknown postproc_type 'fft'"),
    (
      'pixels_upsample',
      dict(postproc_type='pixels', spatial_upsample=2),
      'cannot upsample',
    ),
    ('conv_no_outputs', dict(postproc_type='conv'), 'needs n_outputs'),
    (
      'conv1x1_stride',
      dict(postproc_type='conv1x1', n_outputs=3, spatial_upsample=2),
      'maps channels only',
    ),
    (
      'conv_2d_factor',
      dict(postproc_type='conv', n_outputs=3, spatial_upsample=2),
      'spatial_upsample must be 4',
    ),
    (
      'conv_3d_factor',
      dict(
        postproc_type='conv',
        n_outputs=3,
        spatial_upsample=4,
        temporal_upsample=3,
      ),
      'temporal_upsample must be a power of 2; got 3',
    ),
  )
  def test_constructor_errors(self, kwargs, regex):
    with self.assertRaisesRegex(ValueError, regex):
      hk.transform(lambda: postprocessors.ImagePostprocessor(**kwargs)).init(
        None
      )


class LinearPostprocessorsTest(absltest.TestCase):
  def test_audio_flattens_projected_patches(self):
    x = _normal(2, 3, 5)
    out, params = _run(
      lambda: postprocessors.AudioPostprocessor(samples_per_patch=4), x
    )
    w, b = _linear_params(params)
    self.assertEqual(out.shape, (2, 12))
    np.testing.assert_allclose(
      out, np.reshape(x @ w + b, (2, 12)), rtol=1e-5, atol=1e-5
    )
    with self.assertRaisesRegex(ValueError, 'supports postproc_type="patches"'):
      hk.transform(
        lambda: postprocessors.AudioPostprocessor(postproc_type='conv')
      ).init(None)

  def test_projection_projects_every_output(self):
    x = _normal(2, 3, 5)
    out, params = _run(
      lambda: postprocessors.ProjectionPostprocessor(num_outputs=4), x
    )
    w, b = _linear_params(params)
    self.assertEqual(out.shape, (2, 3, 4))
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-5, atol=1e-5)

  def test_classification_takes_the_first_output(self):
    x = _normal(2, 3, 5)
    out, params = _run(
      lambda: postprocessors.ClassificationPostprocessor(num_classes=6), x
    )
    w, b = _linear_params(params)
    self.assertEqual(out.shape, (2, 6))
    np.testing.assert_allclose(out, x[:, 0] @ w + b, rtol=1e-5, atol=1e-5)

  def test_identity(self):
    x = _normal(2, 3, 5)
    out, params = _run(postprocessors.IdentityPostprocessor, x)
    self.assertEmpty(params)
    np.testing.assert_array_equal(out, x)


class MultimodalPostprocessorTest(absltest.TestCase):
  def _make(self):
    return postprocessors.MultimodalPostprocessor(
      modalities={
        'b': postprocessors.ProjectionPostprocessor(num_outputs=4, name='b'),
        'a': postprocessors.IdentityPostprocessor(name='a'),
      }
    )

  def test_splits_in_sorted_order_and_routes_per_modality(self):
    x = _normal(2, 5, 3)
    out, params = _run(self._make, x, modality_sizes={'b': 2, 'a': 3})
    self.assertEqual(set(out), {'a', 'b'})
    np.testing.assert_array_equal(out['a'], x[:, :3])
    w, b = _linear_params(params)
    np.testing.assert_allclose(out['b'], x[:, 3:] @ w + b, rtol=1e-5, atol=1e-5)

  def test_errors(self):
    x = _normal(2, 5, 3)
    with self.assertRaisesRegex(ValueError, 'needs modality_sizes'):
      _run(self._make, x)
    with self.assertRaisesRegex(ValueError, r'add up to 4, but .* 5'):
      _run(self._make, x, modality_sizes={'a': 3, 'b': 1})
    with self.assertRaisesRegex(ValueError, r"names \['a', 'c'\]"):
      _run(self._make, x, modality_sizes={'a': 3, 'c': 2})


class EmbeddingDecoderTest(absltest.TestCase):
  def test_logits_are_tied_embeddings_plus_bias(self):
    embeddings = _normal(7, 4, seed=1)  # [V, d_model]
    x = _normal(2, 3, 4)

    def fn(x):
      return postprocessors.EmbeddingDecoder(jnp.asarray(embeddings))(x)

    transformed = hk.transform(fn)
    params = transformed.init(None, x)
    self.assertEqual(params['embedding_decoder']['bias'].shape, (7,))
    bias = _normal(7, seed=2)
    logits = transformed.apply({'embedding_decoder': {'bias': bias}}, None, x)
    self.assertEqual(logits.shape, (2, 3, 7))
    np.testing.assert_allclose(
      logits, x @ embeddings.T + bias, rtol=1e-5, atol=1e-5
    )

  def test_computes_in_the_dtype_of_its_inputs(self):
    embeddings = jnp.asarray(_normal(7, 4, seed=1))

    def fn(x):
      return postprocessors.EmbeddingDecoder(embeddings)(x)

    x = jnp.asarray(_normal(2, 3, 4), jnp.bfloat16)
    transformed = hk.transform(fn)
    logits = transformed.apply(transformed.init(None, x), None, x)
    self.assertEqual(logits.dtype, jnp.bfloat16)

  def test_rejects_mismatched_channels(self):
    embeddings = jnp.asarray(_normal(7, 4))

    def fn(x):
      return postprocessors.EmbeddingDecoder(embeddings)(x)

    with self.assertRaisesRegex(ValueError, 'expects 4 channels; got 5'):
      hk.transform(fn).init(None, _normal(2, 3, 5))


if __name__ == '__main__':
  absltest.main()
