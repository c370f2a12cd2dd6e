"""Training augmentation for optical flow: crops, flips and photometric jitter.

Shape letters: H, W frame height and width, h, w crop height and width.

Every op maps an example dict (`frames` uint8 or float [2, H, W, 3] with values
in [0, 255], `flow` float32 [H, W, 2], `valid` bool [H, W]) to a new one and
draws its randomness from a `np.random.Generator`, so a pipeline seeded per
example is exactly reproducible. Geometric ops move frames, flow and validity
together; flips also negate the flipped flow component.
"""

import numpy as np

DEFAULT_CROP_SIZE = (368, 496)


def _check(example):
  frames, flow = example['frames'], example['flow']
  if frames.ndim != 4 or frames.shape[0] != 2 or frames.shape[-1] != 3:
    raise ValueError(
      f'frames must have shape [2, H, W, 3]; got {frames.shape}.'
    )
  if flow.shape != frames.shape[1:3] + (2,):
    raise ValueError(
      f'flow {flow.shape} does not match frames {frames.shape[1:3]}.'
    )


def random_crop(example, rng, crop_size=DEFAULT_CROP_SIZE):
  """Crops frames, flow and validity at one random position.

  A frame smaller than the crop is first padded at the bottom and right by
  repeating its border, and the padded pixels are marked not valid.
  """
  _check(example)
  h, w = crop_size
  frames, flow = example['frames'], example['flow']
  valid = example.get('valid', np.ones(flow.shape[:2], bool))
  height, width = flow.shape[:2]
  pad_h, pad_w = max(0, h - height), max(0, w - width)
  if pad_h or pad_w:
    frames = np.pad(
      frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='edge'
    )
    flow = np.pad(flow, ((0, pad_h), (0, pad_w), (0, 0)))
    valid = np.pad(valid, ((0, pad_h), (0, pad_w)))
    height, width = flow.shape[:2]
  top = int(rng.integers(0, height - h + 1))
  left = int(rng.integers(0, width - w + 1))
  out = dict(example)
  out['frames'] = frames[:, top : top + h, left : left + w]
  out['flow'] = flow[top : top + h, left : left + w]
  out['valid'] = valid[top : top + h, left : left + w]
  return out


def flip_horizontal(example):
  """Mirrors left-right; the horizontal flow component changes sign."""
  out = dict(example)
  out['frames'] = example['frames'][:, :, ::-1]
  out['flow'] = example['flow'][:, ::-1] * np.array([-1.0, 1.0], np.float32)
  if 'valid' in example:
    out['valid'] = example['valid'][:, ::-1]
  return out


def flip_vertical(example):
  """Mirrors top-bottom; the vertical flow component changes sign."""
  out = dict(example)
  out['frames'] = example['frames'][:, ::-1]
  out['flow'] = example['flow'][::-1] * np.array([1.0, -1.0], np.float32)
  if 'valid' in example:
    out['valid'] = example['valid'][::-1]
  return out


def random_flips(example, rng, horizontal_prob=0.5, vertical_prob=0.1):
  """Flips left-right and top-bottom at random (RAFT's probabilities)."""
  if rng.uniform() < horizontal_prob:
    example = flip_horizontal(example)
  if rng.uniform() < vertical_prob:
    example = flip_vertical(example)
  return example


# --- Photometric jitter ---

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB <-> YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
  np.float32,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def adjust_color(images, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0):
  """Colour adjustments of float [..., H, W, 3] images in [0, 255].

  Args:
    images: one image [H, W, 3] or a stack of them.
    brightness: multiplies intensities.
    contrast: scales the distance to each image's mean grey.
    saturation: scales the distance to each pixel's grey.
    hue: rotation of the chroma plane, as a fraction of a full turn.

  Returns:
    float32 images clipped to [0, 255].
  """
  x = np.asarray(images, np.float32) * brightness
  grey = x @ _LUMA  # [..., H, W]
  mean = grey.mean(axis=(-2, -1), keepdims=True)[..., None]
  x = mean + (x - mean) * contrast
  grey = (x @ _LUMA)[..., None]
  x = grey + (x - grey) * saturation
  if hue:
    yiq = x @ _RGB_TO_YIQ.T
    c, s = np.cos(2 * np.pi * hue), np.sin(2 * np.pi * hue)
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1] = c * i - s * q
    yiq[..., 2] = s * i + c * q
    x = yiq @ _YIQ_TO_RGB.T
  return np.clip(x, 0, 255).astype(np.float32)


def _draw_color(rng, brightness, contrast, saturation, hue):
  return dict(
    brightness=rng.uniform(1 - brightness, 1 + brightness),
    contrast=rng.uniform(1 - contrast, 1 + contrast),
    saturation=rng.uniform(1 - saturation, 1 + saturation),
    hue=rng.uniform(-hue, hue),
  )


def photometric_jitter(
  example,
  rng,
  brightness=0.4,
  contrast=0.4,
  saturation=0.4,
  hue=0.5 / np.pi,
  asymmetric_prob=0.2,
):
  """Random colour jitter, RAFT-style.

  Both frames get the same jitter, except with probability `asymmetric_prob`
  each frame gets its own (lighting that changes between frames).

  Returns:
    The example with float32 frames in [0, 255].
  """
  _check(example)
  frames = example['frames']
  if rng.uniform() < asymmetric_prob:
    jittered = np.stack(
      [
        adjust_color(
          frames[i], **_draw_color(rng, brightness, contrast, saturation, hue)
        )
        for i in range(2)
      ]
    )
  else:
    params = _draw_color(rng, brightness, contrast, saturation, hue)
    jittered = adjust_color(frames, **params)
  out = dict(example)
  out['frames'] = jittered
  return out


def augment(
  example,
  rng,
  crop_size=DEFAULT_CROP_SIZE,
  horizontal_flip_prob=0.5,
  vertical_flip_prob=0.1,
  photometric=True,
  brightness=0.4,
  contrast=0.4,
  saturation=0.4,
  hue=0.5 / np.pi,
  asymmetric_prob=0.2,
):
  """The training augmentation: crop, photometric jitter, flips.

  The keyword names match `config.data.augment`, so
  `augment(example, rng, **config.data.augment)` works.

  Returns:
    An example with float32 frames [2, h, w, 3] in [0, 255], flow [h, w, 2]
    and valid [h, w], all contiguous.
  """
  # Crop first: jittering only the crop is cheaper.
  example = random_crop(example, rng, crop_size)
  if photometric:
    example = photometric_jitter(
      example,
      rng,
      brightness=brightness,
      contrast=contrast,
      saturation=saturation,
      hue=hue,
      asymmetric_prob=asymmetric_prob,
    )
  example = random_flips(example, rng, horizontal_flip_prob, vertical_flip_prob)
  out = dict(example)
  out['frames'] = np.ascontiguousarray(example['frames'], np.float32)
  out['flow'] = np.ascontiguousarray(example['flow'], np.float32)
  out['valid'] = np.ascontiguousarray(example['valid'], bool)
  return out
