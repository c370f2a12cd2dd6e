"""Perceiver IO decoders: build output queries and cross-attend to latents.

Shape letters: B batch, M inputs, N latents, D latent channels, O outputs
(queries), C channels, T time, H height, W width.

A decoder has two parts: `decoder_query(...)` builds the [B, O, C] queries
(position encodings, learned queries, or the inputs themselves), and
`__call__(query, z, ...)` cross-attends from them to the [B, N, D] latents.
"""

import abc

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver_io import attention
from perceiver_io import patching
from perceiver_io import position_encoding
from perceiver_io import runtime as runtime_lib


class AbstractPerceiverDecoder(hk.Module, metaclass=abc.ABCMeta):
  """The decoder interface that `Perceiver` uses."""

  @abc.abstractmethod
  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """Returns [B, O, C] queries."""

  @abc.abstractmethod
  def output_shape(self, inputs):
    """Returns (output shape, output modality sizes or None)."""

  @abc.abstractmethod
  def __call__(self, query, z, *, is_training, query_mask=None):
    """Decodes [B, N, D] latents at [B, O, C] queries."""


class BasicDecoder(AbstractPerceiverDecoder):
  """Cross-attends from position-encoding queries to the latents.

  With `position_encoding_type='none'` the queries come from elsewhere (the
  multimodal and flow decoders). `subsampled_points` in `decoder_query` pick
  a subset of the `output_index_dims` grid by flat index. `widening_factor`
  sizes the cross-attention's MLP (1 in every released model).
  """

  def __init__(
    self,
    output_num_channels: int,
    position_encoding_type: str = 'trainable',
    output_index_dims=None,
    subsampled_index_dims=None,
    num_z_channels: int = 1024,
    qk_channels: int | None = None,
    v_channels: int | None = None,
    use_query_residual: bool = False,
    output_w_init=None,
    concat_preprocessed_input: bool = False,
    num_heads: int = 1,
    widening_factor: int = 1,
    name: str = 'basic_decoder',
    final_project: bool = True,
    runtime: runtime_lib.Runtime = runtime_lib.DEFAULT,
    **position_encoding_kwargs,
  ):
    super().__init__(name=name)
    del num_z_channels  # Read from the latents; kept for config parity.
    if position_encoding_type not in (
      *position_encoding.POSITION_ENCODING_TYPES,
      'none',
    ):
      raise ValueError(
        f'Unknown position_encoding_type {position_encoding_type!r}; '
        "expected 'trainable', 'fourier' or 'none'."
      )
    for what, channels in (
      ('qk_channels', qk_channels),
      ('v_channels', v_channels),
    ):
      if channels is not None and channels % num_heads:
        raise ValueError(
          f'{what} ({channels}) must be divisible by num_heads ({num_heads}).'
        )
    if output_index_dims is not None:
      output_index_dims = tuple(
        np.atleast_1d(np.asarray(output_index_dims)).tolist()
      )
    self._position_encoding_type = position_encoding_type
    self.output_pos_enc = None
    if position_encoding_type != 'none':
      self.output_pos_enc = position_encoding.build_position_encoding(
        position_encoding_type,
        index_dims=output_index_dims,
        **position_encoding_kwargs,
      )
    self._output_index_dims = output_index_dims
    self._subsampled_index_dims = (
      output_index_dims
      if subsampled_index_dims is None
      else subsampled_index_dims
    )
    self._output_num_channels = output_num_channels
    self._output_w_init = output_w_init
    self._use_query_residual = use_query_residual
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._final_project = final_project
    self._num_heads = num_heads
    self._widening_factor = widening_factor
    self._concat_preprocessed_input = concat_preprocessed_input
    self._runtime = runtime

  def output_shape(self, inputs):
    return (
      (inputs.shape[0], self._subsampled_index_dims, self._output_num_channels),
      None,
    )

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """Position-encoding queries.

    Args:
      inputs: [B, M, C] preprocessed inputs (only the batch size is used).
      modality_sizes: unused.
      inputs_without_pos: [B, O, C'] features to prepend when
        `concat_preprocessed_input`.
      subsampled_points: optional int[O] flat indices into the output grid.

    Returns:
      [B, O, C] queries.
    """
    if self._position_encoding_type == 'none':
      raise ValueError(
        'A BasicDecoder with position_encoding_type="none" '
        'takes its queries from elsewhere.'
      )
    batch_size = inputs.shape[0]
    if subsampled_points is not None:
      subsampled_points = jnp.asarray(subsampled_points)
      if subsampled_points.ndim != 1:
        raise ValueError(
          'subsampled_points must be flat indices of shape '
          f'[O]; got {subsampled_points.shape}.'
        )
      # DeepMind maps index i of an axis of size n to -1 + 2 i / n (not the
      # full grid's linspace); the released video model depends on it.
      coords = jnp.stack(
        jnp.unravel_index(subsampled_points, self._output_index_dims), axis=1
      )  # [O, d]
      pos = -1 + 2 * coords / jnp.array(self._output_index_dims)[None, :]
      pos = jnp.broadcast_to(pos[None], (batch_size,) + pos.shape)
      pos_emb = self.output_pos_enc(
        batch_size=batch_size, pos=pos, indices=subsampled_points
      )
    else:
      pos_emb = self.output_pos_enc(batch_size=batch_size)
    pos_emb = jnp.reshape(pos_emb, (batch_size, -1, pos_emb.shape[-1]))
    if self._concat_preprocessed_input:
      if inputs_without_pos is None:
        raise ValueError(
          'concat_preprocessed_input=True needs inputs_without_pos.'
        )
      pos_emb = jnp.concatenate([inputs_without_pos, pos_emb], axis=-1)
    return pos_emb

  def __call__(self, query, z, *, is_training, query_mask=None):
    """Decodes.

    Args:
      query: [B, O, C] queries.
      z: [B, N, D] latents.
      is_training: enables dropout.
      query_mask: optional [B, O]; masked queries output zeros before the
        query residual and MLP.

    Returns:
      [B, O, output_num_channels], or [B, O, C] if not `final_project`.
    """
    if query_mask is not None and query_mask.shape != query.shape[:2]:
      raise ValueError(
        f'query_mask must have shape {query.shape[:2]}; got {query_mask.shape}.'
      )
    cross_attention = attention.CrossAttention(
      dropout_prob=0.0,
      num_heads=self._num_heads,
      widening_factor=self._widening_factor,
      shape_for_attn='kv',
      qk_channels=self._qk_channels,
      v_channels=self._v_channels,
      use_query_residual=self._use_query_residual,
      runtime=self._runtime,
    )
    output_fn = None
    if self._final_project:
      # hk.Linear(name='output')'s parameters, applied inside the query
      # chunks of the cross-attention: [B, O, C] is never whole.
      channels = query.shape[-1]
      w_init = self._output_w_init or hk.initializers.TruncatedNormal(
        1.0 / np.sqrt(channels)
      )
      with hk.name_scope('output'):
        w = hk.get_parameter(
          'w', [channels, self._output_num_channels], query.dtype, init=w_init
        )
        b = hk.get_parameter(
          'b', [self._output_num_channels], query.dtype, init=jnp.zeros
        )

      def output_fn(x):
        return jnp.dot(x, w) + b

    return cross_attention(
      query, z, is_training=is_training, q_mask=query_mask, output_fn=output_fn
    )


