r"""Perceiver IO image classification: the paper's ImageNet runs and digits.

  python -m experiments.image_classification \
    --config=configs/image_classification.py:digits --workdir=runs/digits

reaches eval/accuracy >= 0.96 on the held-out 20% of scikit-learn's digits
within a few minutes on 2 CPU cores. The ImageNet variants follow the paper
(config A, 110 epochs at batch 1024, LAMB, RandAugment + MixUp + CutMix) and
should reach 79.0 (`fourier`, the default), 72.7 (`learned`) and 82.1
(`conv`) top-1:

  python -m experiments.image_classification \
    --config=configs/image_classification.py:fourier --workdir=runs/in_ff \
    --config.data.data_dir=/path/to/tensorflow_datasets

Config argument: `<variant>[,runlocal]`, e.g. `conv` or
`variant=fourier,runlocal=True`. `runlocal` shrinks an ImageNet variant to a
tiny model at 32x32 for smoke tests (still needs the data, or mock data).
"""

import ml_collections

from experiments import config_utils
from perceiver_io import models

VARIANTS = {
  'fourier': models.IMAGENET_FOURIER,
  'learned': models.IMAGENET_LEARNED,
  'conv': models.IMAGENET_CONV,
  'digits': models.IMAGENET_FOURIER,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant; see the module docstring."""
  args = config_utils.parse_arg(arg, variant='fourier', runlocal=False)
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {sorted(VARIANTS)}.'
    )
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.label_smoothing = 0.1
  model = models.get_config(VARIANTS[args.variant])
  model.architecture = VARIANTS[args.variant]
  config.model = model
  if args.variant == 'digits':
    _digits(config)
  else:
    _imagenet(config, runlocal=args.runlocal)
  return config


def _imagenet(config, runlocal):
  """Paper config A (PIO A.1) and DeepMind's released training script."""
  config_utils.add_trainer_fields(
    config,
    batch_size=1024,
    num_epochs=110.0,
    log_every_steps=100,
    eval_every_steps=5000,
    checkpoint_every_steps=1000,
    eval_batch_size=1000,
  )
  config.optimizer.update(config_utils.optimizer_defaults())
  config.schedule.update(config_utils.schedule_defaults())
  config.data = ml_collections.ConfigDict(
    dict(
      name='imagenet2012',
      version='5.1.0',
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split='train',
      eval_split='validation',
      image_size=224,
      channels=3,
      randaugment_layers=4,
      randaugment_magnitude=5.0,
      mixup_alpha=0.2,
      cutmix=True,
      shuffle_buffer=10_000,
      num_train_examples=ml_collections.config_dict.placeholder(int),
    )
  )
  if runlocal:
    size = 32
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = None
    config.num_train_steps = 10
    config.log_every_steps = 2
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 5
    config.data.image_size = size
    config.data.shuffle_buffer = 16
    config.model.image_size = (size, size)
    _tiny_encoder(config.model, latents=16, channels=64)
    prep = config.model.input_preprocessor
    if 'fourier_position_encoding_kwargs' in prep:
      # max_resolution follows image_size (models.resolve_sizes).
      prep.fourier_position_encoding_kwargs.num_bands = 8
    if prep.position_encoding_type == 'trainable':
      prep.trainable_position_encoding_kwargs.num_channels = 32
      prep.project_pos_dim = 32
      prep.num_channels = 32


def _tiny_encoder(model, latents, channels):
  model.encoder.update(
    num_self_attends_per_block=2,
    num_blocks=1,
    z_index_dim=latents,
    num_z_channels=channels,
    num_self_attend_heads=4,
  )
  model.decoder.num_z_channels = channels
  model.decoder.trainable_position_encoding_kwargs.num_channels = channels


def _digits(config):
  """A small Fourier-feature Perceiver on scikit-learn's 8x8 digits."""
  config_utils.add_trainer_fields(
    config,
    batch_size=64,
    num_train_steps=3000,
    log_every_steps=100,
    eval_every_steps=500,
    checkpoint_every_steps=500,
    eval_batch_size=120,
  )
  config.optimizer.update(
    dict(name='lamb', weight_decay=0.01, max_grad_norm=1.0, eps=1e-6)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=2e-3,
      scale_by_batch=False,
      warmup_steps=100,
    )
  )
  config.label_smoothing = 0.0
  config.data = ml_collections.ConfigDict(
    dict(
      name='digits', channels=1, test_fraction=0.2, split_seed=0, max_shift=1
    )
  )
  model = config.model
  model.image_size = (8, 8)
  model.input_preprocessor.fourier_position_encoding_kwargs.num_bands = 8
  _tiny_encoder(model, latents=16, channels=64)
  model.decoder.num_classes = 10
