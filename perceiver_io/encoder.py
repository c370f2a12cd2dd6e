"""The Perceiver IO encoder: cross-attend to the inputs, then process latents.

Shape letters: B batch, M inputs, C input channels, N latents, D latent
channels, L self-attention layers per block.

The parameters keep DeepMind's per-layer names (`self_attention`,
`self_attention_1`, ...); only the computation is restructured. The
`num_blocks` repetitions of the weight-shared block loop with `lax.scan`,
the shared weights being loop invariants: XLA compiles one block instead of
all of them (the ImageNet models unroll 6 layers instead of 48). Optionally
the layers of a block loop too, over weights stacked along a leading axis.

The backward pass of a deep stack of pre-LayerNorm layers stays linear in
depth because `layer_norm` has a hand-written gradient (see layer_norm.py).
"""

import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

from perceiver_io import attention
from perceiver_io import position_encoding
from perceiver_io import runtime as runtime_lib


class PerceiverEncoder(hk.Module):
  """One cross-attend into a latent array, then a weight-shared latent stack.

  The `num_self_attends_per_block` self-attention layers form one block,
  applied `num_blocks` times with the same weights.

  How it runs is `runtime` (`runtime.Runtime`): its attention
  implementation and compute dtype reach every layer, and `scan_blocks`,
  `scan_layers`, `remat_blocks` and `remat_layers` choose how the latent
  stack loops and what its backward pass stores. None of them changes the
  parameters.
  """

  def __init__(
    self,
    num_self_attends_per_block: int = 6,
    num_blocks: int = 8,
    z_index_dim: int = 512,
    num_z_channels: int = 1024,
    qk_channels: int | None = None,
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
    runtime: runtime_lib.Runtime = runtime_lib.DEFAULT,
    name: str = 'perceiver_encoder',
  ):
    super().__init__(name=name)
    if num_blocks <= 0 or num_self_attends_per_block < 0:
      raise ValueError(
        'num_blocks must be positive and num_self_attends_per_block '
        f'non-negative; got {num_blocks} and {num_self_attends_per_block}.'
      )
    for what, heads in (
      ('num_self_attend_heads', num_self_attend_heads),
      ('num_cross_attend_heads', num_cross_attend_heads),
    ):
      if heads <= 0 or num_z_channels % heads != 0:
        raise ValueError(
          f'num_z_channels ({num_z_channels}) must be divisible by {what} '
          f'({heads}).'
        )
    for what, channels in (
      ('qk_channels', qk_channels),
      ('v_channels', v_channels),
    ):
      if channels is not None and (
        channels % num_self_attend_heads or channels % num_cross_attend_heads
      ):
        raise ValueError(
          f'{what} ({channels}) must be divisible by num_self_attend_heads '
          f'({num_self_attend_heads}) and num_cross_attend_heads '
          f'({num_cross_attend_heads}).'
        )
    self._num_blocks = num_blocks
    runtime_lib.check_type(runtime)
    self._runtime = runtime
    self._num_z_channels = num_z_channels
    self.z_pos_enc = position_encoding.TrainablePositionEncoding(
      index_dim=z_index_dim,
      num_channels=num_z_channels,
      init_scale=z_pos_enc_init_scale,
    )
    self.cross_attend = attention.CrossAttention(
      dropout_prob=dropout_prob,
      dropout_attn_prob=dropout_attn_prob,
      num_heads=num_cross_attend_heads,
      widening_factor=cross_attend_widening_factor,
      shape_for_attn=cross_attention_shape_for_attn,
      qk_channels=qk_channels,
      v_channels=v_channels,
      use_query_residual=use_query_residual,
      runtime=runtime,
    )
    self.self_attends = [
      attention.SelfAttentionParams(
        num_heads=num_self_attend_heads,
        dropout_prob=dropout_prob,
        dropout_attn_prob=dropout_attn_prob,
        qk_channels=qk_channels,
        v_channels=v_channels,
        widening_factor=self_attend_widening_factor,
        runtime=runtime,
      )
      for _ in range(num_self_attends_per_block)
    ]

  def latents(self, inputs):
    """The initial latent array [B, N, D] for a batch of [B, ...] inputs."""
    return self.z_pos_enc(batch_size=inputs.shape[0])

  def __call__(self, inputs, z, *, is_training, input_mask=None):
    """Encodes.

    Args:
      inputs: [B, M, C] preprocessed inputs, or a `ops.grid.GridInputs`.
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
    if z.ndim != 3 or z.shape[-1] != self._num_z_channels:
      raise ValueError(
        f'z must have shape [B, N, {self._num_z_channels}]; got {z.shape}.'
      )
    z = self.cross_attend(
      z, inputs, is_training=is_training, kv_mask=input_mask
    )  # [B, N, D]
    if not self.self_attends:
      return z
    channels = z.shape[-1]
    spec = self.self_attends[0].spec(channels)
    # Each layer's parameters, created under its own name.
    weights = [layer(channels) for layer in self.self_attends]
    rng = hk.next_rng_key() if attention.needs_rng(spec, is_training) else None
    num_layers = len(weights)

    def layer_fn(z, w, index):
      layer_rng = None if rng is None else jax.random.fold_in(rng, index)
      return attention.self_attention(
        spec, w, z, is_training=is_training, rng=layer_rng
      )

    if self._runtime.remat_layers:
      layer_fn = jax.checkpoint(layer_fn)

    if self._runtime.scan_layers:
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *weights)  # [L, ...]

      def block_fn(z, block):
        def layer_step(z, xs):
          w, layer = xs
          return layer_fn(z, w, block * num_layers + layer), None

        z, _ = lax.scan(layer_step, z, (stacked, jnp.arange(num_layers)))
        return z
    else:

      def block_fn(z, block):
        for layer, w in enumerate(weights):
          z = layer_fn(z, w, block * num_layers + layer)
        return z

    if self._runtime.remat_blocks:
      block_fn = jax.checkpoint(block_fn)
    if self._runtime.scan_blocks and self._num_blocks > 1:
      # The shared weights are loop invariants: nothing is copied per block.
      z, _ = lax.scan(
        lambda z, block: (block_fn(z, block), None),
        z,
        jnp.arange(self._num_blocks),
      )
      return z
    for block in range(self._num_blocks):
      z = block_fn(z, block)
    return z