class ClassificationDecoder(AbstractPerceiverDecoder):
  """One learned query decoded to `num_classes` logits."""

  def __init__(
    self,
    num_classes: int,
    name: str = 'classification_decoder',
    **decoder_kwargs,
  ):
    super().__init__(name=name)
    self._num_classes = num_classes
    self.decoder = BasicDecoder(
      output_index_dims=(1,), output_num_channels=num_classes, **decoder_kwargs
    )

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    return self.decoder.decoder_query(
      inputs,
      modality_sizes,
      inputs_without_pos,
      subsampled_points=subsampled_points,
    )

  def output_shape(self, inputs):
    return (inputs.shape[0], self._num_classes), None

  def __call__(self, query, z, *, is_training, query_mask=None):
    """[B, 1, C] query -> [B, num_classes] logits."""
    del query_mask  # A single query: nothing to mask.
    return self.decoder(query, z, is_training=is_training)[:, 0, :]


class FlowDecoder(AbstractPerceiverDecoder):
  """Decodes optical flow, queried with the preprocessed inputs themselves."""

  def __init__(
    self,
    output_image_shape,
    output_num_channels: int = 2,
    rescale_factor: float = 100.0,
    name: str = 'flow_decoder',
    **decoder_kwargs,
  ):
    super().__init__(name=name)
    self._output_image_shape = tuple(output_image_shape)
    self._output_num_channels = output_num_channels
    self._rescale_factor = rescale_factor
    self.decoder = BasicDecoder(
      output_num_channels=output_num_channels, **decoder_kwargs
    )

  def output_shape(self, inputs):
    return (
      (inputs.shape[0], *self._output_image_shape, self._output_num_channels),
      None,
    )

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    if subsampled_points is not None:
      raise ValueError('FlowDecoder does not support subsampled outputs.')
    return inputs  # [B, H*W, C], both frames merged into channels.

  def __call__(self, query, z, *, is_training, query_mask=None):
    """[B, H*W, C] queries -> [B, H, W, 2] flow, divided by rescale_factor."""
    h, w = self._output_image_shape
    if query.shape[1] != h * w:
      raise ValueError(
        f'FlowDecoder was built for {h}x{w} frames ({h * w} queries); got '
        f'{query.shape[1]} queries.'
      )
    preds = self.decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )
    preds = preds / self._rescale_factor
    return jnp.reshape(preds, (preds.shape[0], h, w, preds.shape[-1]))


