"""Tests of decoder queries, shapes and errors."""

import haiku as hk
import jax
import numpy as np
from absl.testing import absltest

from perceiver_io import decoders
from perceiver_io import position_encoding


def _run(fn, *args):
  transformed = hk.transform(fn)
  params = transformed.init(jax.random.PRNGKey(0), *args)
  return transformed.apply(params, None, *args), params


class BasicDecoderTest(absltest.TestCase):
  def test_subsampled_fourier_queries_use_deepminds_coordinates(self):
    # Index i of an axis of size n maps to -1 + 2 i / n, not the full grid's
    # linspace; on a 4x6 grid, column 1 is -0.667, not -0.6.
    def fn(inputs):
      decoder = decoders.BasicDecoder(
        output_num_channels=3,
        position_encoding_type='fourier',
        output_index_dims=(4, 6),
        fourier_position_encoding_kwargs=dict(
          num_bands=2, max_resolution=(4, 6)
        ),
      )
      points = np.array([1, 6 * 2 + 5])  # (0, 1) and (2, 5).
      return decoder.decoder_query(inputs, subsampled_points=points)

    queries, _ = _run(fn, np.zeros((2, 5, 7), np.float32))
    pos = np.array([[-1.0, -1 + 2 / 6], [-1 + 4 / 4, -1 + 10 / 6]])
    want = position_encoding.generate_fourier_features(
      pos.astype(np.float32), 2, (4, 6)
    )
    self.assertEqual(queries.shape, (2, 2, want.shape[-1]))
    np.testing.assert_allclose(queries[1], want, atol=1e-6)
    np.testing.assert_allclose(queries[0, 0, 1], -0.6666667, atol=1e-6)

  def test_subsampled_trainable_queries_are_table_rows(self):
    def fn(inputs):
      decoder = decoders.BasicDecoder(
        output_num_channels=3,
        output_index_dims=(10,),
        trainable_position_encoding_kwargs=dict(num_channels=4),
      )
      return decoder.decoder_query(inputs, subsampled_points=np.array([9, 0]))

    queries, params = _run(fn, np.zeros((2, 5, 7), np.float32))
    table = params['basic_decoder/~/trainable_position_encoding']['pos_embs']
    np.testing.assert_array_equal(queries[0], table[np.array([9, 0])])

  def test_concat_preprocessed_input_prepends_the_features(self):
    def fn(inputs, inputs_without_pos):
      decoder = decoders.BasicDecoder(
        output_num_channels=3,
        output_index_dims=(4,),
        concat_preprocessed_input=True,
        trainable_position_encoding_kwargs=dict(num_channels=5),
      )
      return decoder.decoder_query(
        inputs, inputs_without_pos=inputs_without_pos
      )

    features = np.random.RandomState(0).randn(2, 4, 6).astype(np.float32)
    queries, params = _run(fn, np.zeros((2, 4, 7), np.float32), features)
    table = params['basic_decoder/~/trainable_position_encoding']['pos_embs']
    self.assertEqual(queries.shape, (2, 4, 6 + 5))
    np.testing.assert_array_equal(queries[..., :6], features)
    np.testing.assert_array_equal(queries[1, :, 6:], table)

  def test_query_mask_zeroes_attention_of_masked_queries(self):
    def fn(query, z, query_mask):
      decoder = decoders.BasicDecoder(
        output_num_channels=3,
        position_encoding_type='none',
        use_query_residual=False,
        final_project=False,
      )
      return decoder(query, z, is_training=False, query_mask=query_mask)

    rng = np.random.RandomState(0)
    query = rng.randn(1, 4, 6).astype(np.float32)
    z = rng.randn(1, 5, 8).astype(np.float32)
    mask = np.array([[1, 0, 1, 0]], np.int32)
    out, _ = _run(fn, query, z, mask)
    changed_z, _ = _run(fn, query, rng.randn(1, 5, 8).astype(np.float32), mask)
    # Masked queries see no latent: their outputs ignore z entirely.
    np.testing.assert_allclose(out[:, 1], changed_z[:, 1], atol=1e-6)
    self.assertGreater(np.max(np.abs(out[:, 0] - changed_z[:, 0])), 1e-3)

  def test_errors(self):
    def concat_without_inputs(inputs):
      decoder = decoders.BasicDecoder(
        output_num_channels=3,
        output_index_dims=(4,),
        concat_preprocessed_input=True,
        trainable_position_encoding_kwargs=dict(num_channels=4),
      )
      return decoder.decoder_query(inputs)

    with self.assertRaisesRegex(ValueError, 'inputs_without_pos'):
      _run(concat_without_inputs, np.zeros((1, 4, 2), np.float32))

    def flow_subsampled(inputs):
      decoder = decoders.FlowDecoder(
        output_image_shape=(2, 2), position_encoding_type='none'
      )
      return decoder.decoder_query(inputs, subsampled_points=np.arange(2))

    with self.assertRaisesRegex(ValueError, 'does not support subsampled'):
      _run(flow_subsampled, np.zeros((1, 4, 2), np.float32))

    def bad_heads():
      decoders.BasicDecoder(
        output_num_channels=3,
        num_heads=3,
        qk_channels=8,
        position_encoding_type='none',
      )

    with self.assertRaisesRegex(ValueError, r'qk_channels \(8\)'):
      _run(bad_heads)


class MultimodalDecoderTest(absltest.TestCase):
  def test_queries_are_padded_to_a_common_width_in_sorted_order(self):
    def fn(inputs):
      decoder = decoders.MultimodalDecoder(
        modalities={
          'b': decoders.BasicDecoder(
            output_num_channels=2,
            output_index_dims=(3,),
            trainable_position_encoding_kwargs=dict(num_channels=5),
            name='b_decoder',
          ),
          'a': decoders.BasicDecoder(
            output_num_channels=2,
            output_index_dims=(2,),
            trainable_position_encoding_kwargs=dict(num_channels=3),
            name='a_decoder',
          ),
        },
        num_outputs=None,
        output_num_channels=4,
        min_padding_size=2,
      )
      return decoder.decoder_query(inputs, modality_sizes={'a': 1, 'b': 2})

    queries, params = _run(fn, np.zeros((2, 3, 7), np.float32))
    self.assertEqual(queries.shape, (2, 5, 7))
    a_table = params['a_decoder/~/trainable_position_encoding']['pos_embs']
    np.testing.assert_array_equal(queries[0, :2, :3], a_table)
    self.assertEqual(
      params['multimodal_decoder/~decoder_query/a_padding']['pos_embs'].shape,
      (1, 4),
    )
    self.assertEqual(
      params['multimodal_decoder/~decoder_query/b_padding']['pos_embs'].shape,
      (1, 2),
    )


if __name__ == '__main__':
  absltest.main()
