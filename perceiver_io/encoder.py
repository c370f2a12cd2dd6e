"""The Perceiver IO encoder: cross-attend to the inputs, then process latents.

Shape letters: B batch, M inputs, C input channels, N latents, D latent
channels.
"""

import haiku as hk

from perceiver_io import attention
from perceiver_io import position_encoding


class PerceiverEncoder(hk.Module):
  """One cross-attend into a latent array, then a weight-shared latent stack.

  The `num_self_attends_per_block` self-attention layers form one block,
  applied `num_blocks` times with the same weights.
  """

  def __init__(self, num_self_attends_per_block: int = 6,
               num_blocks: int = 8, z_index_dim: int = 512,
               num_z_channels: int = 1024, qk_channels: int | None = None,
               v_channels: int | None = None,
               num_cross_attend_heads: int = 1,
               num_self_attend_heads: int = 8,
               cross_attend_widening_factor: int = 1,
               self_attend_widening_factor: int = 1,
               dropout_prob: float = 0.0,
               dropout_attn_prob: float = 0.0,
               z_pos_enc_init_scale: float = 0.02,
               cross_attention_shape_for_attn: str = 'kv',
               use_query_residual: bool = True,
               attention_impl: str = 'einsum',
               remat_blocks: bool = False,
               name: str = 'perceiver_encoder'):
    super().__init__(name=name)
    if num_blocks <= 0 or num_self_attends_per_block < 0:
      raise ValueError(
          'num_blocks must be positive and num_self_attends_per_block '
          f'non-negative; got {num_blocks} and {num_self_attends_per_block}.'
      )
    for what, heads in (('num_self_attend_heads', num_self_attend_heads),
                        ('num_cross_attend_heads', num_cross_attend_heads)):
      if heads <= 0 or num_z_channels % heads != 0:
        raise ValueError(
            f'num_z_channels ({num_z_channels}) must be divisible by {what} '
            f'({heads}).'
        )
    for what, channels in (('qk_channels', qk_channels),
                           ('v_channels', v_channels)):
      if channels is not None and (
          channels % num_self_attend_heads or channels % num_cross_attend_heads
      ):
        raise ValueError(
            f'{what} ({channels}) must be divisible by num_self_attend_heads '
            f'({num_self_attend_heads}) and num_cross_attend_heads '
            f'({num_cross_attend_heads}).'
        )
    self._num_blocks = num_blocks
    self._remat_blocks = remat_blocks
    self.z_pos_enc = position_encoding.TrainablePositionEncoding(
        index_dim=z_index_dim, num_channels=num_z_channels,
        init_scale=z_pos_enc_init_scale)
    self.cross_attend = attention.CrossAttention(
        dropout_prob=dropout_prob, dropout_attn_prob=dropout_attn_prob,
        num_heads=num_cross_attend_heads,
        widening_factor=cross_attend_widening_factor,
        shape_for_attn=cross_attention_shape_for_attn,
        qk_channels=qk_channels, v_channels=v_channels,
        use_query_residual=use_query_residual, attention_impl=attention_impl)
    self.self_attends = [
        attention.SelfAttention(
            num_heads=num_self_attend_heads, dropout_prob=dropout_prob,
            dropout_attn_prob=dropout_attn_prob, qk_channels=qk_channels,
            v_channels=v_channels, widening_factor=self_attend_widening_factor,
            attention_impl=attention_impl)
        for _ in range(num_self_attends_per_block)
    ]

  def latents(self, inputs):
    """The initial latent array [B, N, D] for a batch of [B, ...] inputs."""
    return self.z_pos_enc(batch_size=inputs.shape[0])

  def __call__(self, inputs, z, *, is_training, input_mask=None):
    """Encodes.

    Args:
      inputs: [B, M, C] preprocessed inputs.
      z: [B, N, D] initial latents, from `latents`.
      is_training: enables dropout.
      input_mask: optional [B, M]; inputs with 0 are not attended to.

    Returns:
      [B, N, D] latents.
    """
    if inputs.ndim != 3:
      raise ValueError(
          f'The encoder expects inputs of shape [B, M, C]; got {inputs.shape}.'
      )
    if input_mask is not None and input_mask.shape != inputs.shape[:2]:
      raise ValueError(
          f'input_mask must have shape {inputs.shape[:2]}; got '
          f'{input_mask.shape}.'
      )
    z = self.cross_attend(z, inputs, is_training=is_training,
                          kv_mask=input_mask)
    for _ in range(self._num_blocks):
      z = self._block(z, is_training)
    return z

  def _block(self, z, is_training):
    def block(z):
      for self_attend in self.self_attends:
        z = self_attend(z, is_training=is_training)
      return z

    if self._remat_blocks:
      block = hk.remat(block)
    return block(z)

