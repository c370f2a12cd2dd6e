"""The six released Perceiver IO architectures, as configs and pure functions.

Shape letters: B batch, S sequence length, H height, W width, T frames,
V vocabulary, K classes, A audio samples.

`get_config(name)` returns an `ml_collections.ConfigDict` with the sizes of
DeepMind's released checkpoint. Its sections are constructor kwargs
(`config.encoder` is `PerceiverEncoder(**config.encoder)`), so any size can be
changed, except `config.runtime`: how the model runs (attention
implementation, compute dtype, grid inputs, scan, remat, chunk sizes; see
`runtime.py`), set once for every layer. `build(name, config)` returns a
`Model` holding the pure `init` and `apply` functions of
`hk.transform_with_state`.
"""

import dataclasses
import functools
import types
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_io import decoders
from perceiver_io import encoder as encoder_lib
from perceiver_io import patching
from perceiver_io import perceiver
from perceiver_io import postprocessors
from perceiver_io import preprocessors
from perceiver_io import runtime as runtime_lib

LANGUAGE = 'language_perceiver_io_bytes'
IMAGENET_FOURIER = 'imagenet_fourier_position_encoding'
IMAGENET_LEARNED = 'imagenet_learned_position_encoding'
IMAGENET_CONV = 'imagenet_conv_preprocessing'
OPTICAL_FLOW = 'optical_flow'
VIDEO_AUTOENCODING = 'video_autoencoding'
ARCHITECTURES = (
  LANGUAGE,
  IMAGENET_FOURIER,
  IMAGENET_LEARNED,
  IMAGENET_CONV,
  OPTICAL_FLOW,
  VIDEO_AUTOENCODING,
)
IMAGENET_ARCHITECTURES = (IMAGENET_FOURIER, IMAGENET_LEARNED, IMAGENET_CONV)

# The input names each architecture's model takes, besides `is_training`.
INPUT_NAMES = types.MappingProxyType(
  {
    LANGUAGE: ('inputs', 'input_mask'),
    IMAGENET_FOURIER: ('images',),
    IMAGENET_LEARNED: ('images',),
    IMAGENET_CONV: ('images',),
    OPTICAL_FLOW: ('frames',),
    VIDEO_AUTOENCODING: ('images', 'audio', 'image_points', 'audio_points'),
  }
)


# --- Configs -----------------------------------------------------------------


def _fourier(num_bands):
  # max_resolution None: derived from the model's sizes (`resolve_sizes`).
  return dict(
    num_bands=num_bands,
    max_resolution=None,
    sine_only=False,
    concat_pos=True,
  )


def _encoder(**overrides):
  """PerceiverEncoder kwargs, DeepMind's defaults with `overrides`."""
  kwargs = dict(
    num_self_attends_per_block=6,
    num_blocks=8,
    z_index_dim=512,
    num_z_channels=1024,
    qk_channels=None,
    v_channels=None,
    num_cross_attend_heads=1,
    num_self_attend_heads=8,
    cross_attend_widening_factor=1,
    self_attend_widening_factor=1,
    dropout_prob=0.0,
    dropout_attn_prob=0.0,
    z_pos_enc_init_scale=0.02,
    cross_attention_shape_for_attn='kv',
    use_query_residual=True,
  )
  kwargs.update(overrides)
  return kwargs


def _language_config():
  return dict(
    vocab_size=262,
    d_model=768,
    max_seq_len=2048,
    encoder=_encoder(
      num_self_attends_per_block=26,
      num_blocks=1,
      z_index_dim=256,
      num_z_channels=1280,
      num_cross_attend_heads=8,
      num_self_attend_heads=8,
      qk_channels=256,
      v_channels=1280,
    ),
    decoder=dict(
      num_heads=8,
      qk_channels=256,
      use_query_residual=False,
    ),
  )


def _imagenet_decoder(use_query_residual):
  return dict(
    num_classes=1000,
    num_z_channels=1024,
    position_encoding_type='trainable',
    trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=1024),
    use_query_residual=use_query_residual,
  )


