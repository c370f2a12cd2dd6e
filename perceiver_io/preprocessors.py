"""Input adapters: turn each modality into a [B, M, C] array for the encoder.

Shape letters: B batch, T time, H height, W width, C channels, M flat inputs,
S sequence length.

Every preprocessor is called as
`(inputs, *, is_training, pos=None, network_input_is_1d=True)` and returns
`(inputs_with_pos, modality_sizes, inputs_without_pos)`.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_io import patching
from perceiver_io import position_encoding
from perceiver_io.ops import concat
from perceiver_io.ops import grid as grid_lib

IMAGE_PREP_TYPES = ('conv', 'conv1x1', 'patches', 'pixels')
CONCAT_OR_ADD = ('concat', 'add')


class Conv2DDownsample(hk.Module):
  """Per layer: 7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool (4x per layer)."""

  def __init__(
    self,
    num_layers: int = 1,
    num_channels: int = 64,
    use_batchnorm: bool = True,
    bn_config=None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    bn_config = dict(bn_config or {})
    bn_config.setdefault('decay_rate', 0.9)
    bn_config.setdefault('eps', 1e-5)
    bn_config.setdefault('create_scale', True)
    bn_config.setdefault('create_offset', True)
    self.layers = []
    for _ in range(num_layers):
      conv = hk.Conv2D(
        output_channels=num_channels,
        kernel_shape=7,
        stride=2,
        with_bias=False,
        padding='SAME',
        name='conv',
      )
      batchnorm = (
        hk.BatchNorm(name='batchnorm', **bn_config) if use_batchnorm else None
      )
      self.layers.append((conv, batchnorm))

  def __call__(self, inputs, *, is_training, test_local_stats=False):
    """[B, H, W, C] -> [B, H/4^L, W/4^L, num_channels]."""
    out = inputs
    for conv, batchnorm in self.layers:
      out = conv(out)
      if batchnorm is not None:
        # DeepMind's code cannot be initialised in eval mode because the
        # moving averages only exist after a training-mode call; at init we
        # create them with one.
        bn_training = is_training or hk.running_init()
        out = batchnorm(out, bn_training, test_local_stats)
      out = jax.nn.relu(out)
      out = hk.max_pool(
        out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
      )
    return out


def _check_concat_or_add(concat_or_add_pos):
  if concat_or_add_pos not in CONCAT_OR_ADD:
    raise ValueError(
      f'Unknown concat_or_add_pos {concat_or_add_pos!r}; expected one of '
      f'{CONCAT_OR_ADD}.'
    )


class _PositionalPreprocessor(hk.Module):
  """Shared logic: build a position encoding and concat or add it."""

  def __init__(
    self,
    position_encoding_type,
    n_extra_pos_mlp,
    concat_or_add_pos,
    position_encoding_kwargs,
    name,
    grid_inputs=False,
  ):
    super().__init__(name=name)
    _check_concat_or_add(concat_or_add_pos)
    if position_encoding_type not in position_encoding.POSITION_ENCODING_TYPES:
      raise ValueError(
        f'Unknown position_encoding_type {position_encoding_type!r}; '
        f'expected one of {position_encoding.POSITION_ENCODING_TYPES}.'
      )
    self._position_encoding_type = position_encoding_type
    self._n_extra_pos_mlp = n_extra_pos_mlp
    self._concat_or_add_pos = concat_or_add_pos
    self._position_encoding_kwargs = position_encoding_kwargs
    self._grid_inputs = grid_inputs

  def _build_network_inputs(self, inputs, pos, network_input_is_1d=True):
    """Adds position encodings to [B, *index_dims, C] features."""
    batch_size = inputs.shape[0]
    index_dims = inputs.shape[1:-1]
    if inputs.ndim > 3 and network_input_is_1d:
      inputs = jnp.reshape(inputs, (batch_size, int(np.prod(index_dims)), -1))
    encoding = position_encoding.build_position_encoding(
      self._position_encoding_type,
      index_dims=index_dims,
      **self._position_encoding_kwargs,
    )
    if (
      self._grid_inputs
      and pos is None
      and self._concat_or_add_pos == 'concat'
      and not self._n_extra_pos_mlp
      and network_input_is_1d
      and isinstance(encoding, position_encoding.FourierPositionEncoding)
    ):
      # The Fourier features stay per-axis tables (`ops.grid`).
      return grid_lib.GridInputs(inputs, encoding.grid_tables()), inputs
    if (
      self._concat_or_add_pos == 'concat'
      and not self._n_extra_pos_mlp
      and network_input_is_1d
      and hasattr(encoding, 'parts')
    ):
      # The Fourier features go straight into the network inputs.
      parts = encoding.parts(batch_size=batch_size, pos=pos)
      return concat.concat_channels([inputs, *parts]), inputs
    pos_enc = encoding(batch_size=batch_size, pos=pos)
    for i in range(self._n_extra_pos_mlp):
      pos_enc = pos_enc + hk.Linear(pos_enc.shape[-1])(pos_enc)
      if i < self._n_extra_pos_mlp - 1:
        pos_enc = jax.nn.relu(pos_enc)
    if not network_input_is_1d:
      pos_enc = jnp.reshape(pos_enc, inputs.shape[:-1] + (-1,))
    if self._concat_or_add_pos == 'concat':
      inputs_with_pos = jnp.concatenate([inputs, pos_enc], axis=-1)
    else:
      if pos_enc.shape[-1] != inputs.shape[-1]:
        raise ValueError(
          'concat_or_add_pos="add" needs position encodings as wide as the '
          f'inputs; got {pos_enc.shape[-1]} and {inputs.shape[-1]} channels.'
        )
      inputs_with_pos = inputs + pos_enc
    return inputs_with_pos, inputs


class ImagePreprocessor(_PositionalPreprocessor):
  """Image or video features plus position encodings."""

  def __init__(
    self,
    prep_type: str = 'conv',
    spatial_downsample: int = 4,
    temporal_downsample: int = 1,
    position_encoding_type: str = 'fourier',
    n_extra_pos_mlp: int = 0,
    num_channels: int = 64,
    conv_after_patching: bool = False,
    conv2d_use_batchnorm: bool = True,
    concat_or_add_pos: str = 'concat',
    grid_inputs: bool = False,
    name: str | None = None,
    **position_encoding_kwargs,
  ):
    super().__init__(
      position_encoding_type,
      n_extra_pos_mlp,
      concat_or_add_pos,
      position_encoding_kwargs,
      name,
      grid_inputs=grid_inputs,
    )
    if prep_type not in IMAGE_PREP_TYPES:
      raise ValueError(
        f'Unknown prep_type {prep_type!r}; expected one of {IMAGE_PREP_TYPES}.'
      )
    if spatial_downsample <= 0 or temporal_downsample <= 0:
      raise ValueError(
        'spatial_downsample and temporal_downsample must be positive.'
      )
    self._prep_type = prep_type
    self._spatial_downsample = spatial_downsample
    self._temporal_downsample = temporal_downsample
    self._num_channels = num_channels
    self._conv_after_patching = conv_after_patching
    if prep_type == 'conv':
      num_layers = math.log(spatial_downsample, 4)
      if abs(num_layers - round(num_layers)) > 1e-6 or temporal_downsample != 1:
        raise ValueError(
          'prep_type="conv" downsamples by 4 per layer: spatial_downsample '
          f'must be a power of 4 (got {spatial_downsample}) and '
          f'temporal_downsample 1 (got {temporal_downsample}).'
        )
      self.convnet = Conv2DDownsample(
        num_layers=round(num_layers),
        num_channels=num_channels,
        use_batchnorm=conv2d_use_batchnorm,
      )
    elif prep_type == 'conv1x1':
      if temporal_downsample != 1:
        raise ValueError(
          'prep_type="conv1x1" cannot downsample in time; got '
          f'temporal_downsample={temporal_downsample}.'
        )
      self.convnet_1x1 = hk.Conv2D(
        num_channels,
        kernel_shape=[1, 1],
        stride=[spatial_downsample, spatial_downsample],
      )

  def __call__(
    self, inputs, *, is_training, pos=None, network_input_is_1d=True
  ):
    """Featurises [B, H, W, C] images or [B, T, H, W, C] videos.

    Returns:
      ([B, M, C'] features with positions, None, [B, M, C''] features).
      With `grid_inputs` and Fourier features concatenated on the default
      grid, the first is a `ops.grid.GridInputs` that stands for them.
    """
    if inputs.ndim not in (4, 5):
      raise ValueError(
        'ImagePreprocessor expects [B, H, W, C] or [B, T, H, W, C]; got '
        f'shape {inputs.shape}.'
      )
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
      raise ValueError(f'Images must be floating point; got {inputs.dtype}.')
    s, t = self._spatial_downsample, self._temporal_downsample
    if self._prep_type == 'conv':
      conv = self.convnet
      if inputs.ndim == 5:
        conv = hk.BatchApply(conv)
      inputs = conv(inputs, is_training=is_training)
    elif self._prep_type == 'conv1x1':
      conv = self.convnet_1x1
      if inputs.ndim == 5:
        conv = hk.BatchApply(conv)
      inputs = conv(inputs)
    elif self._prep_type == 'patches':
      inputs = patching.space_to_depth(
        inputs, temporal_block_size=t, spatial_block_size=s
      )
      if inputs.ndim == 5 and inputs.shape[1] == 1:
        inputs = jnp.squeeze(inputs, axis=1)  # Flow: both frames in channels.
      if self._conv_after_patching:
        inputs = hk.Linear(self._num_channels, name='patches_linear')(inputs)
    elif inputs.ndim == 4:  # pixels
      inputs = inputs[:, ::s, ::s]
    else:
      inputs = inputs[:, ::t, ::s, ::s]
    inputs, inputs_without_pos = self._build_network_inputs(
      inputs, pos, network_input_is_1d
    )
    return inputs, None, inputs_without_pos


class AudioPreprocessor(_PositionalPreprocessor):
  """Audio cut into patches of `samples_per_patch`, plus 1-D positions."""

  def __init__(
    self,
    prep_type: str = 'patches',
    samples_per_patch: int = 96,
    position_encoding_type: str = 'fourier',
    n_extra_pos_mlp: int = 0,
    concat_or_add_pos: str = 'concat',
    name: str | None = None,
    **position_encoding_kwargs,
  ):
    super().__init__(
      position_encoding_type,
      n_extra_pos_mlp,
      concat_or_add_pos,
      position_encoding_kwargs,
      name,
    )
    if prep_type != 'patches':
      raise ValueError(
        f'AudioPreprocessor supports prep_type="patches"; got {prep_type!r}.'
      )
    if samples_per_patch <= 0:
      raise ValueError('samples_per_patch must be positive.')
    self._samples_per_patch = samples_per_patch

  def __call__(
    self, inputs, *, is_training, pos=None, network_input_is_1d=True
  ):
    """[B, samples, 1] or [B, samples] audio -> [B, M, C] patches."""
    del is_training
    samples = int(np.prod(inputs.shape[1:]))
    if samples % self._samples_per_patch:
      raise ValueError(
        f'{samples} audio samples do not split into patches of '
        f'{self._samples_per_patch}.'
      )
    inputs = jnp.reshape(inputs, (inputs.shape[0], -1, self._samples_per_patch))
    inputs, inputs_without_pos = self._build_network_inputs(inputs, pos)
    return inputs, None, inputs_without_pos


class OneHotPreprocessor(hk.Module):
  """[B, C] one-hot labels -> [B, 1, C]; no position encoding."""

  def __call__(
    self, inputs, *, is_training, pos=None, network_input_is_1d=True
  ):
    del is_training, pos, network_input_is_1d
    if inputs.ndim != 2:
      raise ValueError(
        f'OneHotPreprocessor expects [B, C]; got {inputs.shape}.'
      )
    inputs = inputs[:, None, :]
    return inputs, None, inputs


class BytesPreprocessor:
  """Byte embeddings plus a trainable position encoding, added.

  Not an hk.Module, so that its parameters sit at the top level (`embed`,
  `trainable_position_encoding`) as in the released language checkpoint.
  Construct it inside the transformed function, outside any other module.
  """

  def __init__(
    self, vocab_size: int = 262, d_model: int = 768, max_seq_len: int = 2048
  ):
    self.max_seq_len = max_seq_len
    self.embed = hk.Embed(
      vocab_size=vocab_size, embed_dim=d_model, name='embed'
    )
    self.position_encoding = position_encoding.TrainablePositionEncoding(
      index_dim=max_seq_len, num_channels=d_model
    )

  @property
  def embeddings(self):
    """The [vocab, d_model] embedding matrix, for a tied output layer."""
    return self.embed.embeddings

  def __call__(
    self, inputs, *, is_training, pos=None, network_input_is_1d=True
  ):
    """int[B, S] token ids -> [B, S, d_model]."""
    del is_training, pos, network_input_is_1d
    if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(
        'BytesPreprocessor expects integer token ids of shape [B, S]; got '
        f'{inputs.dtype}{list(inputs.shape)}.'
      )
    seq_len = inputs.shape[1]
    if seq_len > self.max_seq_len:
      raise ValueError(
        f'Sequence length {seq_len} exceeds max_seq_len {self.max_seq_len}.'
      )
    pos_embs = self.position_encoding(batch_size=inputs.shape[0])
    embedded = self.embed(inputs) + pos_embs[:, :seq_len]
    return embedded, None, embedded


class MultimodalPreprocessor(hk.Module):
  """Runs one preprocessor per modality, pads to a common width, concats.

  Each modality is padded with a learned `{modality}_padding` vector to the
  widest modality plus `min_padding_size` channels. With `mask_probs`, each
  token is replaced by a learned `{modality}_mask_token` with that
  probability (at inference too, as in DeepMind's code: a probability of 1
  hides a modality, e.g. the label in video autoencoding).
  """

  def __init__(
    self,
    modalities,
    mask_probs=None,
    min_padding_size: int = 2,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if mask_probs is not None:
      unknown = set(mask_probs) - set(modalities)
      if unknown:
        raise ValueError(f'mask_probs names unknown modalities {unknown}.')
    self._modalities = modalities
    self._mask_probs = mask_probs
    self._min_padding_size = min_padding_size

  def __call__(
    self, inputs, *, is_training, pos=None, network_input_is_1d=True
  ):
    """dict of modality inputs -> ([B, M, C], sizes, dict of raw features)."""
    missing = set(self._modalities) - set(inputs)
    if missing:
      raise ValueError(f'Missing inputs for modalities {sorted(missing)}.')
    outputs = {}
    inputs_without_pos = {}
    for modality, preprocessor in self._modalities.items():
      outputs[modality], _, inputs_without_pos[modality] = preprocessor(
        inputs[modality],
        is_training=is_training,
        pos=pos,
        network_input_is_1d=network_input_is_1d,
      )
    common_channels = (
      max(o.shape[2] for o in outputs.values()) + self._min_padding_size
    )
    padded = {}
    modality_sizes = {}
    for modality, output in outputs.items():
      batch, size, channels = output.shape
      padding = position_encoding.TrainablePositionEncoding(
        1,
        num_channels=common_channels - channels,
        init_scale=0.02,
        name=f'{modality}_padding',
      )(batch_size=batch)
      padding = jnp.broadcast_to(
        padding, (batch, size, common_channels - channels)
      )
      output_padded = jnp.concatenate([output, padding], axis=2)
      if self._mask_probs is not None and modality in self._mask_probs:
        mask_token = position_encoding.TrainablePositionEncoding(
          1,
          num_channels=common_channels,
          init_scale=0.02,
          name=f'{modality}_mask_token',
        )(batch_size=batch)
        mask = _token_mask(self._mask_probs[modality], (batch, size))
        mask = mask[:, :, None].astype(output_padded.dtype)
        output_padded = (1 - mask) * output_padded + mask * mask_token
      padded[modality] = output_padded
      modality_sizes[modality] = size
    ordered = [padded[m] for m in sorted(padded)]
    return jnp.concatenate(ordered, axis=1), modality_sizes, inputs_without_pos


def _token_mask(prob, shape):
  """Bernoulli(prob) token mask; needs no rng when prob is 0 or 1."""
  if prob <= 0.0:
    return jnp.zeros(shape, dtype=bool)
  if prob >= 1.0:
    return jnp.ones(shape, dtype=bool)
  return jax.random.bernoulli(hk.next_rng_key(), prob, shape)
