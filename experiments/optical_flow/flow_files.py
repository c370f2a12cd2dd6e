"""Readers and writers for optical-flow files and the frames that go with them.

Shape letters: H height, W width. A flow field is float32 [H, W, 2] holding
(u, v) = (dx, dy) in pixels: the pixel at (x, y) in the first frame moves to
(x + u, y + v) in the second.

Formats:
- Middlebury `.flo` (Sintel, FlyingChairs, AutoFlow): the float32 tag
  202021.25, int32 width, int32 height, then H * W * 2 little-endian float32
  values, row-major with u and v interleaved.
- KITTI 2015 16-bit PNG: three uint16 channels (u, v, valid) with
  u = (R - 2**15) / 64, v = (G - 2**15) / 64 and valid = B > 0. Pillow cannot
  read or write 16-bit RGB PNGs, so these go through TensorFlow's PNG codec
  (imported lazily).
- `.npy`: float32 [H, W, 2], for tools that prefer NumPy.
"""

import os

import numpy as np
from PIL import Image

FLO_TAG = 202021.25
_FLO_HEADER_BYTES = 12
_KITTI_OFFSET = 2.0**15
_KITTI_SCALE = 64.0
# A sanity bound on .flo dimensions, so a corrupt header fails loudly instead
# of asking for terabytes.
_MAX_FLO_SIDE = 1 << 16


def _check_flow(flow):
  flow = np.asarray(flow)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(
      f'A flow field must have shape [H, W, 2]; got {flow.shape}.'
    )
  if not np.issubdtype(flow.dtype, np.floating):
    raise ValueError(f'A flow field must be floating point; got {flow.dtype}.')
  return flow.astype(np.float32)


# --- Middlebury .flo ---


def read_flo(path):
  """Reads a Middlebury `.flo` file.

  Args:
    path: file path.

  Returns:
    float32 [H, W, 2] flow in pixels.

  Raises:
    ValueError: if the file is not a valid `.flo` file (bad tag, implausible
      size, or truncated data).
  """
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < _FLO_HEADER_BYTES:
    raise ValueError(
      f'{path}: too short for a .flo header ({len(data)} bytes).'
    )
  tag = np.frombuffer(data, '<f4', count=1)[0]
  if tag != np.float32(FLO_TAG):
    raise ValueError(
      f'{path}: not a .flo file (tag {tag!r}, expected {FLO_TAG}).'
    )
  width, height = (
    int(x) for x in np.frombuffer(data, '<i4', count=2, offset=4)
  )
  if not (0 < width <= _MAX_FLO_SIDE and 0 < height <= _MAX_FLO_SIDE):
    raise ValueError(f'{path}: implausible .flo size {width}x{height}.')
  expected = _FLO_HEADER_BYTES + height * width * 2 * 4
  if len(data) != expected:
    raise ValueError(
      f'{path}: a {width}x{height} .flo file has {expected} bytes; found '
      f'{len(data)} (truncated or corrupt).'
    )
  flow = np.frombuffer(data, '<f4', offset=_FLO_HEADER_BYTES)
  return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path, flow):
  """Writes float [H, W, 2] `flow` as a Middlebury `.flo` file."""
  flow = _check_flow(flow)
  height, width, _ = flow.shape
  with open(path, 'wb') as f:
    f.write(np.array([FLO_TAG], '<f4').tobytes())
    f.write(np.array([width, height], '<i4').tobytes())
    f.write(np.ascontiguousarray(flow, '<f4').tobytes())


# --- KITTI 16-bit PNG ---


def decode_kitti_flow(png_bytes, name='<bytes>'):
  """Decodes a KITTI flow PNG into (float32 [H, W, 2] flow, bool [H, W] valid)."""
  import tensorflow as tf

  try:
    raw = tf.io.decode_png(png_bytes, channels=3, dtype=tf.uint16).numpy()
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    raise ValueError(f'{name}: not a readable 16-bit PNG ({e}).') from e
  raw = raw.astype(np.float64)
  flow = (raw[..., :2] - _KITTI_OFFSET) / _KITTI_SCALE
  valid = raw[..., 2] > 0
  # KITTI leaves arbitrary values at invalid pixels; zero them so they cannot
  # leak into a metric that forgets the mask.
  flow = np.where(valid[..., None], flow, 0.0).astype(np.float32)
  return flow, valid


