"""The Middlebury colour coding of optical flow (Baker et al., IJCV 2011).

Shape letters: H height, W width.

The hue gives the direction and the saturation the magnitude: zero motion is
white, and a vector of the normalising radius gets the full colour of the
wheel. Directions in image coordinates (v points down): right is red, down is
orange-yellow, left is cyan-blue and up is violet. Vectors longer than the
radius are drawn darker (x 0.75), as in the reference code.

The wheel has 55 colours in six ramps between the primary and secondary
colours, with the ramp lengths from the paper, chosen so that perceptually
similar hue steps get similar numbers of entries:
red->yellow 15, yellow->green 6, green->cyan 4, cyan->blue 11,
blue->magenta 13, magenta->red 6.
"""

import numpy as np

# (ramp length, start colour, end colour), in wheel order.
_RAMPS = (
  (15, (255, 0, 0), (255, 255, 0)),  # red -> yellow
  (6, (255, 255, 0), (0, 255, 0)),  # yellow -> green
  (4, (0, 255, 0), (0, 255, 255)),  # green -> cyan
  (11, (0, 255, 255), (0, 0, 255)),  # cyan -> blue
  (13, (0, 0, 255), (255, 0, 255)),  # blue -> magenta
  (6, (255, 0, 255), (255, 0, 0)),  # magenta -> red
)


def make_colorwheel():
  """Returns the wheel as float64 [55, 3] RGB values in [0, 255].

  Entry i of a ramp of length n is start + (end - start) * i / n, so every
  ramp begins exactly on its primary or secondary colour.
  """
  rows = []
  for length, start, end in _RAMPS:
    t = np.arange(length)[:, None] / length
    rows.append(np.asarray(start) + (np.asarray(end) - np.asarray(start)) * t)
  return np.concatenate(rows).astype(np.float64)


def flow_to_color(flow, max_radius=None, valid=None):
  """Colour-codes a flow field.

  Args:
    flow: float [H, W, 2] of (u, v) in pixels.
    max_radius: the magnitude drawn at full saturation. Defaults to the
      largest finite magnitude in `flow` (or 1 if all are zero); pass a fixed
      value to compare several fields on one scale.
    valid: optional bool [H, W]; invalid pixels are drawn black.

  Returns:
    uint8 [H, W, 3] RGB image.

  Raises:
    ValueError: on a wrong shape or a non-positive `max_radius`.
  """
  flow = np.asarray(flow, np.float64)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f'flow must have shape [H, W, 2]; got {flow.shape}.')
  finite = np.all(np.isfinite(flow), axis=-1)
  if valid is not None:
    valid = np.asarray(valid, bool)
    if valid.shape != flow.shape[:2]:
      raise ValueError(
        f'valid must have shape {flow.shape[:2]}; got {valid.shape}.'
      )
    finite &= valid
  flow = np.where(finite[..., None], flow, 0.0)
  u, v = flow[..., 0], flow[..., 1]
  radius = np.sqrt(u**2 + v**2)
  if max_radius is None:
    max_radius = float(radius.max()) if radius.size else 0.0
    max_radius = max_radius if max_radius > 0 else 1.0
  if max_radius <= 0:
    raise ValueError(f'max_radius must be positive; got {max_radius}.')
  u, v, radius = u / max_radius, v / max_radius, radius / max_radius

  wheel = make_colorwheel()
  num_colors = wheel.shape[0]
  # Angle in (-1, 1]: pointing left (u < 0, v = 0) is 0, right is +-1.
  angle = np.arctan2(-v, -u) / np.pi
  position = (angle + 1) / 2 * (num_colors - 1)  # [0, num_colors - 1]
  k0 = np.floor(position).astype(np.int64)
  k1 = (k0 + 1) % num_colors
  frac = (position - k0)[..., None]
  color = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0  # [H, W, 3]

  inside = (radius <= 1)[..., None]
  saturated = 1 - radius[..., None] * (1 - color)
  color = np.where(inside, saturated, color * 0.75)
  image = np.floor(255 * color).astype(np.uint8)
  image[~finite] = 0
  return image


def colorwheel_legend(size=101):
  """An image of the colour code itself: uint8 [size, size, 3].

  Pixel (y, x) shows the flow pointing from the centre to (x, y), normalised
  so that the inscribed circle has full saturation.
  """
  c = (size - 1) / 2
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
  flow = np.stack([xs - c, ys - c], axis=-1)
  return flow_to_color(flow, max_radius=c)


def with_legend(image, size=None, margin=None):
  """The colour-coded `image` with the legend wheel to its right.

  Args:
    image: uint8 [H, W, 3], from `flow_to_color`.
    size: the wheel's side in pixels; default H // 3, clipped to [33, 161].
    margin: white pixels around the wheel; default size // 8.

  Returns:
    uint8 [max(H, size + 2 * margin), W + size + 2 * margin, 3]: the image at
    the top left, unchanged, white elsewhere, and the wheel (its rim is the
    normalising radius) at the top of the right-hand panel.

  Raises:
    ValueError: if `image` is not uint8 [H, W, 3].
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(
      f'Expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}.'
    )
  height, width = image.shape[:2]
  if size is None:
    size = int(np.clip(height // 3, 33, 161))
  if margin is None:
    margin = size // 8
  wheel = colorwheel_legend(size)
  c = (size - 1) / 2
  ys, xs = np.mgrid[0:size, 0:size]
  outside = (ys - c) ** 2 + (xs - c) ** 2 > c**2
  wheel[outside] = 255
  out = np.full(
    (max(height, size + 2 * margin), width + size + 2 * margin, 3),
    255,
    np.uint8,
  )
  out[:height, :width] = image
  left = width + margin
  out[margin : margin + size, left : left + size] = wheel
  return out
