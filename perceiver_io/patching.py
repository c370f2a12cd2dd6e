"""Array helpers: space-to-depth, image patches, and multimodal slicing.

Shape letters: B batch, T time, H height, W width, C channels, M flat inputs.
"""

import jax.numpy as jnp


def space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
  """Folds blocks of pixels (and frames) into channels.

  Args:
    frames: [B, H, W, C] images or [B, T, H, W, C] videos.
    temporal_block_size: dt, frames per block (videos only).
    spatial_block_size: s, pixels per block side.

  Returns:
    [B, H/s, W/s, s*s*C], or [B, T/dt, H/s, W/s, dt*s*s*C] for videos, with
    channels ordered (dt, dh, dw, c).

  Raises:
    ValueError: for another rank or sizes the blocks do not divide.
  """
  s = spatial_block_size
  if frames.ndim == 4:
    b, h, w, c = frames.shape
    _check_divisible(frames.shape, (h, w), (s, s))
    x = jnp.reshape(frames, (b, h // s, s, w // s, s, c))
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return jnp.reshape(x, (b, h // s, w // s, s * s * c))
  if frames.ndim == 5:
    b, t, h, w, c = frames.shape
    dt = temporal_block_size
    _check_divisible(frames.shape, (t, h, w), (dt, s, s))
    x = jnp.reshape(frames, (b, t // dt, dt, h // s, s, w // s, s, c))
    x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
    return jnp.reshape(x, (b, t // dt, h // s, w // s, dt * s * s * c))
  raise ValueError(
    'space_to_depth expects [B, H, W, C] or [B, T, H, W, C]; got shape '
    f'{frames.shape}.'
  )


def reverse_space_to_depth(frames, temporal_block_size=1, spatial_block_size=1):
  """Inverse of `space_to_depth`."""
  s = spatial_block_size
  if frames.ndim == 4:
    b, h, w, c = frames.shape
    _check_divisible(frames.shape, (c,), (s * s,))
    x = jnp.reshape(frames, (b, h, w, s, s, c // (s * s)))
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return jnp.reshape(x, (b, h * s, w * s, c // (s * s)))
  if frames.ndim == 5:
    b, t, h, w, c = frames.shape
    dt = temporal_block_size
    _check_divisible(frames.shape, (c,), (dt * s * s,))
    x = jnp.reshape(frames, (b, t, h, w, dt, s, s, c // (dt * s * s)))
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
    return jnp.reshape(x, (b, t * dt, h * s, w * s, c // (dt * s * s)))
  raise ValueError(
    f'reverse_space_to_depth expects rank 4 or 5; got shape {frames.shape}.'
  )


def patches_3x3(images):
  """Each pixel's zero-padded 3x3 neighbourhood, like TF's extract_patches.

  Args:
    images: [B, H, W, C].

  Returns:
    [B, H, W, 9*C], channels ordered (row, column, c).
  """
  if images.ndim != 4:
    raise ValueError(f'Expected [B, H, W, C] images; got {images.shape}.')
  _, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate(
    [
      padded[:, dy : dy + h, dx : dx + w, :]
      for dy in range(3)
      for dx in range(3)
    ],
    axis=-1,
  )


def patches_for_flow(frames):
  """The 3x3 patch of every pixel of both frames of a flow pair.

  Args:
    frames: [B, T, H, W, C], T = 2 for flow.

  Returns:
    [B, T, H, W, 9*C].
  """
  if frames.ndim != 5:
    raise ValueError(
      f'patches_for_flow expects [B, T, H, W, C] frames; got {frames.shape}.'
    )
  b, t, h, w, c = frames.shape
  patches = patches_3x3(jnp.reshape(frames, (b * t, h, w, c)))
  return jnp.reshape(patches, (b, t, h, w, 9 * c))


def restructure(modality_sizes, inputs):
  """Splits [B, M, C] into a dict of [B, M_m, C], in sorted modality order."""
  outputs = {}
  index = 0
  for modality in sorted(modality_sizes):
    size = modality_sizes[modality]
    outputs[modality] = inputs[:, index : index + size]
    index += size
  if index != inputs.shape[1]:
    raise ValueError(
      f'Modality sizes {dict(modality_sizes)} add up to {index}, but the '
      f'inputs have {inputs.shape[1]} elements.'
    )
  return outputs


def _check_divisible(shape, dims, blocks):
  for dim, block in zip(dims, blocks, strict=True):
    if block <= 0 or dim % block:
      raise ValueError(
        f'Block sizes {blocks} must divide the dimensions {dims} of an array '
        f'of shape {shape}.'
      )