def _imagenet_config(name):
  if name == IMAGENET_FOURIER:
    preprocessor = dict(
      prep_type='pixels',
      spatial_downsample=1,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(64),
    )
    decoder = _imagenet_decoder(use_query_residual=True)
  elif name == IMAGENET_LEARNED:
    preprocessor = dict(
      prep_type='conv1x1',
      spatial_downsample=1,
      num_channels=256,
      position_encoding_type='trainable',
      project_pos_dim=256,
      trainable_position_encoding_kwargs=dict(
        init_scale=0.02, num_channels=256
      ),
      concat_or_add_pos='concat',
    )
    decoder = _imagenet_decoder(use_query_residual=False)
  else:
    preprocessor = dict(
      prep_type='conv',
      spatial_downsample=4,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(64),
    )
    decoder = _imagenet_decoder(use_query_residual=True)
  return dict(
    image_size=(224, 224),
    input_preprocessor=preprocessor,
    encoder=_encoder(),
    decoder=decoder,
  )


def _flow_config():
  return dict(
    train_size=(368, 496),
    flow_scale_factor=20.0,
    input_preprocessor=dict(
      prep_type='patches',
      spatial_downsample=1,
      temporal_downsample=2,
      conv_after_patching=True,
      num_channels=64,
      n_extra_pos_mlp=0,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(64),
    ),
    encoder=_encoder(
      num_self_attends_per_block=24,
      num_blocks=1,
      z_index_dim=2048,
      num_z_channels=512,
      num_self_attend_heads=16,
    ),
    decoder=dict(
      rescale_factor=100.0,
      use_query_residual=False,
      output_num_channels=2,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(64),
    ),
  )


def _video_config():
  return dict(
    num_frames=16,
    image_size=(224, 224),
    audio_samples=30720,
    num_classes=700,
    input_preprocessor=dict(
      min_padding_size=4, mask_probs=dict(image=0.0, audio=0.0, label=1.0)
    ),
    image_preprocessor=dict(
      prep_type='patches',
      spatial_downsample=4,
      temporal_downsample=1,
      n_extra_pos_mlp=0,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(32),
    ),
    audio_preprocessor=dict(
      prep_type='patches',
      samples_per_patch=16,
      n_extra_pos_mlp=0,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(192),
    ),
    encoder=_encoder(
      num_self_attends_per_block=8,
      num_blocks=1,
      z_index_dim=28 * 28,
      num_z_channels=512,
      name='encoder',
    ),
    decoder=dict(
      output_num_channels=512,
      use_query_residual=False,
      min_padding_size=2,
    ),
    image_decoder=dict(
      output_num_channels=512,
      use_query_residual=False,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(32),
    ),
    audio_decoder=dict(
      output_num_channels=512,
      use_query_residual=False,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=_fourier(192),
    ),
    label_decoder=dict(
      use_query_residual=False,
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(
        num_channels=1024, init_scale=0.02
      ),
    ),
  )


def get_config(name: str) -> ml_collections.ConfigDict:
  """The config of a released architecture, at the released sizes."""
  _check_name(name)
  if name == LANGUAGE:
    config = _language_config()
  elif name in IMAGENET_ARCHITECTURES:
    config = _imagenet_config(name)
  elif name == OPTICAL_FLOW:
    config = _flow_config()
  else:
    config = _video_config()
  config['runtime'] = runtime_lib.config()
  return ml_collections.ConfigDict(config)


def _set_derived(config, section, resolution, derived):
  """Fills `section`'s Fourier `max_resolution` with `resolution` if None."""
  if section not in config:
    return
  kwargs = config[section].get('fourier_position_encoding_kwargs')
  if config[section].get('position_encoding_type', 'fourier') != 'fourier':
    return
  if kwargs is None or kwargs.get('max_resolution') is not None:
    return
  kwargs.max_resolution = tuple(int(r) for r in resolution)
  derived[f'{section}.fourier_position_encoding_kwargs.max_resolution'] = (
    kwargs.max_resolution
  )


