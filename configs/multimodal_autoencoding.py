r"""Multimodal (video + audio + label) autoencoding (Perceiver IO Sec. 4.3).

  python -m experiments.multimodal_autoencoding \
    --config=configs/multimodal_autoencoding.py:local --workdir=runs/mmae

trains on moving sklearn digits with a sound track (`data.py`): 8 frames of
32x32 RGB, 1,024 audio samples and a 10-class label (25,610 input values)
through 16 x 64 latents (1,024 values: 25.0x smaller; 58.0x by the paper's
measure, preprocessed inputs x channels over latents x channels). Target:
eval/video_psnr and eval/audio_psnr each 6 dB above their mean baselines and
eval/label_top1 (label masked) >= 0.90 within 20 minutes on 2 CPU cores; see
docs/multimodal_autoencoding.md for what a run measured.

  python -m experiments.multimodal_autoencoding \
    --config=configs/multimodal_autoencoding.py:paper --workdir=runs/mmae_paper \
    --config.data.kinetics_dir=/data/kinetics700 \
    --config.data.annotations_csv=/data/kinetics700/annotations.csv

is the paper's recipe on Kinetics-700: the released architecture (784 x 512
latents, 88x by the paper's measure), 16 frames of 224x224 at 25 fps, 30,720
audio samples at 48 kHz, loss 0.03 L1(video) + L1(audio) + 1e-4 CE(label),
label masked on 50% of training examples, 512 pixels + 512 audio samples +
the label decoded per training example, batch 1024, learning rate 1e-3
(optimizer and step count are not stated in the paper: AdamW and 100k steps
here). `paper_176x` and `paper_352x` have 392 and 196 latents.

Config argument: `<variant>[,tiny]` with variant `local` (default), `paper`,
`paper_176x` or `paper_352x`; `tiny` shrinks everything for tests.
"""

import ml_collections
import numpy as np

from experiments import config_utils
from perceiver_io import models

