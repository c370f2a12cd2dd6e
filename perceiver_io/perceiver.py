"""The Perceiver IO model: preprocess, encode, decode, postprocess.

Shape letters: B batch, M inputs, C input channels, N latents, D latent
channels, O outputs.
"""

import haiku as hk

from perceiver_io.ops import grid as grid_lib


class Perceiver(hk.Module):
  """Wires a preprocessor, an encoder, a decoder and a postprocessor.

  The parts are constructed by the caller, outside this module, so that their
  parameters keep DeepMind's top-level names (`perceiver_encoder/...`,
  `classification_decoder/...`).
  """

  def __init__(
    self,
    encoder,
    decoder,
    input_preprocessor=None,
    output_postprocessor=None,
    name: str = 'perceiver',
  ):
    super().__init__(name=name)
    self._encoder = encoder
    self._decoder = decoder
    self._input_preprocessor = input_preprocessor
    self._output_postprocessor = output_postprocessor

  def __call__(
    self,
    inputs,
    *,
    is_training,
    subsampled_output_points=None,
    pos=None,
    input_mask=None,
    query_mask=None,
  ):
    """Runs the model.

    Args:
      inputs: raw inputs for the preprocessor, or [B, M, C] without one.
      is_training: enables dropout and BatchNorm statistics updates.
      subsampled_output_points: flat output indices to decode (a dict per
        modality for multimodal decoders), or None for all outputs.
      pos: optional input positions for the preprocessor.
      input_mask: optional [B, M] mask of the encoder's inputs.
      query_mask: optional [B, O] mask of the decoder's queries.

    Returns:
      The decoder's (postprocessed) outputs.

    Raises:
      ValueError: without an input preprocessor, for inputs other than a
        [B, M, C] array.
    """
    if self._input_preprocessor is not None:
      inputs, modality_sizes, inputs_without_pos = self._input_preprocessor(
        inputs, pos=pos, is_training=is_training
      )
    else:
      if getattr(inputs, 'ndim', None) != 3:
        raise ValueError(
          'Without an input_preprocessor, Perceiver takes [B, M, C] arrays; '
          f'got {_describe(inputs)}. Pass an input_preprocessor (e.g. '
          'preprocessors.ImagePreprocessor) for images, audio or dicts.'
        )
      modality_sizes, inputs_without_pos = None, None

    # Grid inputs reach the encoder as they are; everything else gets the
    # [B, M, C] array, which XLA drops again when only its shape is read.
    dense_inputs = inputs
    if isinstance(inputs, grid_lib.GridInputs):
      dense_inputs = inputs.materialize()
    encoder_query = self._encoder.latents(dense_inputs)  # [B, N, D]
    decoder_query = self._decoder.decoder_query(
      dense_inputs,
      modality_sizes,
      inputs_without_pos,
      subsampled_points=subsampled_output_points,
    )  # [B, O, C']

    z = self._encoder(
      inputs, encoder_query, is_training=is_training, input_mask=input_mask
    )  # [B, N, D]
    _, output_modality_sizes = self._decoder.output_shape(dense_inputs)
    output_modality_sizes = output_modality_sizes or modality_sizes
    outputs = self._decoder(
      decoder_query, z, is_training=is_training, query_mask=query_mask
    )
    if self._output_postprocessor is not None:
      outputs = self._output_postprocessor(
        outputs, is_training=is_training, modality_sizes=output_modality_sizes
      )
    return outputs


def _describe(inputs):
  """'shape (2, 5)' for arrays, 'a dict' for anything without a shape."""
  shape = getattr(inputs, 'shape', None)
  if shape is None:
    return f'a {type(inputs).__name__}'
  return f'shape {tuple(shape)}'