def _grid(size, downsample, field):
  """`size` // `downsample`, per axis; an error names `field` if inexact."""
  grid = []
  for n in size:
    if int(n) % downsample:
      raise ValueError(
        f'config.{field}={tuple(size)} is not divisible by the '
        f"preprocessor's downsampling factor {downsample}."
      )
    grid.append(int(n) // downsample)
  return tuple(grid)


def resolve_sizes(
  name: str, config: ml_collections.ConfigDict
) -> tuple[ml_collections.ConfigDict, dict[str, tuple[int, ...]]]:
  """Fills the sizes that follow from others, in a copy of `config`.

  A Fourier `max_resolution` of None (the default of every architecture's
  config) sets the top frequency of each axis by the grid it encodes: the
  image (`image_size`, over the preprocessor's `spatial_downsample`), the
  flow frames (`train_size`), the video's patch grid and the audio samples.
  So changing `image_size` or `train_size` alone changes the frequency scale
  with it. An explicit value is kept as it is (a model trained at one size
  and run at another keeps its frequencies).

  Args:
    name: an architecture of `ARCHITECTURES`.
    config: its config; not modified.

  Returns:
    (the resolved copy, {'section.field...max_resolution': value} of each
    value that was derived).
  """
  _check_name(name)
  config = ml_collections.ConfigDict(config.to_dict())
  derived = {}
  if name in IMAGENET_ARCHITECTURES:
    prep = config.input_preprocessor
    factor = int(prep.get('spatial_downsample', 1) or 1)
    _set_derived(
      config,
      'input_preprocessor',
      _grid(config.image_size, factor, 'image_size'),
      derived,
    )
  elif name == OPTICAL_FLOW:
    for section in ('input_preprocessor', 'decoder'):
      _set_derived(config, section, config.train_size, derived)
  elif name == VIDEO_AUTOENCODING:
    prep = config.image_preprocessor
    frames = _grid(
      (config.num_frames,), int(prep.temporal_downsample), 'num_frames'
    )
    image = _grid(config.image_size, int(prep.spatial_downsample), 'image_size')
    for section in ('image_preprocessor', 'image_decoder'):
      _set_derived(config, section, frames + image, derived)
    for section in ('audio_preprocessor', 'audio_decoder'):
      _set_derived(config, section, (config.audio_samples,), derived)
  return config, derived


def runtime_of(config: ml_collections.ConfigDict) -> runtime_lib.Runtime:
  """The `Runtime` of `config.runtime`, checking that no section sets one.

  Raises:
    ValueError: on an unknown or bad runtime field, or on a runtime field
      in another section (where earlier versions kept them), naming it.
  """
  for section, value in config.items():
    if section == 'runtime' or not hasattr(value, 'keys'):
      continue
    misplaced = sorted(set(value.keys()) & set(runtime_lib.FIELDS))
    if misplaced:
      raise ValueError(
        f'config.{section}.{misplaced[0]}: how a model runs is set once for '
        f'all its layers, in config.runtime.{misplaced[0]}.'
      )
  return runtime_lib.from_config(config.get('runtime'))


def _to_float32(x):
  if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x


def _check_name(name):
  if name not in ARCHITECTURES:
    raise ValueError(
      f'Unknown architecture {name!r}; expected one of {ARCHITECTURES}.'
    )


# --- Forward functions -------------------------------------------------------


def _kwargs(config, section):
  """A config section as plain kwargs (ConfigDicts become dicts)."""
  value = config[section]
  return value.to_dict() if hasattr(value, 'to_dict') else dict(value)


def _construct(cls, config, section, **extra):
  """Builds `cls(**config[section], **extra)`, naming the section on error."""
  kwargs = _kwargs(config, section)
  kwargs.update(extra)
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(
      f'config.{section} does not fit {cls.__name__}: {e}'
    ) from e


def _language_forward(config, runtime, inputs, input_mask, *, is_training):
  """int32[B, S] bytes and [B, S] mask -> [B, S, V] logits."""
  if input_mask.shape != inputs.shape:
    raise ValueError(
      f'input_mask {input_mask.shape} must match inputs {inputs.shape}.'
    )
  prep = preprocessors.BytesPreprocessor(
    vocab_size=config.vocab_size,
    d_model=config.d_model,
    max_seq_len=config.max_seq_len,
  )
  encoder = _construct(
    encoder_lib.PerceiverEncoder, config, 'encoder', runtime=runtime
  )
  decoder = _construct(
    decoders.BasicDecoder,
    config,
    'decoder',
    output_num_channels=config.d_model,
    position_encoding_type='trainable',
    output_index_dims=config.max_seq_len,
    v_channels=config.d_model,
    final_project=False,
    trainable_position_encoding_kwargs=dict(num_channels=config.d_model),
    runtime=runtime,
  )
  embedded, _, _ = prep(inputs, is_training=is_training)  # [B, S, d_model]
  seq_len = inputs.shape[1]
  # Shorter sequences use the first S rows of the output query table.
  points = None if seq_len == config.max_seq_len else jnp.arange(seq_len)
  outputs = perceiver.Perceiver(encoder=encoder, decoder=decoder)(
    embedded,
    is_training=is_training,
    input_mask=input_mask,
    query_mask=input_mask,
    subsampled_output_points=points,
  )
  return postprocessors.EmbeddingDecoder(prep.embeddings)(outputs)


def _imagenet_forward(config, runtime, images, *, is_training):
  """float32[B, H, W, C] images -> [B, K] logits."""
  model = perceiver.Perceiver(
    input_preprocessor=_construct(
      preprocessors.ImagePreprocessor,
      config,
      'input_preprocessor',
      grid_inputs=runtime.grid_inputs,
    ),
    encoder=_construct(
      encoder_lib.PerceiverEncoder, config, 'encoder', runtime=runtime
    ),
    decoder=_construct(
      decoders.ClassificationDecoder, config, 'decoder', runtime=runtime
    ),
  )
  return model(images, is_training=is_training)


def _flow_forward(config, runtime, frames, *, is_training):
  """float32[B, 2, H, W, 3] frames in [-1, 1] -> [B, H, W, 2] pixel flow."""
  if frames.ndim != 5 or frames.shape[1] != 2:
    raise ValueError(f'frames must be [B, 2, H, W, C]; got {frames.shape}.')
  if tuple(frames.shape[2:4]) != tuple(config.train_size):
    raise ValueError(
      f'This flow model takes {tuple(config.train_size)} frames; got '
      f'{tuple(frames.shape[2:4])}. Use perceiver_io.flow_tiling for other '
      'sizes, or set config.train_size.'
    )
  model = perceiver.Perceiver(
    input_preprocessor=_construct(
      preprocessors.ImagePreprocessor,
      config,
      'input_preprocessor',
      grid_inputs=runtime.grid_inputs,
    ),
    encoder=_construct(
      encoder_lib.PerceiverEncoder, config, 'encoder', runtime=runtime
    ),
    decoder=_construct(
      decoders.FlowDecoder,
      config,
      'decoder',
      output_image_shape=tuple(config.train_size),
      output_w_init=jnp.zeros,
      runtime=runtime,
    ),
  )
  flow = model(patching.patches_for_flow(frames), is_training=is_training)
  return flow * config.flow_scale_factor


def _video_forward(
  config,
  runtime,
  images,
  audio,
  image_points=None,
  audio_points=None,
  *,
  is_training,
):
  """Autoencodes video, audio and a (masked) label.

  Args:
    config: the video autoencoding config.
    runtime: how every layer runs (`runtime.Runtime`).
    images: [B, T, H, W, 3].
    audio: [B, A, 1].
    image_points: int[n] flat indices into the [T, H, W] grid, or None.
    audio_points: int[m] flat indices of audio patches, or None.
    is_training: enables dropout.

  Returns:
    {'image': [B, n, 3], 'audio': [B, m * samples_per_patch],
     'label': [B, K]}.
  """
  if images.ndim != 5:
    raise ValueError(f'images must be [B, T, H, W, C]; got {images.shape}.')
  batch = images.shape[0]
  samples_per_patch = config.audio_preprocessor.samples_per_patch
  num_audio_patches = int(np.prod(audio.shape[1:])) // samples_per_patch
  sizes = {
    'image': (
      int(np.prod(images.shape[1:4]))
      if image_points is None
      else image_points.shape[0]
    ),
    'audio': (
      num_audio_patches if audio_points is None else audio_points.shape[0]
    ),
    'label': 1,
  }
  input_preprocessor = preprocessors.MultimodalPreprocessor(
    modalities={
      'audio': _construct(
        preprocessors.AudioPreprocessor, config, 'audio_preprocessor'
      ),
      'image': _construct(
        preprocessors.ImagePreprocessor, config, 'image_preprocessor'
      ),
      'label': preprocessors.OneHotPreprocessor(),
    },
    **_kwargs(config, 'input_preprocessor'),
  )
  output_postprocessor = postprocessors.MultimodalPostprocessor(
    modalities={
      'audio': postprocessors.AudioPostprocessor(
        samples_per_patch=samples_per_patch
      ),
      'image': postprocessors.ProjectionPostprocessor(num_outputs=3),
      'label': postprocessors.ClassificationPostprocessor(
        num_classes=config.num_classes
      ),
    }
  )
  encoder = _construct(
    encoder_lib.PerceiverEncoder, config, 'encoder', runtime=runtime
  )
  decoder = decoders.MultimodalDecoder(
    modalities={
      'audio': _construct(
        decoders.BasicDecoder,
        config,
        'audio_decoder',
        output_index_dims=(num_audio_patches,),
        runtime=runtime,
      ),
      'image': _construct(
        decoders.BasicVideoAutoencodingDecoder,
        config,
        'image_decoder',
        output_shape=tuple(images.shape[:4]),
        runtime=runtime,
      ),
      'label': _construct(
        decoders.ClassificationDecoder,
        config,
        'label_decoder',
        num_classes=config.num_classes,
        runtime=runtime,
      ),
    },
    num_outputs=None,
    subsampled_index_dims=sizes,
    runtime=runtime,
    **_kwargs(config, 'decoder'),
  )
  model = perceiver.Perceiver(
    input_preprocessor=input_preprocessor,
    encoder=encoder,
    decoder=decoder,
    output_postprocessor=output_postprocessor,
  )
  inputs = {
    'image': images,
    'audio': audio,
    'label': jnp.zeros((batch, config.num_classes), images.dtype),
  }
  points = {'image': image_points, 'audio': audio_points, 'label': None}
  return model(inputs, is_training=is_training, subsampled_output_points=points)


_FORWARD = types.MappingProxyType(
  {
    LANGUAGE: _language_forward,
    IMAGENET_FOURIER: _imagenet_forward,
    IMAGENET_LEARNED: _imagenet_forward,
    IMAGENET_CONV: _imagenet_forward,
    OPTICAL_FLOW: _flow_forward,
    VIDEO_AUTOENCODING: _video_forward,
  }
)


# --- Models ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
  """The pure functions of one architecture at one config.

  `init(rng, *, is_training=False, **inputs) -> (params, state)` and
  `apply(params, state, rng, *, is_training=False, **inputs) ->
  (outputs, state)`. `rng` may be None when nothing is random (no dropout).
  """

  name: str
  config: ml_collections.ConfigDict
  transformed: hk.TransformedWithState
  input_names: tuple[str, ...]

  def _check_inputs(self, inputs):
    unknown = set(inputs) - set(self.input_names)
    if unknown:
      raise ValueError(
        f'{self.name} takes inputs {self.input_names}; got unknown '
        f'{sorted(unknown)}.'
      )

  @functools.cached_property
  def _jitted_init(self):
    return jax.jit(self.transformed.init, static_argnames='is_training')

  def init(self, rng, *, is_training=False, **inputs):
    """-> (params, state). Compiled: only the initialisers run, not the
    forward pass that Haiku traces to find the parameters."""
    self._check_inputs(inputs)
    return self._jitted_init(rng, is_training=is_training, **inputs)

  def apply(self, params, state, rng, *, is_training=False, **inputs):
    self._check_inputs(inputs)
    return self.transformed.apply(
      params, state, rng, is_training=is_training, **inputs
    )


def build_forward_fn(name: str, config=None) -> Callable:
  """The un-transformed forward function `fn(*, is_training, **inputs)`."""
  _check_name(name)
  config = get_config(name) if config is None else config
  config, _ = resolve_sizes(name, config)
  runtime = runtime_of(config)
  forward = _FORWARD[name]

  def forward_fn(*, is_training, **inputs):
    outputs = forward(config, runtime, is_training=is_training, **inputs)
    return jax.tree.map(_to_float32, outputs)

  return forward_fn


def build(name: str, config=None) -> Model:
  """Builds the pure `init`/`apply` of architecture `name` at `config`."""
  _check_name(name)
  config = get_config(name) if config is None else config
  transformed = hk.transform_with_state(build_forward_fn(name, config))
  return Model(
    name=name,
    config=config,
    transformed=transformed,
    input_names=INPUT_NAMES[name],
  )


def example_inputs(name: str, config=None, batch_size: int = 1):
  """Zero inputs of the shapes that `config` expects, e.g. for init.

  Returns:
    A dict of numpy arrays keyed by the architecture's input names.
  """
  _check_name(name)
  config = get_config(name) if config is None else config
  if name == LANGUAGE:
    shape = (batch_size, config.max_seq_len)
    return dict(
      inputs=np.zeros(shape, np.int32), input_mask=np.ones(shape, np.int32)
    )
  if name in IMAGENET_ARCHITECTURES:
    return dict(
      images=np.zeros((batch_size, *config.image_size, 3), np.float32)
    )
  if name == OPTICAL_FLOW:
    return dict(
      frames=np.zeros((batch_size, 2, *config.train_size, 3), np.float32)
    )
  samples_per_patch = config.audio_preprocessor.samples_per_patch
  return dict(
    images=np.zeros(
      (batch_size, config.num_frames, *config.image_size, 3), np.float32
    ),
    audio=np.zeros((batch_size, config.audio_samples, 1), np.float32),
    image_points=np.arange(
      min(16, config.num_frames * int(np.prod(config.image_size))),
      dtype=np.int32,
    ),
    audio_points=np.arange(
      min(2, config.audio_samples // samples_per_patch), dtype=np.int32
    ),
  )
