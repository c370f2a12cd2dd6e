"""The multimodal autoencoder: video, audio and a maskable label in and out.

The released architecture (`perceiver_io.models.VIDEO_AUTOENCODING`) built
from the library's modules with the same parameter names, plus what training
needs and the released forward function lacks:

- the label goes in (one-hot), and a per-example `label_mask` says where it
  is replaced by the learned `label_mask_token` (the paper masks it on 50% of
  training examples and always at evaluation);
- output points may differ per example (`image_points` int[B, n]): each
  example is then run on its own (`jax.vmap`), decoding its own subset;
- `image_points=None` decodes every point: the latents are computed once and
  the queries are decoded in `num_decode_chunks` chunks (`hk.scan`), so the
  [B, T*H*W, C] query array is never built whole;
- each image query may decode a patch of pixels (`config.image_output_patch`
  (t, h, w), default (1, 1, 1) as released): the queries are then the points
  of the [T/t, H/h, W/w] patch grid, and the image postprocessor gives the
  3*t*h*w values of a patch, so a query supervises t*h*w pixels for the
  cost of one.

Shape letters: B batch, T frames, H height, W width, A audio samples, P
samples per audio patch, K classes, n image queries (patch-grid points), Q
pixels per image query, m audio patches.
"""

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_io import decoders
from perceiver_io import encoder as encoder_lib
from perceiver_io import models
from perceiver_io import position_encoding
from perceiver_io import postprocessors
from perceiver_io import preprocessors

MODALITIES = ('audio', 'image', 'label')


class MaskedMultimodalPreprocessor(hk.Module):
  """`preprocessors.MultimodalPreprocessor` with explicit per-example masks.

  Same parameters (`multimodal_preprocessor/{modality}_padding` and
  `{modality}_mask_token` for every modality in `mask_probs`), but the label
  is replaced by its mask token where the caller's `label_mask` is 1, not at
  random. Image and audio mask probabilities must be 0 (as released).
  """

  def __init__(self, modalities, mask_probs, min_padding_size: int = 2):
    super().__init__(name='multimodal_preprocessor')
    for modality, prob in (mask_probs or {}).items():
      if modality != 'label' and prob:
        raise ValueError(
          f'config.model.input_preprocessor.mask_probs.{modality}={prob}: '
          'only the label can be masked in this task (give 0).'
        )
    self._modalities = modalities
    self._mask_probs = dict(mask_probs or {})
    self._min_padding_size = min_padding_size

  def __call__(self, inputs, label_mask, *, is_training):
    """Modality inputs and [B] label mask -> ([B, M, C], sizes, raw inputs)."""
    outputs, raw = {}, {}
    for modality, preprocessor in self._modalities.items():
      outputs[modality], _, raw[modality] = preprocessor(
        inputs[modality], is_training=is_training
      )
    width = max(o.shape[2] for o in outputs.values()) + self._min_padding_size
    padded, sizes = {}, {}
    for modality, output in outputs.items():
      batch, size, channels = output.shape
      padding = position_encoding.TrainablePositionEncoding(
        1,
        num_channels=width - channels,
        init_scale=0.02,
        name=f'{modality}_padding',
      )(batch_size=batch)
      padding = jnp.broadcast_to(padding, (batch, size, width - channels))
      output = jnp.concatenate([output, padding], axis=2)  # [B, size, C]
      if modality in self._mask_probs:
        token = position_encoding.TrainablePositionEncoding(
          1,
          num_channels=width,
          init_scale=0.02,
          name=f'{modality}_mask_token',
        )(batch_size=batch)
        if modality == 'label':
          mask = label_mask.astype(output.dtype)[:, None, None]  # [B, 1, 1]
          output = (1 - mask) * output + mask * token
      padded[modality] = output
      sizes[modality] = size
    ordered = [padded[m] for m in sorted(padded)]
    return jnp.concatenate(ordered, axis=1), sizes, raw


def image_patch(model_config) -> tuple[int, int, int]:
  """The (t, h, w) pixels each image query decodes ((1, 1, 1) as released)."""
  patch = tuple(
    int(x) for x in model_config.get('image_output_patch', (1,) * 3)
  )
  if len(patch) != 3 or min(patch) < 1:
    raise ValueError(
      f'config.model.image_output_patch={patch} must be 3 positive sizes '
      '(frames, height, width).'
    )
  return patch


