"""Output adapters: turn decoder outputs [B, O, C] into task outputs.

Shape letters: B batch, O outputs, C channels, T time, H height, W width,
V vocabulary.

Every postprocessor is called as
`(inputs, *, is_training, pos=None, modality_sizes=None)`.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver_io import patching

IMAGE_POSTPROC_TYPES = ('pixels', 'conv1x1', 'conv', 'patches')


class Conv2DUpsample(hk.Module):
  """Two 4x4/2 transposed convs (2n then n channels), ReLU between."""

  def __init__(self, n_outputs: int, name: str | None = None):
    super().__init__(name=name)
    self.transp_conv1 = hk.Conv2DTranspose(
      output_channels=n_outputs * 2,
      kernel_shape=4,
      stride=2,
      with_bias=True,
      padding='SAME',
      name='transp_conv_1',
    )
    self.transp_conv2 = hk.Conv2DTranspose(
      output_channels=n_outputs,
      kernel_shape=4,
      stride=2,
      with_bias=True,
      padding='SAME',
      name='transp_conv_2',
    )

  def __call__(self, inputs, *, is_training):
    """[B, H, W, C] -> [B, 4H, 4W, n_outputs]."""
    del is_training
    out = jax.nn.relu(self.transp_conv1(inputs))
    return self.transp_conv2(out)


class Conv3DUpsample(hk.Module):
  """Stacked 4x4x4 transposed 3-D convs, stride 2 in time and/or space."""

  def __init__(
    self,
    n_outputs: int,
    n_time_upsamples: int = 2,
    n_space_upsamples: int = 4,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self._n_outputs = n_outputs
    self._n_time_upsamples = n_time_upsamples
    self._n_space_upsamples = n_space_upsamples

  def __call__(self, x, *, is_training):
    """[B, T, H, W, C] -> [B, T*2^t, H*2^s, W*2^s, n_outputs]."""
    del is_training
    n_upsamples = max(self._n_time_upsamples, self._n_space_upsamples)
    time_stride, space_stride = 2, 2
    for i in range(n_upsamples):
      if i >= self._n_time_upsamples:
        time_stride = 1
      if i >= self._n_space_upsamples:
        space_stride = 1
      channels = self._n_outputs * pow(2, n_upsamples - 1 - i)
      x = hk.Conv3DTranspose(
        output_channels=channels,
        stride=[time_stride, space_stride, space_stride],
        kernel_shape=[4, 4, 4],
        name=f'conv3d_transpose_{i}',
      )(x)
      if i != n_upsamples - 1:
        x = jax.nn.relu(x)
    return x


class ImagePostprocessor(hk.Module):
  """Maps decoder outputs back to images or videos."""

  def __init__(
    self,
    postproc_type: str = 'pixels',
    spatial_upsample: int = 1,
    temporal_upsample: int = 1,
    n_outputs: int = -1,
    input_reshape_size=None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if postproc_type not in IMAGE_POSTPROC_TYPES:
      raise ValueError(
        f'Unknown postproc_type {postproc_type!r}; expected one of '
        f'{IMAGE_POSTPROC_TYPES}.'
      )
    if postproc_type == 'pixels' and (
      spatial_upsample != 1 or temporal_upsample != 1
    ):
      raise ValueError('postproc_type="pixels" cannot upsample.')
    if postproc_type in ('conv', 'conv1x1') and n_outputs <= 0:
      raise ValueError(f'postproc_type={postproc_type!r} needs n_outputs > 0.')
    if postproc_type == 'conv1x1' and (
      spatial_upsample != 1 or temporal_upsample != 1
    ):
      raise ValueError(
        'postproc_type="conv1x1" maps channels only: spatial_upsample and '
        f'temporal_upsample must be 1; got {spatial_upsample} and '
        f'{temporal_upsample}.'
      )
    if postproc_type == 'conv':
      if temporal_upsample == 1 and spatial_upsample != 4:
        raise ValueError(
          'postproc_type="conv" without temporal upsampling is two stride-2 '
          f'convs: spatial_upsample must be 4; got {spatial_upsample}.'
        )
      for what, factor in (
        ('spatial_upsample', spatial_upsample),
        ('temporal_upsample', temporal_upsample),
      ):
        if factor < 1 or factor & (factor - 1):
          raise ValueError(
            f'postproc_type="conv" upsamples by 2 per layer: {what} must be '
            f'a power of 2; got {factor}.'
          )
    self._postproc_type = postproc_type
    self._temporal_upsample = temporal_upsample
    self._spatial_upsample = spatial_upsample
    self._input_reshape_size = input_reshape_size
    if postproc_type == 'conv':
      if temporal_upsample != 1:
        self.convnet = Conv3DUpsample(
          n_outputs,
          round(math.log2(temporal_upsample)),
          round(math.log2(spatial_upsample)),
        )
      else:
        self.convnet = Conv2DUpsample(n_outputs)
    elif postproc_type == 'conv1x1':
      self.conv1x1 = hk.Conv2D(n_outputs, kernel_shape=[1, 1])

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    """Decoder outputs -> images or videos.

    Args:
      inputs: [B, H, W, C] or [B, T, H, W, C]; or [B, O, C] with
        `input_reshape_size` = (H, W) or (T, H, W), O = H*W or T*H*W.
      is_training: unused (no layer here depends on it).
      pos: unused.
      modality_sizes: unused.

    Returns:
      'pixels': the inputs. 'conv1x1': [..., n_outputs]. 'conv': [B, 4H, 4W,
      n_outputs] per frame, or [B, T*t, H*s, W*s, n_outputs] with temporal
      upsampling t. 'patches': `reverse_space_to_depth` of the inputs.
    """
    del pos, modality_sizes
    if self._input_reshape_size is not None:
      inputs = jnp.reshape(
        inputs,
        [inputs.shape[0]] + list(self._input_reshape_size) + [inputs.shape[-1]],
      )
    if self._postproc_type == 'conv':
      conv = self.convnet
      if inputs.ndim == 5 and self._temporal_upsample == 1:
        conv = hk.BatchApply(conv)
      inputs = conv(inputs, is_training=is_training)
    elif self._postproc_type == 'conv1x1':
      conv = self.conv1x1
      if inputs.ndim == 5:
        conv = hk.BatchApply(conv)
      inputs = conv(inputs)
    elif self._postproc_type == 'patches':
      inputs = patching.reverse_space_to_depth(
        inputs, self._temporal_upsample, self._spatial_upsample
      )
    return inputs


class AudioPostprocessor(hk.Module):
  """Decoder outputs [B, O, C] -> audio [B, O * samples_per_patch]."""

  def __init__(
    self,
    postproc_type: str = 'patches',
    samples_per_patch: int = 96,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if postproc_type != 'patches':
      raise ValueError(
        'AudioPostprocessor supports postproc_type="patches"; '
        f'got {postproc_type!r}.'
      )
    self._samples_per_patch = samples_per_patch

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    out = hk.Linear(self._samples_per_patch)(inputs)
    return jnp.reshape(out, (inputs.shape[0], -1))


class ProjectionPostprocessor(hk.Module):
  """A linear projection of every output, [B, O, C] -> [B, O, num_outputs]."""

  def __init__(self, num_outputs: int, name: str | None = None):
    super().__init__(name=name)
    self._num_outputs = num_outputs

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    return hk.Linear(self._num_outputs)(inputs)


class ClassificationPostprocessor(hk.Module):
  """Logits from the first output, [B, O, C] -> [B, num_classes]."""

  def __init__(self, num_classes: int, name: str | None = None):
    super().__init__(name=name)
    self._num_classes = num_classes

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    logits = hk.Linear(self._num_classes)(inputs)
    return logits[:, 0, :]


class IdentityPostprocessor(hk.Module):
  """Returns the decoder outputs unchanged."""

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    return inputs


class MultimodalPostprocessor(hk.Module):
  """Splits [B, O, C] by modality and applies each modality's postprocessor."""

  def __init__(self, modalities, name: str | None = None):
    super().__init__(name=name)
    self._modalities = modalities

  def __call__(self, inputs, *, is_training, pos=None, modality_sizes=None):
    """[B, O, C] -> {modality: that postprocessor's output}.

    Args:
      inputs: [B, O, C] decoder outputs, the modalities' outputs concatenated
        in sorted modality order (as `MultimodalDecoder` builds them).
      is_training: passed to each postprocessor.
      pos: passed to each postprocessor.
      modality_sizes: {modality: number of outputs}, summing to O.

    Returns:
      A dict of each modality's postprocessed outputs.
    """
    if modality_sizes is None:
      raise ValueError(
        'MultimodalPostprocessor needs modality_sizes to split a flat output.'
      )
    inputs = patching.restructure(modality_sizes, inputs)
    if set(modality_sizes) != set(self._modalities):
      raise ValueError(
        f'modality_sizes names {sorted(modality_sizes)}, but the '
        f'postprocessors are for {sorted(self._modalities)}.'
      )
    return {
      modality: postprocessor(
        inputs[modality], is_training=is_training, pos=pos, modality_sizes=None
      )
      for modality, postprocessor in self._modalities.items()
    }


class EmbeddingDecoder(hk.Module):
  """The tied output layer: logits = x @ E^T + bias."""

  def __init__(self, embedding_matrix, name: str = 'embedding_decoder'):
    super().__init__(name=name)
    self._embedding_matrix = embedding_matrix
    self._vocab_size, self._d_model = embedding_matrix.shape

  def __call__(self, embeddings):
    """[B, S, d_model] -> [B, S, V]."""
    if embeddings.shape[-1] != self._d_model:
      raise ValueError(
        f'EmbeddingDecoder expects {self._d_model} channels; got '
        f'{embeddings.shape[-1]}.'
      )
    bias = hk.get_parameter('bias', [self._vocab_size], init=jnp.zeros)
    logits = jnp.einsum(
      'bsd,vd->bsv', embeddings, self._embedding_matrix.astype(embeddings.dtype)
    )
    return logits + bias.astype(logits.dtype)
