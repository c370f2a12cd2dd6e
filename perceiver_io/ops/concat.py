"""Concatenation along channels that fuses each part into its write."""

import jax.numpy as jnp
from jax import lax


def concat_channels(parts):
  """jnp.concatenate(parts, axis=-1), written part by part into one array.

  XLA's CPU backend computes the operands of a concatenate into buffers of
  their own before copying them; written with one dynamic-update-slice per
  part instead, each part's elementwise computation (sines, cosines, a
  broadcast) fuses into its write. The Fourier features and the inputs they
  are concatenated to then take no memory beyond the result (the optical-flow
  model's saving is in benchmarks/README.md, "ImageNet and optical flow with
  `grid_attend`").

  Args:
    parts: arrays [..., C_i] of equal leading shapes.

  Returns:
    [..., sum C_i].
  """
  if len(parts) == 1:
    return parts[0]
  lead = parts[0].shape[:-1]
  if any(part.shape[:-1] != lead for part in parts):
    raise ValueError(
      'concat_channels needs parts of equal leading shapes; got '
      f'{[x.shape for x in parts]}.'
    )
  dtype = jnp.result_type(*parts)
  out = jnp.zeros(lead + (sum(x.shape[-1] for x in parts),), dtype)
  start = 0
  for part in parts:
    out = lax.dynamic_update_slice_in_dim(
      out, part.astype(dtype), start, axis=-1
    )
    start += part.shape[-1]
  return out