class BasicVideoAutoencodingDecoder(AbstractPerceiverDecoder):
  """A BasicDecoder over a [T, H, W] grid, reshaped to video."""

  def __init__(
    self,
    output_shape,
    position_encoding_type: str,
    name: str = 'basic_video_autoencoding_decoder',
    **decoder_kwargs,
  ):
    super().__init__(name=name)
    if len(output_shape) != 4:
      raise ValueError(
        f'output_shape must be [B, T, H, W]; got {tuple(output_shape)}.'
      )
    self._output_shape = tuple(output_shape)
    self._output_num_channels = decoder_kwargs['output_num_channels']
    self.decoder = BasicDecoder(
      output_index_dims=self._output_shape[1:4],
      position_encoding_type=position_encoding_type,
      **decoder_kwargs,
    )

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    return self.decoder.decoder_query(
      inputs,
      modality_sizes=modality_sizes,
      inputs_without_pos=inputs_without_pos,
      subsampled_points=subsampled_points,
    )

  def output_shape(self, inputs):
    return (
      (inputs.shape[0], *self._output_shape[1:], self._output_num_channels),
      None,
    )

  def __call__(self, query, z, *, is_training, query_mask=None):
    output = self.decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )
    return jnp.reshape(output, self._output_shape + (output.shape[-1],))


class MultimodalDecoder(AbstractPerceiverDecoder):
  """Decodes several modalities with one shared cross-attention.

  The per-modality decoders only build queries. Each query set is padded with
  a learned `{modality}_padding` vector to the widest set plus
  `min_padding_size`, and the sets are concatenated in sorted modality order.
  """

  def __init__(
    self,
    modalities,
    num_outputs,
    output_num_channels: int,
    min_padding_size: int = 2,
    subsampled_index_dims=None,
    name: str = 'multimodal_decoder',
    **decoder_kwargs,
  ):
    super().__init__(name=name)
    self._modalities = modalities
    self._subsampled_index_dims = subsampled_index_dims
    self._min_padding_size = min_padding_size
    self._output_num_channels = output_num_channels
    self._num_outputs = num_outputs
    self._decoder = BasicDecoder(
      output_index_dims=(num_outputs,),
      output_num_channels=output_num_channels,
      position_encoding_type='none',
      **decoder_kwargs,
    )

  def decoder_query(
    self,
    inputs,
    modality_sizes,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """[B, M, C] inputs -> [B, O, C'] concatenated, padded queries."""
    inputs = patching.restructure(modality_sizes, inputs)
    subsampled_points = subsampled_points or {}
    queries = {}
    for modality, decoder in self._modalities.items():
      input_without_pos = None
      if inputs_without_pos is not None:
        input_without_pos = inputs_without_pos.get(modality)
      queries[modality] = decoder.decoder_query(
        inputs=inputs[modality],
        modality_sizes=None,
        inputs_without_pos=input_without_pos,
        subsampled_points=subsampled_points.get(modality),
      )
    num_channels = (
      max(q.shape[-1] for q in queries.values()) + self._min_padding_size
    )

    def embed(modality, x):
      x = jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))
      padding = position_encoding.TrainablePositionEncoding(
        1,
        num_channels=num_channels - x.shape[2],
        init_scale=0.02,
        name=f'{modality}_padding',
      )(x.shape[0])
      padding = jnp.broadcast_to(
        padding, (x.shape[0], x.shape[1], num_channels - x.shape[2])
      )
      return jnp.concatenate([x, padding], axis=2)

    return jnp.concatenate(
      [embed(m, queries[m]) for m in sorted(self._modalities)], axis=1
    )

  def output_shape(self, inputs):
    if self._subsampled_index_dims is not None:
      num_outputs = sum(self._subsampled_index_dims.values())
    else:
      num_outputs = int(np.prod(inputs.shape[1:-1]))
    return (
      (inputs.shape[0], num_outputs, self._output_num_channels),
      self._subsampled_index_dims,
    )

  def __call__(self, query, z, *, is_training, query_mask=None):
    return self._decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )
