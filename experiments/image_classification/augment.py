"""ImageNet preprocessing and augmentation as TensorFlow ops.

Every random op is *stateless*: it takes an explicit `seed` (an int32/int64
tensor of shape [2]) so that the data of a run depend only on the run's seed
and the example's position in the stream. That makes training restartable
at any step with identical batches. Ops work eagerly and inside tf.data.

The recipe is DeepMind's (perceiver/train/dataset.py and autoaugment.py):

  train: Inception crop (decoded from the JPEG crop window) -> random
    horizontal flip -> RandAugment (4 layers, magnitude 5, uint8, at the
    crop's own size) -> bicubic resize to 224 (not clamped) -> normalise
    with the ImageNet mean and std (in 0..255 units); then, per batch,
    MixUp (Beta(0.2, 0.2)) on the first half and CutMix on the second.
  eval: centre crop of side int(224 / (224 + 32) * min(H, W)) (0.875 of the
    short side), offsets ((H - side) + 1) // 2, decoded from the JPEG crop
    window -> bicubic resize to 224 -> normalise.

Shape letters: B batch, H height, W width, C channels (3).
"""

import math

import tensorflow as tf

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_PADDING = 32
# RandAugment's fill value for pixels moved in from outside the image.
FILL_VALUE = 128
MAX_LEVEL = 10.0
RANDAUGMENT_OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
)
_TRANSLATE_CONST = 100.0
_CUTOUT_CONST = 40.0


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """`num` independent seeds of shape [2] from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _image_shape(image):
  """[H, W, C] of a JPEG string or of a decoded uint8 image."""
  if image.dtype == tf.string:
    return tf.image.extract_jpeg_shape(image)
  return tf.shape(image)


def _crop(image, window):
  """Decodes only `window` = [top, left, height, width] of a JPEG, or crops."""
  if image.dtype == tf.string:
    return tf.image.decode_and_crop_jpeg(image, tf.stack(window), channels=3)
  return tf.image.crop_to_bounding_box(image, *window)


# --- Crops and flips ---


def center_crop(
  image: tf.Tensor, image_size: int = 224, crop_padding: int = CROP_PADDING
) -> tf.Tensor:
  """DeepMind's eval crop: a centred square of 224 / 256 of the short side.

  Args:
    image: a JPEG string or a uint8 [H, W, 3] image.
    image_size: the network's input side; the crop is `image_size /
      (image_size + crop_padding)` of the short side (truncated to int).
    crop_padding: see above.

  Returns:
    uint8 [s, s, 3], not yet resized.
  """
  shape = _image_shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(
    (image_size / (image_size + crop_padding))
    * tf.cast(tf.minimum(height, width), tf.float32),
    tf.int32,
  )
  top = ((height - side) + 1) // 2
  left = ((width - side) + 1) // 2
  return _crop(image, [top, left, side, side])


def inception_crop(
  image: tf.Tensor,
  seed: tf.Tensor,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
  min_object_covered: float = 0.1,
  max_attempts: int = 10,
) -> tf.Tensor:
  """Inception-style random crop; falls back to `center_crop` like DeepMind.

  Args:
    image: a JPEG string or a uint8 [H, W, 3] image.
    seed: int [2].
    area_range, aspect_ratio_range, min_object_covered, max_attempts: the
      `sample_distorted_bounding_box` settings (DeepMind's defaults).

  Returns:
    uint8 [h, w, 3], not yet resized.
  """
  shape = _image_shape(image)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=min_object_covered,
    aspect_ratio_range=aspect_ratio_range,
    area_range=area_range,
    max_attempts=max_attempts,
    use_image_if_no_bounding_boxes=True,
  )
  top, left, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  # Sampling failed when it returns the whole image: use the eval crop.
  failed = tf.reduce_all(tf.equal(shape[:2], size[:2]))
  return tf.cond(
    failed,
    lambda: center_crop(image),
    lambda: _crop(image, [top, left, height, width]),
  )


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Flips [H, W, C] left-right with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def resize_and_normalize(
  image: tf.Tensor, image_size: int | tuple[int, int] = 224
) -> tf.Tensor:
  """Bicubic resize (no antialias, no clamping) and mean/std normalisation.

  Args:
    image: uint8 or float [h, w, 3] in 0..255.
    image_size: output side or (H, W).

  Returns:
    float32 [H, W, 3], roughly zero mean and unit variance.
  """
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  image = tf.image.resize(
    image, image_size, method=tf.image.ResizeMethod.BICUBIC
  )
  return normalize(image)


def normalize(image: tf.Tensor) -> tf.Tensor:
  """(x - mean) / std with ImageNet's statistics in 0..255 units."""
  image = tf.cast(image, tf.float32)
  mean = tf.constant(MEAN_RGB, tf.float32, [1, 1, 3])
  std = tf.constant(STDDEV_RGB, tf.float32, [1, 1, 3])
  return (image - mean) / std


# --- RandAugment ops (uint8 [H, W, 3] in, uint8 out) ---


def _blend(image1, image2, factor):
  """image1 + factor * (image2 - image1), clipped, as uint8."""
  a = tf.cast(image1, tf.float32)
  b = tf.cast(image2, tf.float32)
  out = a + factor * (b - a)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _grayscale(image):
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def autocontrast(image):
  """Stretches each channel to span 0..255 (PIL's ImageOps.autocontrast)."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
  offset = tf.where(hi > lo, -lo * scale, 0.0)
  return tf.cast(tf.clip_by_value(x * scale + offset, 0.0, 255.0), tf.uint8)


def equalize(image):
  """Per-channel histogram equalisation (PIL's ImageOps.equalize)."""

  def channel(values):
    values = tf.cast(values, tf.int32)
    hist = tf.histogram_fixed_width(values, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(hist, hist > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.where(step > 0, tf.gather(lut, values), values)

  channels = [channel(image[:, :, c]) for c in range(3)]
  return tf.cast(tf.stack(channels, axis=2), tf.uint8)


def invert(image):
  return 255 - image


def posterize(image, bits):
  """Keeps the top `bits` bits of each value."""
  shift = tf.cast(8 - bits, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold=128):
  """Inverts values at or above `threshold`."""
  return tf.where(image < threshold, image, 255 - image)


def solarize_add(image, addition=0, threshold=128):
  """Adds `addition` (clipped) to values below `threshold`."""
  added = tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255)
  return tf.where(image < threshold, tf.cast(added, tf.uint8), image)


def color(image, factor):
  return _blend(_grayscale(image), image, factor)


def contrast(image, factor):
  """Blends with the grey level of the image's mean luminance."""
  gray = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
  hist = tf.histogram_fixed_width(gray, [0, 255], nbins=256)
  # DeepMind's (and TPU AutoAugment's) quirk: sums the histogram counts,
  # i.e. the pixel count / 256, not the mean grey level.
  mean = tf.reduce_sum(tf.cast(hist, tf.float32)) / 256.0
  degenerate = tf.fill(tf.shape(image), tf.clip_by_value(mean, 0.0, 255.0))
  return _blend(tf.cast(degenerate, tf.uint8), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends with PIL's SMOOTH-filtered image (borders kept)."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding='VALID')
  smooth = tf.cast(tf.clip_by_value(smooth[0], 0.0, 255.0), tf.uint8)
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inside = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inside > 0, padded, image)
  return _blend(degenerate, image, factor)


def _transform(image, matrix):
  """Projective transform (output -> input coords), nearest, fill 128."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=tf.cast(tf.reshape(matrix, [1, 8]), tf.float32),
    output_shape=shape[:2],
    fill_value=tf.constant(FILL_VALUE, tf.float32),
    interpolation='NEAREST',
    fill_mode='CONSTANT',
  )
  return out[0]


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the centre."""
  radians = degrees * math.pi / 180.0
  shape = tf.cast(tf.shape(image), tf.float32)
  h, w = shape[0] - 1, shape[1] - 1
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = (w - (cos * w - sin * h)) / 2.0
  y_offset = (h - (sin * w + cos * h)) / 2.0
  return _transform(
    image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
  )


def translate_x(image, pixels):
  """Moves the content left by `pixels` (PIL's convention)."""
  return _transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0, 0]))


def translate_y(image, pixels):
  return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0, 0]))


def shear_x(image, level):
  return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0, 0]))


def shear_y(image, level):
  return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0, 0]))


def cutout(image, pad_size, seed):
  """Fills a (2 pad_size)^2 square at a random centre with 128."""
  shape = tf.shape(image)
  cy_seed, cx_seed = split_seed(seed, 2)
  cy = tf.random.stateless_uniform([], cy_seed, 0, shape[0], tf.int32)
  cx = tf.random.stateless_uniform([], cx_seed, 0, shape[1], tf.int32)
  rows = tf.range(shape[0])[:, None]
  cols = tf.range(shape[1])[None, :]
  inside = (
    (rows >= cy - pad_size)
    & (rows < cy + pad_size)
    & (cols >= cx - pad_size)
    & (cols < cx + pad_size)
  )
  return tf.where(inside[:, :, None], tf.cast(FILL_VALUE, image.dtype), image)


def _random_sign(value, seed):
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.where(flip, -value, value)


def apply_op(
  image: tf.Tensor, name: str, magnitude: float, seed: tf.Tensor
) -> tf.Tensor:
  """Applies RandAugment op `name` at `magnitude` (0..10) to uint8 [H, W, 3].

  Magnitudes map to arguments as in DeepMind's autoaugment.py: rotate
  30 deg x m/10, shear 0.3 x m/10, translate 100 px x m/10 (random signs),
  posterize int(4 m/10) bits, solarize int(256 m/10), solarize-add int(110
  m/10), cutout int(40 m/10), enhance factors 1.8 m/10 + 0.1.
  """
  level = magnitude / MAX_LEVEL
  enhance = level * 1.8 + 0.1
  if name == 'AutoContrast':
    return autocontrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return invert(image)
  if name == 'Rotate':
    return rotate(image, _random_sign(level * 30.0, seed))
  if name == 'Posterize':
    return posterize(image, int(level * 4))
  if name == 'Solarize':
    return solarize(image, int(level * 256))
  if name == 'SolarizeAdd':
    return solarize_add(image, int(level * 110))
  if name == 'Color':
    return color(image, enhance)
  if name == 'Contrast':
    return contrast(image, enhance)
  if name == 'Brightness':
    return brightness(image, enhance)
  if name == 'Sharpness':
    return sharpness(image, enhance)
  if name == 'ShearX':
    return shear_x(image, _random_sign(level * 0.3, seed))
  if name == 'ShearY':
    return shear_y(image, _random_sign(level * 0.3, seed))
  if name == 'TranslateX':
    return translate_x(image, _random_sign(level * _TRANSLATE_CONST, seed))
  if name == 'TranslateY':
    return translate_y(image, _random_sign(level * _TRANSLATE_CONST, seed))
  if name == 'Cutout':
    return cutout(image, int(level * _CUTOUT_CONST), seed)
  raise ValueError(f'Unknown RandAugment op {name!r}; use {RANDAUGMENT_OPS}.')


def randaugment(
  image: tf.Tensor, num_layers: int, magnitude: float, seed: tf.Tensor
) -> tf.Tensor:
  """RandAugment: `num_layers` times, one op chosen uniformly from 16.

  Args:
    image: uint8 [H, W, 3].
    num_layers: ops applied in sequence (4 in the paper).
    magnitude: shared strength, 0..10 (5 in the paper).
    seed: int [2].

  Returns:
    uint8 [H, W, 3].
  """
  image = tf.convert_to_tensor(image)
  for layer_seed in split_seed(seed, num_layers):
    choice_seed, op_seed = split_seed(layer_seed, 2)
    choice = tf.random.stateless_uniform(
      [], choice_seed, 0, len(RANDAUGMENT_OPS), tf.int32
    )
    branches = [
      (lambda n=name, x=image, s=op_seed: apply_op(x, n, magnitude, s))
      for name in RANDAUGMENT_OPS
    ]
    image = tf.switch_case(choice, branches)
    image = tf.ensure_shape(image, [None, None, 3])
  return image


# --- MixUp and CutMix (on batches) ---


def sample_beta(seed: tf.Tensor, alpha: float, shape) -> tf.Tensor:
  """Beta(alpha, alpha) samples from two stateless gammas."""
  s1, s2 = split_seed(seed, 2)
  x = tf.random.stateless_gamma(shape, s1, alpha)
  y = tf.random.stateless_gamma(shape, s2, alpha)
  return x / tf.maximum(x + y, 1e-12)


def cutmix_mask(seed: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """A {0, 1} float [H, W, 1] mask with a 0 box of uniform random area.

  As in DeepMind's `cutmix_padding`: the box centre is uniform, its side
  ratio sqrt(1 - u) with u ~ U(0, 1), and it is clipped to the image.
  Ones mark the pixels kept from the first image.
  """
  sx, sy, su = split_seed(seed, 3)
  cx = tf.random.stateless_uniform([], sx, 0, width, tf.int32)
  cy = tf.random.stateless_uniform([], sy, 0, height, tf.int32)
  ratio = tf.sqrt(1.0 - tf.random.stateless_uniform([], su))
  half_w = tf.cast(ratio * width, tf.int32) // 2
  half_h = tf.cast(ratio * height, tf.int32) // 2
  x1, x2 = (
    tf.clip_by_value(cx - half_w, 0, width),
    tf.clip_by_value(cx + half_w, 0, width),
  )
  y1, y2 = (
    tf.clip_by_value(cy - half_h, 0, height),
    tf.clip_by_value(cy + half_h, 0, height),
  )
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
  return tf.cast(~box, tf.float32)[:, :, None]


def mixup_cutmix(
  batch: dict[str, tf.Tensor],
  seed: tf.Tensor,
  mixup_alpha: float | None = 0.2,
  cutmix: bool = True,
) -> dict[str, tf.Tensor]:
  """MixUp on the first half of a batch and CutMix on the second half.

  Each example is mixed with a partner from its own half (the half in
  reverse order), so one batch in gives one batch out. With only one of
  the two enabled it is applied to the whole batch.

  Args:
    batch: {'images': float [B, H, W, C], 'labels': int [B], ...}; B even.
    seed: int [2].
    mixup_alpha: Beta parameter of MixUp, or None for no MixUp.
    cutmix: whether to apply CutMix.

  Returns:
    The batch with mixed `images`, plus `mix_labels` int [B] (the partner's
    label) and `ratio` float [B], the weight of `labels` in the target
    `ratio * onehot(labels) + (1 - ratio) * onehot(mix_labels)`.
  """
  images, labels = batch['images'], batch['labels']
  size = images.shape[0]
  if size is None or size % 2:
    raise ValueError(f'mixup_cutmix needs an even, static batch; got {size}.')
  use_mixup = mixup_alpha is not None and mixup_alpha > 0
  if not use_mixup and not cutmix:
    return batch
  halves = 2 if use_mixup and cutmix else 1
  part = size // halves
  mix_seed, cut_seed = split_seed(seed, 2)
  out_images, mix_labels, ratios = [], [], []
  for h in range(halves):
    x = images[h * part : (h + 1) * part]
    y = labels[h * part : (h + 1) * part]
    x2, y2 = tf.reverse(x, [0]), tf.reverse(y, [0])
    if use_mixup and h == 0:
      ratio = sample_beta(mix_seed, mixup_alpha, [part])
      r = tf.cast(ratio[:, None, None, None], x.dtype)
      out_images.append(r * x + (1.0 - r) * x2)
    else:
      height, width = images.shape[1], images.shape[2]
      masks = tf.stack(
        [cutmix_mask(s, height, width) for s in split_seed(cut_seed, part)]
      )
      ratio = tf.reduce_mean(masks, axis=[1, 2, 3])
      m = tf.cast(masks, x.dtype)
      out_images.append(m * x + (1.0 - m) * x2)
    mix_labels.append(y2)
    ratios.append(ratio)
  out = dict(batch)
  out['images'] = tf.concat(out_images, 0)
  out['mix_labels'] = tf.concat(mix_labels, 0)
  out['ratio'] = tf.concat(ratios, 0)
  return out


# --- Whole-example preprocessing (dict -> dict) ---


def train_preprocess(
  example: dict[str, tf.Tensor],
  seed: tf.Tensor,
  image_size: int = 224,
  randaugment_layers: int = 4,
  randaugment_magnitude: float = 5.0,
) -> dict[str, tf.Tensor]:
  """{'image': JPEG or uint8, 'label'} -> {'images': float32, 'labels'}."""
  crop_seed, flip_seed, ra_seed = split_seed(seed, 3)
  image = inception_crop(example['image'], crop_seed)
  image = random_flip(image, flip_seed)
  if randaugment_layers:
    image = randaugment(
      image, randaugment_layers, randaugment_magnitude, ra_seed
    )
  image = resize_and_normalize(image, image_size)
  return {'images': image, 'labels': tf.cast(example['label'], tf.int32)}


def eval_preprocess(
  example: dict[str, tf.Tensor], image_size: int = 224
) -> dict[str, tf.Tensor]:
  """{'image': JPEG or uint8, 'label'} -> {'images': float32, 'labels'}."""
  image = center_crop(example['image'], image_size)
  image = resize_and_normalize(image, image_size)
  return {'images': image, 'labels': tf.cast(example['label'], tf.int32)}
