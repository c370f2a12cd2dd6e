"""Optical flow on frames of any size, from a model trained on fixed tiles.

Shape letters: B batch, T tiles, H, W frame height and width, h, w tile height
and width.

The flow model sees a fixed frame size (368x496 for the released model). A
larger frame is covered by overlapping tiles, as in DeepMind's colab: along
each axis the fewest tiles that overlap by at least `min_overlap` pixels
(default 20), spread evenly from border to border. The tiles are flowed in
batches of `tile_batch_size`, and their flows are blended with a weight that
falls off linearly towards the tile edges,
`weight(y, x) = min(y + 1, h - y, x + 1, w - x)`, so every output pixel is
dominated by the tile in which it lies furthest from a border.

A frame smaller than a tile along some axis is handled by `small_frames`:
- 'resize' (default): the frames are upsampled bilinearly, keeping their
  aspect ratio, until they cover a tile; the flow is computed at that size,
  resampled back and its vectors divided by the scale factors. The model
  then sees magnified motion, like a camera closer to the scene.
- 'pad': the frames are padded at the bottom and right by repeating their
  border pixels; the flow of the padded region is dropped. Motion at the
  padded borders is less reliable, since the padding is static.
Padding with zeros (black) is avoided because it creates a strong, static edge.

Only numpy and jax are used; `flow_fn` is any function from frames
float32 [T, 2, h, w, 3] to flows [T, h, w, 2], e.g. `make_flow_fn(model, ...)`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_TILE_SIZE = (368, 496)
DEFAULT_MIN_OVERLAP = 20
SMALL_FRAME_MODES = ('resize', 'pad')


def tile_starts(size, tile, min_overlap=DEFAULT_MIN_OVERLAP):
  """Start offsets of tiles of length `tile` covering `size` pixels.

  Args:
    size: frame length along one axis; at least `tile`.
    tile: tile length.
    min_overlap: minimum overlap of neighbouring tiles, < `tile`.

  Returns:
    list of ints, from 0 to size - tile, evenly spread.
  """
  if size < tile:
    raise ValueError(f'The frame ({size}) is smaller than a tile ({tile}).')
  if size == tile:  # One tile; the overlap does not matter.
    return [0]
  if not 0 <= min_overlap < tile:
    raise ValueError(f'min_overlap must be in [0, {tile}); got {min_overlap}.')
  count = math.ceil((size - min_overlap) / (tile - min_overlap))
  while True:
    starts = np.round(np.linspace(0, size - tile, count)).astype(int)
    # Rounding may shave a pixel off an overlap; add a tile if it does.
    if count == 1 or np.max(np.diff(starts)) <= tile - min_overlap:
      return [int(s) for s in starts]
    count += 1


def tile_weights(tile_size):
  """The blending weight of a tile, float32 [h, w], 1 at the corners."""
  h, w = tile_size
  y = np.arange(h)
  x = np.arange(w)
  wy = np.minimum(y + 1, h - y)
  wx = np.minimum(x + 1, w - x)
  return np.minimum(wy[:, None], wx[None, :]).astype(np.float32)


def tile_grid(
  frame_size, tile_size=DEFAULT_TILE_SIZE, min_overlap=DEFAULT_MIN_OVERLAP
):
  """The (top, left) corners of the tiles covering a frame of `frame_size`."""
  tops = tile_starts(frame_size[0], tile_size[0], min_overlap)
  lefts = tile_starts(frame_size[1], tile_size[1], min_overlap)
  return [(top, left) for top in tops for left in lefts]


def _resize_bilinear(x, size):
  """Resizes [..., H, W, C] to [..., size[0], size[1], C] (half-pixel centres)."""
  shape = x.shape[:-3] + tuple(size) + x.shape[-1:]
  return np.asarray(jax.image.resize(jnp.asarray(x), shape, 'bilinear'))


def _flow_tiled(frames, flow_fn, tile_size, min_overlap, tile_batch_size):
  """Tiles frames [2, H, W, 3] with H >= h, W >= w; returns [H, W, 2]."""
  _, height, width, _ = frames.shape
  th, tw = tile_size
  corners = tile_grid((height, width), tile_size, min_overlap)
  weights = tile_weights(tile_size)
  total = np.zeros((height, width, 2), np.float64)
  norm = np.zeros((height, width, 1), np.float64)
  for begin in range(0, len(corners), tile_batch_size):
    chunk = corners[begin : begin + tile_batch_size]
    tiles = np.stack([frames[:, t : t + th, x : x + tw] for t, x in chunk])
    count = len(chunk)
    if count < tile_batch_size:
      # A fixed batch size keeps one compiled shape for the whole run.
      fill = np.repeat(tiles[-1:], tile_batch_size - count, axis=0)
      tiles = np.concatenate([tiles, fill])
    flows = np.asarray(flow_fn(tiles))[:count]  # [T, h, w, 2]
    if flows.shape != (count, th, tw, 2):
      raise ValueError(
        f'flow_fn returned {flows.shape}; expected {(count, th, tw, 2)}.'
      )
    for (t, x), flow in zip(chunk, flows, strict=True):
      total[t : t + th, x : x + tw] += flow * weights[..., None]
      norm[t : t + th, x : x + tw] += weights[..., None]
  return (total / norm).astype(np.float32)


def compute_flow(
  frames,
  flow_fn,
  *,
  tile_size=DEFAULT_TILE_SIZE,
  min_overlap=DEFAULT_MIN_OVERLAP,
  tile_batch_size=4,
  small_frames='resize',
):
  """Optical flow of one frame pair of any size, by blended overlapping tiles.

  Args:
    frames: float32 [2, H, W, 3], as the model expects them (e.g. in [-1, 1]).
    flow_fn: frames [T, 2, h, w, 3] -> flow [T, h, w, 2] in pixels, where
      (h, w) = `tile_size` and T = `tile_batch_size`.
    tile_size: (h, w), the model's frame size.
    min_overlap: minimum overlap of neighbouring tiles in pixels.
    tile_batch_size: tiles per `flow_fn` call (the last call is padded).
    small_frames: 'resize' or 'pad', for frames smaller than a tile (module
      docstring).

  Returns:
    float32 [H, W, 2] flow (u, v) in pixels of the input frames.

  Raises:
    ValueError: on a wrong frames shape or an unknown `small_frames`.
  """
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 4 or frames.shape[0] != 2 or frames.shape[-1] != 3:
    raise ValueError(
      f'frames must have shape [2, H, W, 3]; got {frames.shape}.'
    )
  if small_frames not in SMALL_FRAME_MODES:
    raise ValueError(
      f'small_frames must be one of {SMALL_FRAME_MODES}; got {small_frames!r}.'
    )
  if tile_batch_size < 1:
    raise ValueError(
      f'tile_batch_size must be positive; got {tile_batch_size}.'
    )
  _, height, width, _ = frames.shape
  th, tw = tile_size
  if height >= th and width >= tw:
    return _flow_tiled(frames, flow_fn, tile_size, min_overlap, tile_batch_size)

  if small_frames == 'pad':
    pad_h, pad_w = max(0, th - height), max(0, tw - width)
    padded = np.pad(
      frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='edge'
    )
    flow = _flow_tiled(padded, flow_fn, tile_size, min_overlap, tile_batch_size)
    return flow[:height, :width]

  scale = max(th / height, tw / width)
  big = (max(th, math.ceil(height * scale)), max(tw, math.ceil(width * scale)))
  resized = _resize_bilinear(frames, big)
  flow = _flow_tiled(resized, flow_fn, tile_size, min_overlap, tile_batch_size)
  flow = _resize_bilinear(flow, (height, width))
  # Displacements shrink with the frame: divide u and v by their axis' scale.
  return flow / np.array([big[1] / width, big[0] / height], np.float32)


def make_flow_fn(model, params, state, rng=None):
  """A jitted `flow_fn` for `compute_flow` from a `perceiver_io` flow model.

  Args:
    model: an object with `apply(params, state, rng, *, is_training, frames)`
      returning (flow [B, h, w, 2], state), as built by
      `perceiver_io.models.build('optical_flow', config)`.
    params, state: its parameters and state.
    rng: a PRNG key if the model needs one at inference, else None.

  Returns:
    frames [T, 2, h, w, 3] -> flow [T, h, w, 2], jitted.
  """

  # Parameters are arguments, not closed-over constants, so that a 41M
  # parameter model is not baked into the compiled program.
  @jax.jit
  def apply_fn(params, state, tiles):
    flow, _ = model.apply(params, state, rng, is_training=False, frames=tiles)
    return flow

  def flow_fn(tiles):
    return apply_fn(params, state, jnp.asarray(tiles, jnp.float32))

  return flow_fn
