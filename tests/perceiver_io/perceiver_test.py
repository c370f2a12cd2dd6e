"""Tests of the `Perceiver` assembly: wiring, masks, subsampling and rngs."""

import haiku as hk
import jax
import numpy as np
from absl.testing import absltest

from perceiver_io import decoders
from perceiver_io import encoder as encoder_lib
from perceiver_io import perceiver
from perceiver_io import postprocessors
from perceiver_io import preprocessors


def _encoder(**kwargs):
  return encoder_lib.PerceiverEncoder(
    num_self_attends_per_block=1,
    num_blocks=1,
    z_index_dim=4,
    num_z_channels=8,
    num_cross_attend_heads=1,
    num_self_attend_heads=2,
    qk_channels=8,
    **kwargs,
  )


def _decoder(num_outputs=6, **kwargs):
  return decoders.BasicDecoder(
    output_num_channels=3,
    output_index_dims=(num_outputs,),
    trainable_position_encoding_kwargs=dict(num_channels=8),
    **kwargs,
  )


def _normal(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _model(make_parts=None, **call_kwargs):
  """A transformed tiny Perceiver over [B, M, C] arrays."""
  make_parts = make_parts or (
    lambda: dict(encoder=_encoder(), decoder=_decoder())
  )

  def fn(inputs, is_training=False, **kwargs):
    model = perceiver.Perceiver(**make_parts())
    return model(inputs, is_training=is_training, **call_kwargs, **kwargs)

  return hk.transform(fn)


class WiringTest(absltest.TestCase):
  def test_equals_calling_the_parts_in_turn(self):
    images = _normal(2, 4, 4, 3)

    def parts():
      return dict(
        input_preprocessor=preprocessors.ImagePreprocessor(
          prep_type='pixels',
          spatial_downsample=1,
          position_encoding_type='trainable',
          trainable_position_encoding_kwargs=dict(num_channels=5),
        ),
        encoder=_encoder(),
        decoder=_decoder(),
        output_postprocessor=postprocessors.ProjectionPostprocessor(4),
      )

    def by_hand(images):
      p = parts()
      x, sizes, x_without_pos = p['input_preprocessor'](
        images, is_training=False
      )  # [B, 16, 3 + 5]
      query = p['decoder'].decoder_query(x, sizes, x_without_pos)
      z = p['encoder'](x, p['encoder'].latents(x), is_training=False)
      outputs = p['decoder'](query, z, is_training=False)
      return p['output_postprocessor'](outputs, is_training=False)

    model = _model(parts)
    params = model.init(jax.random.PRNGKey(0), images)
    by_hand = hk.transform(by_hand)
    # The parts keep their own top-level names: no 'perceiver/' prefix.
    self.assertEqual(
      set(params), set(by_hand.init(jax.random.PRNGKey(0), images))
    )
    self.assertFalse([k for k in params if k.startswith('perceiver/')])
    out = model.apply(params, None, images)
    self.assertEqual(out.shape, (2, 6, 4))
    np.testing.assert_allclose(
      out, by_hand.apply(params, None, images), rtol=1e-6, atol=1e-6
    )

  def test_without_a_preprocessor_inputs_must_be_arrays_of_rank_3(self):
    model = _model()
    params = model.init(jax.random.PRNGKey(0), _normal(2, 5, 3))
    self.assertEqual(
      model.apply(params, None, _normal(2, 5, 3)).shape, (2, 6, 3)
    )
    for bad, what in (
      (_normal(2, 5, 5, 3), r'shape \(2, 5, 5, 3\)'),
      ({'audio': _normal(2, 5, 3)}, 'a dict'),
    ):
      with self.assertRaisesRegex(
        ValueError, f'got {what}.*input_preprocessor'
      ):
        model.apply(params, None, bad)

  def test_subsampled_output_points_decode_those_rows(self):
    inputs = _normal(2, 5, 3)
    model = _model()
    params = model.init(jax.random.PRNGKey(0), inputs)
    full = model.apply(params, None, inputs)  # [B, 6, 3]
    points = np.array([4, 1])
    part = model.apply(params, None, inputs, subsampled_output_points=points)
    self.assertEqual(part.shape, (2, 2, 3))
    np.testing.assert_allclose(part, full[:, points], rtol=1e-5, atol=1e-6)


class MaskTest(absltest.TestCase):
  def test_input_mask_hides_inputs_from_the_encoder(self):
    inputs = _normal(2, 5, 3)
    changed = inputs.copy()
    changed[:, 1:3] = _normal(2, 2, 3, seed=1)
    mask = np.array([[1, 0, 0, 1, 1]] * 2, np.int32)
    model = _model()
    params = model.init(jax.random.PRNGKey(0), inputs)

    def run(x, input_mask=None):
      return model.apply(params, None, x, input_mask=input_mask)

    np.testing.assert_allclose(
      run(inputs, mask), run(changed, mask), rtol=1e-5, atol=1e-6
    )
    self.assertGreater(np.max(np.abs(run(inputs) - run(changed))), 1e-4)
    with self.assertRaisesRegex(ValueError, 'input_mask must have shape'):
      run(inputs, mask[:, :4])

  def test_query_mask_reaches_the_decoder(self):
    inputs = _normal(2, 5, 3)
    query_mask = np.array([[1, 1, 0, 1, 1, 0]] * 2, np.int32)
    model = _model()
    params = model.init(jax.random.PRNGKey(0), inputs)
    masked = model.apply(params, None, inputs, query_mask=query_mask)
    unmasked = model.apply(params, None, inputs)

    def by_hand(inputs):
      encoder, decoder = _encoder(), _decoder()
      query = decoder.decoder_query(inputs)
      z = encoder(inputs, encoder.latents(inputs), is_training=False)
      return decoder(query, z, is_training=False, query_mask=query_mask)

    np.testing.assert_allclose(
      masked,
      hk.transform(by_hand).apply(params, None, inputs),
      rtol=1e-6,
      atol=1e-6,
    )
    self.assertGreater(np.max(np.abs(masked[:, 2] - unmasked[:, 2])), 1e-4)
    np.testing.assert_allclose(masked[:, 0], unmasked[:, 0], rtol=1e-5)
    with self.assertRaisesRegex(ValueError, 'query_mask must have shape'):
      model.apply(params, None, inputs, query_mask=query_mask[:, :5])


class TrainingTest(absltest.TestCase):
  def test_dropout_uses_the_rng_only_when_training(self):
    inputs = _normal(2, 5, 3)
    model = _model(
      lambda: dict(encoder=_encoder(dropout_prob=0.5), decoder=_decoder())
    )
    params = model.init(jax.random.PRNGKey(0), inputs)

    def run(rng, is_training):
      return model.apply(params, rng, inputs, is_training=is_training)

    key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(run(None, False), run(key1, False))
    np.testing.assert_array_equal(run(key1, True), run(key1, True))
    self.assertGreater(np.max(np.abs(run(key1, True) - run(key2, True))), 1e-4)
    self.assertGreater(np.max(np.abs(run(key1, True) - run(None, False))), 1e-4)
    with self.assertRaisesRegex(ValueError, 'PRNGKey'):
      run(None, True)

  def test_is_training_reaches_the_preprocessor(self):
    # BatchNorm statistics in the conv preprocessor move only in training.
    def fn(images, is_training):
      model = perceiver.Perceiver(
        input_preprocessor=preprocessors.ImagePreprocessor(
          prep_type='conv',
          spatial_downsample=4,
          num_channels=4,
          position_encoding_type='trainable',
          trainable_position_encoding_kwargs=dict(num_channels=4),
        ),
        encoder=_encoder(),
        decoder=_decoder(),
      )
      return model(images, is_training=is_training)

    model = hk.transform_with_state(fn)
    images = _normal(2, 8, 8, 3)
    params, state = model.init(jax.random.PRNGKey(0), images, False)
    _, eval_state = model.apply(params, state, None, images, False)
    _, train_state = model.apply(params, state, None, images, True)
    leaves = jax.tree.leaves
    for before, after in zip(leaves(state), leaves(eval_state), strict=True):
      np.testing.assert_array_equal(before, after)
    self.assertTrue(
      any(
        np.max(np.abs(before - after)) > 1e-6
        for before, after in zip(
          leaves(state), leaves(train_state), strict=True
        )
      )
    )


class MultimodalTest(absltest.TestCase):
  def _parts(self, subsampled_index_dims=None):
    return dict(
      input_preprocessor=preprocessors.MultimodalPreprocessor(
        modalities={
          'audio': preprocessors.AudioPreprocessor(
            samples_per_patch=2,
            position_encoding_type='trainable',
            trainable_position_encoding_kwargs=dict(num_channels=3),
          ),
          'label': preprocessors.OneHotPreprocessor(),
        }
      ),
      encoder=_encoder(),
      decoder=decoders.MultimodalDecoder(
        modalities={
          'audio': _decoder(num_outputs=4, name='audio_decoder'),
          'label': decoders.ClassificationDecoder(
            num_classes=5,
            trainable_position_encoding_kwargs=dict(num_channels=8),
            name='label_decoder',
          ),
        },
        num_outputs=None,
        output_num_channels=6,
        subsampled_index_dims=subsampled_index_dims,
      ),
      output_postprocessor=postprocessors.MultimodalPostprocessor(
        modalities={
          'audio': postprocessors.AudioPostprocessor(samples_per_patch=2),
          'label': postprocessors.ClassificationPostprocessor(num_classes=5),
        }
      ),
    )

  def test_outputs_are_split_by_the_preprocessors_sizes(self):
    inputs = {'audio': _normal(2, 8, 1), 'label': _normal(2, 5)}
    model = _model(self._parts)
    out = model.apply(model.init(jax.random.PRNGKey(0), inputs), None, inputs)
    self.assertEqual(out['audio'].shape, (2, 8))  # 4 patches of 2 samples.
    self.assertEqual(out['label'].shape, (2, 5))

  def test_subsampled_outputs_are_split_by_the_decoders_sizes(self):
    inputs = {'audio': _normal(2, 8, 1), 'label': _normal(2, 5)}
    model = _model(self._parts)
    params = model.init(jax.random.PRNGKey(0), inputs)
    full = model.apply(params, None, inputs)
    sub = _model(lambda: self._parts(dict(audio=2, label=1)))
    points = {'audio': np.array([3, 0]), 'label': None}
    part = sub.apply(params, None, inputs, subsampled_output_points=points)
    self.assertEqual(part['audio'].shape, (2, 4))
    # Patches 3 and 0, two samples each.
    want = full['audio'].reshape(2, 4, 2)[:, [3, 0]].reshape(2, 4)
    np.testing.assert_allclose(part['audio'], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(part['label'], full['label'], rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