VARIANTS = ('local', 'paper', 'paper_176x', 'paper_352x')
PAPER_LATENTS = {'paper': 784, 'paper_176x': 392, 'paper_352x': 196}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant; see the module docstring."""
  args = config_utils.parse_arg(arg, variant='local', tiny=False)
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {VARIANTS}.'
    )
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.model = models.get_config(models.VIDEO_AUTOENCODING)
  # The released model's one head and MLP width.
  config.model.decoder.update(dict(num_heads=1, widening_factor=1))
  # Pixels (frames, height, width) each image query decodes; 1x1x1 as
  # released (model.py).
  config.model.image_output_patch = (1, 1, 1)
  config.loss = ml_collections.ConfigDict(
    dict(video=0.03, video_mse=0.0, audio=1.0, label=1e-4)
  )
  config.data = ml_collections.ConfigDict(
    dict(
      source='digits',  # 'digits' (data.py) | 'kinetics' (kinetics.py)
      num_frames=16,
      image_size=(224, 224),
      audio_samples=30720,
      label_mask_prob=0.5,
      train_image_points=512,
      train_audio_samples=512,
      num_eval_examples=256,
      eval_seed=1234,
      kinetics_dir='',
      annotations_csv='',
      class_names_file='',  # one Kinetics class name a line
      fps=25,
      audio_rate=48000,
    )
  )
  config.eval = ml_collections.ConfigDict(
    dict(num_decode_chunks=128, video_data_range=1.0, audio_data_range=2.0)
  )
  if args.variant == 'local':
    _local(config)
  else:
    _paper(config, PAPER_LATENTS[args.variant])
  config.optimizer.update(
    dict(name='adamw', weight_decay=0.0, max_grad_norm=1.0)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=2e-3 if args.variant == 'local' else 1e-3,
      scale_by_batch=False,
      warmup_steps=100 if args.variant == 'local' else 1_000,
      end_value=0.0,
    )
  )
  if args.tiny:
    _tiny(config)
  return config


def _paper(config, num_latents):
  config_utils.add_trainer_fields(
    config,
    batch_size=1024,
    num_train_steps=100_000,
    log_every_steps=100,
    eval_every_steps=10_000,
    checkpoint_every_steps=2_000,
    eval_batch_size=8,
  )
  config.model.encoder.z_index_dim = num_latents
  config.data.source = 'kinetics'
  config.data.num_eval_examples = 1024


def _local(config):
  """A small model on moving digits that trains on 2 CPU cores."""
  config_utils.add_trainer_fields(
    config,
    batch_size=32,
    num_train_steps=2_500,
    log_every_steps=100,
    eval_every_steps=1_000,
    checkpoint_every_steps=1_000,
    eval_batch_size=64,
  )
  config.model.num_classes = 10
  _shrink(
    config,
    frames=8,
    image_size=(32, 32),
    audio_samples=1024,
    latents=16,
    channels=64,
    self_attends=4,
    heads=4,
    image_bands=8,
    audio_bands=16,
  )
  # The paper's 0.03 L1 / 1 / 1e-4 barely trains the label in minutes, and
  # an L1 video loss settles on black frames (the median of mostly black
  # pixels): the local run trains video on MSE and weighs the label up
  # (docs/multimodal_autoencoding.md).
  config.loss.update(dict(video=0.0, video_mse=10.0, audio=1.0, label=0.1))
  # A wider decoder MLP that also sees each query's own position.
  config.model.decoder.update(dict(widening_factor=4, use_query_residual=True))
  d = config.data
  d.train_image_points, d.train_audio_samples = 1024, 256
  d.num_eval_examples = 256
  config.eval.num_decode_chunks = 4


def _shrink(
  config,
  *,
  frames,
  image_size,
  audio_samples,
  latents,
  channels,
  self_attends,
  heads,
  image_bands,
  audio_bands,
):
  """Model and data at smaller sizes: one width for latents and outputs."""
  m = config.model
  m.num_frames, m.image_size, m.audio_samples = (
    frames,
    image_size,
    audio_samples,
  )
  m.encoder.update(
    dict(
      z_index_dim=latents,
      num_z_channels=channels,
      num_self_attends_per_block=self_attends,
      num_self_attend_heads=heads,
      qk_channels=channels,
      v_channels=channels,
    )
  )
  for section in ('decoder', 'image_decoder', 'audio_decoder'):
    m[section].output_num_channels = channels
  for section in ('image_preprocessor', 'image_decoder'):
    m[section].fourier_position_encoding_kwargs.num_bands = image_bands
  for section in ('audio_preprocessor', 'audio_decoder'):
    m[section].fourier_position_encoding_kwargs.num_bands = audio_bands
  m.label_decoder.trainable_position_encoding_kwargs.num_channels = channels
  d = config.data
  d.num_frames, d.image_size, d.audio_samples = (
    frames,
    image_size,
    audio_samples,
  )
  # The model's samples a frame at the data's frame rate (25 fps: 128 a
  # frame for local; what `autoencode` resamples audio to).
  d.audio_rate = d.fps * d.audio_samples // d.num_frames


def _tiny(config):
  """Test sizes: milliseconds per step."""
  if config.data.source == 'digits':
    config.model.num_classes = 10
  _shrink(
    config,
    frames=2,
    image_size=(24, 24),
    audio_samples=128,
    latents=4,
    channels=16,
    self_attends=1,
    heads=2,
    image_bands=2,
    audio_bands=4,
  )
  d = config.data
  d.train_image_points, d.train_audio_samples = 32, 32
  d.num_eval_examples = 6
  config.eval.num_decode_chunks = 2
  config.batch_size, config.eval_batch_size = 4, 4
  config.num_train_steps, config.log_every_steps = 4, 2
  config.eval_every_steps, config.checkpoint_every_steps = 4, 2
  config.schedule.warmup_steps = 1
  config.checkpoint_async = False


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that the sizes fit together.

  Raises:
    ValueError: naming the first key that does not fit (patch size or
      latent count that does not divide, point counts, data vs model sizes).
  """
  m, d = config.model, config.data
  prep = m.image_preprocessor
  for what, size, factor in (
    ('num_frames', (m.num_frames,), prep.temporal_downsample),
    ('image_size', tuple(m.image_size), prep.spatial_downsample),
  ):
    for n in size:
      if n % factor:
        raise ValueError(
          f'config.model.{what}={size} is not divisible by the video patch '
          f'size {factor} (config.model.image_preprocessor).'
        )
  per_patch = m.audio_preprocessor.samples_per_patch
  for key, n in (
    ('model.audio_samples', m.audio_samples),
    ('data.train_audio_samples', d.train_audio_samples),
  ):
    if n % per_patch:
      raise ValueError(
        f'config.{key}={n} is not divisible by the audio patch size '
        f'{per_patch} (config.model.audio_preprocessor.samples_per_patch).'
      )
  if m.audio_samples % m.num_frames:
    raise ValueError(
      f'config.model.audio_samples={m.audio_samples} is not a whole number '
      f'of samples per frame over num_frames={m.num_frames}.'
    )
  enc = m.encoder
  for key in ('num_self_attend_heads', 'num_cross_attend_heads'):
    if enc.num_z_channels % enc[key]:
      raise ValueError(
        f'config.model.encoder.num_z_channels={enc.num_z_channels} is not '
        f'divisible by config.model.encoder.{key}={enc[key]}.'
      )
  if enc.z_index_dim < 1:
    raise ValueError(
      f'config.model.encoder.z_index_dim={enc.z_index_dim}: need >= 1 latent.'
    )
  for key in ('num_frames', 'image_size', 'audio_samples'):
    if tuple(_seq(d[key])) != tuple(_seq(m[key])):
      raise ValueError(
        f'config.data.{key}={d[key]} differs from config.model.{key}={m[key]}.'
      )
  from experiments.multimodal_autoencoding import model as model_lib

  patch = model_lib.image_patch(m)
  model_lib.patch_grid((m.num_frames, *m.image_size), patch)
  pixels = m.num_frames * m.image_size[0] * m.image_size[1]
  if not 0 < d.train_image_points <= pixels:
    raise ValueError(
      f'config.data.train_image_points={d.train_image_points} must be in '
      f'1..{pixels} (frames x height x width).'
    )
  if d.train_image_points % int(np.prod(patch)):
    raise ValueError(
      f'config.data.train_image_points={d.train_image_points} is not a '
      f'whole number of output patches of {patch} pixels '
      '(config.model.image_output_patch).'
    )
  if not 0 < d.train_audio_samples <= m.audio_samples:
    raise ValueError(
      f'config.data.train_audio_samples={d.train_audio_samples} must be in '
      f'1..{m.audio_samples}.'
    )
  if not 0.0 <= d.label_mask_prob <= 1.0:
    raise ValueError(
      f'config.data.label_mask_prob={d.label_mask_prob} is not a probability.'
    )
  if config.eval.num_decode_chunks < 1:
    raise ValueError('config.eval.num_decode_chunks must be >= 1.')


def _seq(value):
  return value if isinstance(value, (tuple, list)) else (value,)