def patch_grid(video_shape, patch) -> tuple[int, int, int]:
  """The [T/t, H/h, W/w] grid of image queries of a [T, H, W] video.

  Raises:
    ValueError: when the output patch does not divide the video.
  """
  size = tuple(int(n) for n in video_shape)
  if any(n % p for n, p in zip(size, patch, strict=True)):
    raise ValueError(
      f'config.model.image_output_patch={patch} does not divide the video '
      f'[frames, height, width]={list(size)}.'
    )
  return tuple(n // p for n, p in zip(size, patch, strict=True))


def patchify(images, patch):
  """[B, T, H, W, 3] -> [B, n, Q, 3]: the pixels of each output patch, the
  patches in raster order of the patch grid, the pixels in raster order
  within a patch."""
  B, T, H, W, C = images.shape
  t, h, w = patch
  x = images.reshape(B, T // t, t, H // h, h, W // w, w, C)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(B, (T // t) * (H // h) * (W // w), t * h * w, C)


def unpatchify(patches, video_shape, patch):
  """`patchify`'s inverse: [B, n, Q, 3] -> [B, T*H*W, 3] (raster order)."""
  T, H, W = video_shape
  t, h, w = patch
  B, C = patches.shape[0], patches.shape[-1]
  x = patches.reshape(B, T // t, H // h, W // w, t, h, w, C)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(B, T * H * W, C)


def _chunk_points(total: int, num_chunks: int) -> np.ndarray:
  """int[num_chunks, ceil(total / num_chunks)] indices 0..total-1, padded
  with the last index (the padded outputs are dropped again)."""
  size = -(-total // num_chunks)
  points = np.minimum(np.arange(num_chunks * size), total - 1)
  return points.reshape(num_chunks, size).astype(np.int32)


def _forward(
  config,
  runtime,
  images,
  audio,
  label,
  label_mask,
  image_points=None,
  audio_points=None,
  *,
  is_training,
  num_decode_chunks=1,
):
  """Autoencodes a batch.

  Args:
    config: the resolved `video_autoencoding` model config.
    runtime: `runtime.Runtime` of every layer.
    images: [B, T, H, W, 3].
    audio: [B, A, 1].
    label: [B, K] one-hot (any values where masked).
    label_mask: [B], 1 where the label input is replaced by the mask token.
    image_points: int[n] flat indices into the [T/t, H/h, W/w] grid of
      output patches (`patch_grid`; [T, H, W] pixels when the patch is
      1x1x1), or None for all.
    audio_points: int[m] audio patch indices; None exactly when
      `image_points` is None.
    is_training: enables dropout.
    num_decode_chunks: chunks of the full decoding (points None).

  Returns:
    {'image': [B, n * Q, 3], 'audio': [B, m * P], 'label': [B, K]}: the
    image as the pixels of each decoded patch in turn (`patchify` order);
    when decoding everything, the image is [B, T*H*W, 3] in raster order
    and m = A / P.
  """
  if images.ndim != 5:
    raise ValueError(f'images must be [B, T, H, W, 3]; got {images.shape}.')
  if (image_points is None) != (audio_points is None):
    raise ValueError('Give both image_points and audio_points, or neither.')
  per_patch = config.audio_preprocessor.samples_per_patch
  num_patches = audio.shape[1] // per_patch
  patch = image_patch(config)
  grid = patch_grid(images.shape[1:4], patch)
  pixels_per_query = int(np.prod(patch))
  preprocessor = MaskedMultimodalPreprocessor(
    modalities={
      'audio': models._construct(  # pylint: disable=protected-access
        preprocessors.AudioPreprocessor, config, 'audio_preprocessor'
      ),
      'image': models._construct(  # pylint: disable=protected-access
        preprocessors.ImagePreprocessor, config, 'image_preprocessor'
      ),
      'label': preprocessors.OneHotPreprocessor(),
    },
    **config.input_preprocessor.to_dict(),
  )
  postprocessor = postprocessors.MultimodalPostprocessor(
    modalities={
      'audio': postprocessors.AudioPostprocessor(samples_per_patch=per_patch),
      'image': postprocessors.ProjectionPostprocessor(
        num_outputs=3 * pixels_per_query
      ),
      'label': postprocessors.ClassificationPostprocessor(
        num_classes=config.num_classes
      ),
    }
  )
  construct = functools.partial(models._construct, config=config)  # pylint: disable=protected-access
  encoder = construct(
    encoder_lib.PerceiverEncoder, section='encoder', runtime=runtime
  )
  decoder = decoders.MultimodalDecoder(
    modalities={
      'audio': construct(
        decoders.BasicDecoder,
        section='audio_decoder',
        output_index_dims=(num_patches,),
        runtime=runtime,
      ),
      'image': construct(
        decoders.BasicVideoAutoencodingDecoder,
        section='image_decoder',
        output_shape=(images.shape[0], *grid),
        runtime=runtime,
      ),
      'label': construct(
        decoders.ClassificationDecoder,
        section='label_decoder',
        num_classes=config.num_classes,
        runtime=runtime,
      ),
    },
    num_outputs=None,
    runtime=runtime,
    **config.decoder.to_dict(),
  )

  # --- Encode once ---
  inputs, sizes, raw = preprocessor(
    {'image': images, 'audio': audio, 'label': label},
    label_mask,
    is_training=is_training,
  )  # [B, M, C]
  z = encoder(inputs, encoder.latents(inputs), is_training=is_training)

  def decode(image_pts, audio_pts):
    points = {'image': image_pts, 'audio': audio_pts, 'label': None}
    query = decoder.decoder_query(inputs, sizes, raw, subsampled_points=points)
    out = decoder(query, z, is_training=is_training)  # [B, n + m + 1, C']
    outputs = postprocessor(
      out,
      is_training=is_training,
      modality_sizes={
        'audio': audio_pts.shape[0],
        'image': image_pts.shape[0],
        'label': 1,
      },
    )
    image = outputs['image']  # [B, n, 3 * Q]
    outputs['image'] = image.reshape(image.shape[0], -1, 3)  # [B, n * Q, 3]
    return outputs

  if image_points is not None:
    return decode(image_points, audio_points)

  # --- Decode every point, in chunks ---
  num_queries = int(np.prod(grid))
  chunks = (
    _chunk_points(num_queries, num_decode_chunks),
    _chunk_points(num_patches, num_decode_chunks),
  )

  def whole_image(image):  # [B, num_queries * Q, 3] -> [B, T*H*W, 3]
    image = image.reshape(image.shape[0], num_queries, pixels_per_query, 3)
    return unpatchify(image, images.shape[1:4], patch)

  if num_decode_chunks == 1:
    outs = decode(*(jnp.asarray(c[0]) for c in chunks))
    return {**outs, 'image': whole_image(outs['image'])}

  def step(carry, pts):
    return carry, decode(*pts)

  _, outs = hk.scan(step, None, tuple(jnp.asarray(c) for c in chunks))

  def join(x, total):  # [chunks, B, size, ...] -> [B, total, ...]
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :total]

  return {
    'image': whole_image(join(outs['image'], num_queries * pixels_per_query)),
    'audio': join(outs['audio'], num_patches * per_patch),
    'label': outs['label'][0],
  }


@dataclasses.dataclass(frozen=True)
class Model:
  """Pure `init`/`apply` of the multimodal autoencoder (see the module doc).

  `apply(params, state, rng, *, is_training, images, audio, label,
  label_mask, image_points=None, audio_points=None)`: points of shape [n]
  are shared by the batch, [B, n] are per example, None decode all.
  """

  config: ml_collections.ConfigDict
  num_decode_chunks: int = 1

  @functools.cached_property
  def transformed(self):
    config, _ = models.resolve_sizes(models.VIDEO_AUTOENCODING, self.config)
    runtime = models.runtime_of(config)

    def forward_fn(*, is_training, **inputs):
      outputs = _forward(
        config,
        runtime,
        is_training=is_training,
        num_decode_chunks=self.num_decode_chunks,
        **inputs,
      )
      return jax.tree.map(lambda x: x.astype(jnp.float32), outputs)

    return hk.transform_with_state(forward_fn)

  def init(self, rng, *, is_training=False, **inputs):
    inputs = _shared_points(inputs)
    return self.transformed.init(rng, is_training=is_training, **inputs)

  def apply(self, params, state, rng, *, is_training=False, **inputs):
    points = inputs.get('image_points')
    if points is None or points.ndim == 1:
      return self.transformed.apply(
        params, state, rng, is_training=is_training, **inputs
      )

    # Per-example points: run each example (as a batch of one) on its own.
    def one(example):
      example = {k: v[None] for k, v in example.items()}
      example['image_points'] = example['image_points'][0]
      example['audio_points'] = example['audio_points'][0]
      outputs, _ = self.transformed.apply(
        params, state, rng, is_training=is_training, **example
      )
      return jax.tree.map(lambda x: x[0], outputs)

    return jax.vmap(one)(dict(inputs)), state


def _shared_points(inputs):
  """Per-example [B, n] points -> the first example's [n] (for init)."""
  inputs = dict(inputs)
  for key in ('image_points', 'audio_points'):
    if inputs.get(key) is not None and np.ndim(inputs[key]) == 2:
      inputs[key] = inputs[key][0]
  return inputs


def build_model(
  model_config: ml_collections.ConfigDict, num_decode_chunks: int = 1
) -> Model:
  """The autoencoder at `model_config` (a `video_autoencoding` config)."""
  models.runtime_of(model_config)  # Checks the runtime section now.
  return Model(config=model_config, num_decode_chunks=num_decode_chunks)