def read_kitti_flow(path):
  """Reads a KITTI 2015 flow PNG.

  Args:
    path: file path (e.g. `training/flow_occ/000000_10.png`).

  Returns:
    (flow float32 [H, W, 2] in pixels, valid bool [H, W]). Flow is zero where
    not valid.

  Raises:
    ValueError: if the file is not a 16-bit PNG.
  """
  with open(path, 'rb') as f:
    return decode_kitti_flow(f.read(), name=path)


def write_kitti_flow(path, flow, valid=None):
  """Writes a KITTI flow PNG; values are rounded to 1/64 px and clipped.

  Args:
    path: output path.
    flow: float [H, W, 2] in pixels; |u|, |v| must stay below 512.
    valid: optional bool [H, W]; all pixels are valid when omitted.
  """
  import tensorflow as tf

  flow = _check_flow(flow)
  if valid is None:
    valid = np.ones(flow.shape[:2], bool)
  valid = np.asarray(valid)
  if valid.shape != flow.shape[:2]:
    raise ValueError(
      f'valid must have shape {flow.shape[:2]}; got {valid.shape}.'
    )
  encoded = np.round(flow.astype(np.float64) * _KITTI_SCALE + _KITTI_OFFSET)
  raw = np.empty(flow.shape[:2] + (3,), np.uint16)
  raw[..., :2] = np.clip(encoded, 0, 2**16 - 1)
  raw[..., 2] = valid.astype(np.uint16)
  raw[~valid, :2] = 0
  with open(path, 'wb') as f:
    f.write(tf.io.encode_png(raw).numpy())


# --- NumPy ---


def read_npy_flow(path):
  """Reads a float [H, W, 2] flow from a `.npy` file."""
  return _check_flow(np.load(path, allow_pickle=False))


def write_npy_flow(path, flow):
  np.save(path, _check_flow(flow), allow_pickle=False)


def read_flow(path):
  """Reads a flow field by extension: `.flo`, `.npy` or a KITTI `.png`.

  Returns:
    (flow float32 [H, W, 2], valid bool [H, W]); every pixel of a `.flo` or
    `.npy` flow is valid unless it is NaN or absurdly large (the Middlebury
    convention for unknown flow is |u| or |v| > 1e9).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext == '.png':
    return read_kitti_flow(path)
  if ext == '.flo':
    flow = read_flo(path)
  elif ext == '.npy':
    flow = read_npy_flow(path)
  else:
    raise ValueError(f'{path}: unknown flow format {ext!r} (.flo, .npy, .png).')
  valid = np.all(np.isfinite(flow) & (np.abs(flow) < 1e9), axis=-1)
  return np.where(valid[..., None], flow, 0.0).astype(np.float32), valid


# --- Frames ---


def read_image(path):
  """Reads an image file (PNG, JPEG, PPM, ...) as uint8 [H, W, 3] RGB.

  Grey-scale images are repeated over the three channels and an alpha channel
  is dropped.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: if the file is not a readable image.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'No image at {path}.')
  try:
    with Image.open(path) as img:
      if img.mode in ('I;16', 'I;16B', 'I', 'F'):
        # 16-bit or float grey: scale into uint8 before repeating.
        arr = np.asarray(img, np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
      return np.asarray(img.convert('RGB'), np.uint8)
  except OSError as e:
    raise ValueError(f'{path}: not a readable image ({e}).') from e


def write_image(path, image):
  """Writes uint8 [H, W, 3] `image` (format from the extension, e.g. PNG)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(
      f'write_image expects uint8 [H, W, 3]; got {image.dtype} {image.shape}.'
    )
  Image.fromarray(image).save(path)
