r"""Optical flow with Perceiver IO: the paper's AutoFlow recipe and a CPU run.

  python -m experiments.optical_flow \
    --config=configs/optical_flow.py:local --workdir=runs/flow

trains a small model on synthetic pairs (scikit-learn's sample photographs
warped with known smooth random flow, on 32x32 frames, moving by up to
`data.synthetic.max_motion` = 8 px, mean |flow| about 3.5 px) and reaches
eval/epe <= 0.6 x eval/zero_flow_epe on held-out pairs within 20 minutes on
2 CPU cores (see docs/optical_flow.md for the measured curve). The model
knows motions up to that range only: `experiments.optical_flow.predict` warns when
asked about more.

  python -m experiments.optical_flow \
    --config=configs/optical_flow.py:paper --workdir=runs/flow_autoflow \
    --config.data.root=/data/AutoFlow \
    --config.eval.sintel_root=/data/Sintel --config.eval.kitti_root=/data/KITTI

is the paper's recipe (PIO App. H): the released 2048x512-latent, 24-layer
model on AutoFlow, LAMB, cosine from 4e-4, batch 512, 480 epochs, then tiled
evaluation on Sintel clean/final and KITTI 2015 (paper: 1.81 / 2.42 / 4.98
EPE). With `--config.mode=eval --config.init_from=optical_flow_checkpoint.pystate`
it evaluates DeepMind's released weights instead.

Config argument: `paper` (default), `local`, or `tiny` (a seconds-long smoke
run used by the tests).
"""

import ml_collections

from experiments import config_utils
from perceiver_io import models

VARIANTS = ('paper', 'local', 'tiny')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant; see the module docstring."""
  args = config_utils.parse_arg(arg, variant='paper')
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {VARIANTS}.'
    )
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.model = models.get_config(models.OPTICAL_FLOW)
  config.data = _data_defaults()
  config.eval = ml_collections.ConfigDict(
    dict(
      # Full-frame benchmarks, tiled; run in mode=eval, or after training
      # when `benchmark_after_training`.
      benchmarks=('sintel_clean', 'sintel_final', 'kitti'),
      sintel_root='',
      kitti_root='',
      min_overlap=20,
      tile_batch_size=6,
      max_examples=0,  # 0: every pair.
      benchmark_after_training=False,
    )
  )
  if args.variant == 'paper':
    _paper(config)
  else:
    _local(config, tiny=args.variant == 'tiny')
  return config


def _data_defaults():
  return ml_collections.ConfigDict(
    dict(
      name='synthetic',  # or a key of optical_flow.datasets.DATASETS.
      root='',
      num_workers=8,
      # In-training evaluation: 'synthetic', '' (none) or a dataset name
      # whose pairs are centre-cropped to the model's train_size.
      eval_name='synthetic',
      eval_root='',
      num_eval_pairs=256,
      eval_seed=1234,
      augment=dict(
        horizontal_flip_prob=0.5,
        vertical_flip_prob=0.1,
        photometric=True,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.5 / 3.14159,
        asymmetric_prob=0.2,
      ),
      # optical_flow.datasets.SyntheticFlowPairs arguments.
      synthetic=dict(
        scales=(1.0, 0.5),
        holdout_fraction=0.25,
        max_translation=1.5,
        max_affine=0.5,
        local_amplitude=0.3,
        local_cycles=1.0,
        num_waves=4,
        # The longest flow vector in pixels: a model trained on these pairs
        # knows motions up to here (experiments.optical_flow.predict warns beyond).
        max_motion=2.5,
        min_texture=4.0,
        max_tries=20,
      ),
    )
  )


def _paper(config):
  """PIO App. H: AutoFlow, LAMB, cosine from 4e-4, batch 512, 480 epochs.

  Not reproduced here: the paper's curriculum (a first phase without
  augmentation that feeds each pair forwards and reversed) and AutoFlow's
  PBT-tuned augmentation schedule. Weight decay is not stated in the paper;
  DeepMind's LAMB defaults (0.1, no decay on biases and norms) are used.
  """
  config_utils.add_trainer_fields(
    config,
    batch_size=512,
    num_epochs=480.0,
    log_every_steps=100,
    eval_every_steps=5000,
    checkpoint_every_steps=1000,
    eval_batch_size=64,
  )
  config.num_train_steps = -1
  config.optimizer.update(config_utils.optimizer_defaults())
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=4e-4,
      scale_by_batch=False,
      warmup_steps=0,
      end_value=0.0,
    )
  )
  config.data.name = 'autoflow'
  config.data.eval_name = ''
  config.eval.benchmark_after_training = True


def _local(config, tiny):
  """A small model on 32x32 synthetic pairs that learns in minutes on a CPU.

  The pairs move by up to 8 px (`max_motion`): a translation of up to 5 px,
  an affine part of up to 1.5 px per term at the frame edge and a local
  deformation of about 1 px. What makes it fast: small frames (1024 pixels),
  few channels per pixel (the per-pixel work, not the latents, dominates the
  cost: 32 patch channels and 4 Fourier bands), a narrow decoder attention
  (32 channels), 64 latents and 2 self-attention layers, and Adam at 1e-3
  after a short warmup. The motions are mostly beyond the 3x3 patches, so
  the model has to relate pixels through the latents.
  """
  size = (8, 12) if tiny else (32, 32)
  config_utils.add_trainer_fields(
    config,
    batch_size=4 if tiny else 32,
    num_train_steps=6 if tiny else 3000,
    log_every_steps=2 if tiny else 50,
    eval_every_steps=3 if tiny else 250,
    checkpoint_every_steps=3 if tiny else 500,
    eval_batch_size=4 if tiny else 64,
  )
  config.optimizer.update(
    dict(name='adamw', weight_decay=0.0, max_grad_norm=1.0, eps=1e-8)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=1e-3,
      scale_by_batch=False,
      warmup_steps=2 if tiny else 200,
      end_value=5e-5,
    )
  )
  config.eval.benchmarks = ()
  config.data.num_eval_pairs = 6 if tiny else 256
  config.data.num_workers = 2

  model = config.model
  model.train_size = size
  prep = model.input_preprocessor
  prep.num_channels = 16 if tiny else 32
  for section in (prep, model.decoder):
    section.fourier_position_encoding_kwargs.update(
      dict(num_bands=4, max_resolution=size)
    )
  model.encoder.update(
    dict(
      num_self_attends_per_block=1 if tiny else 2,
      num_blocks=1,
      z_index_dim=16 if tiny else 64,
      num_z_channels=32 if tiny else 64,
      num_self_attend_heads=4,
    )
  )
  model.decoder.update(
    dict(qk_channels=16 if tiny else 32, v_channels=16 if tiny else 32)
  )
  if tiny:
    config.data.synthetic.scales = (0.5,)
  else:
    config.data.synthetic.update(
      dict(
        max_translation=5.0,
        max_affine=1.5,
        local_amplitude=1.0,
        max_motion=8.0,
      )
    )
