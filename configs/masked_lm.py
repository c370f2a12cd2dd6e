r"""Byte-level masked language modelling (Perceiver IO, Sec. 4.1 and App. F.3).

  python -m experiments.masked_lm --config=configs/masked_lm.py:local \
    --workdir=runs/mlm

trains a small Perceiver IO on Python's own reference documentation
(`pydoc_data.topics`, 90% of each topic) in about 17 minutes on 2 CPU cores:
eval/masked_accuracy 0.31 on the held-out 10%, every selected " word" span
[MASK]ed (most frequent byte: 0.14; most frequent span of the masked
length: 0.23), eval/word_masked_accuracy 0.21 on the word bytes alone, and
eval/bert_masked_accuracy 0.40 (BERT's 80/10/10 replacement). See
docs/masked_lm.md. Train on your own text instead with
`--config.data.source=files --config.data.files='notes/*.txt'`.

  python -m experiments.masked_lm --config=configs/masked_lm.py:paper \
    --workdir=runs/mlm_paper

is the paper's pretraining: the released architecture (201M parameters,
2048 bytes, 256x1280 latents, 26 layers) on C4 (70%) and English Wikipedia
(30%), LAMB at 1.25e-3 with 1k warmup steps and cosine decay over 500k steps,
weight decay 0.01, batch 2048 (PIO Table 12).

Config argument: `<variant>[,tiny]` with variant `local` (default) or
`paper`; `tiny` shrinks the model, sequence and batch for smoke tests.
"""

import ml_collections

from experiments import config_utils
from experiments.masked_lm import data as task_data
from perceiver_io import models

VARIANTS = ('local', 'paper')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant; see the module docstring."""
  args = config_utils.parse_arg(arg, variant='local', tiny=False)
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {VARIANTS}.'
    )
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.model = models.get_config(models.LANGUAGE)
  # Weight of the reconstruction loss on visible bytes (0: masked bytes only).
  config.unmasked_loss_weight = 0.0
  config.model_init = ml_collections.ConfigDict(
    dict(
      embed_init_scale=0.0,
      position_init='default',
      position_init_scale=0.02,
      local_peak_logit=8.0,
    )
  )
  config.data = _data_defaults()
  if args.variant == 'paper':
    _paper(config)
  else:
    _local(config)
  if args.tiny:
    _tiny(config)
  return config


def _data_defaults():
  return ml_collections.ConfigDict(
    dict(
      source='pydoc',  # 'pydoc' | 'files' | 'tfds'
      files='',  # comma-separated glob patterns, for source='files'
      holdout_fraction=0.1,
      seq_len=2048,
      docs_per_example=10,
      document_separator='\n\n',
      mask_prob=0.15,
      # A selected word takes the whitespace byte before it along (" word"),
      # as a SentencePiece word does (the paper masks bytes and SentencePiece
      # tokens by the same scheme); see docs/masked_lm.md.
      mask_leading_space=True,
      # Eval sets select this share of words whatever training uses.
      eval_mask_prob=0.15,
      mask_token_prob=0.8,
      random_token_prob=0.1,
      # The eval set replaces every selected word by [MASK].
      eval_mask_token_prob=1.0,
      eval_random_token_prob=0.0,
      eval_seed=1234,
      tfds_names=(task_data.C4, task_data.WIKIPEDIA),
      tfds_weights=(0.7, 0.3),
      tfds_train_split='train',
      tfds_eval_split='validation',
      shuffle_buffer=10_000,
      num_eval_examples=2048,
    )
  )


def _paper(config):
  """The released architecture and the paper's pretraining recipe."""
  config_utils.add_trainer_fields(
    config,
    batch_size=2048,
    num_train_steps=500_000,
    log_every_steps=100,
    eval_every_steps=10_000,
    checkpoint_every_steps=2_000,
    eval_batch_size=256,
  )
  config.optimizer.update(
    dict(name='lamb', weight_decay=0.01, max_grad_norm=1.0, eps=1e-6)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=1.25e-3,
      scale_by_batch=False,
      warmup_steps=1_000,
      end_value=0.0,
    )
  )
  config.data.source = 'tfds'
  config.data.seq_len = config.model.max_seq_len


def _local(config):
  """A small model that trains on 2 CPU cores in minutes."""
  config_utils.add_trainer_fields(
    config,
    batch_size=32,
    num_train_steps=26_000,
    log_every_steps=500,
    eval_every_steps=2_000,
    checkpoint_every_steps=2_000,
    eval_batch_size=256,
  )
  model = config.model
  model.d_model = 64
  model.max_seq_len = 64
  model.encoder.update(
    dict(
      num_self_attends_per_block=2,
      num_blocks=1,
      z_index_dim=32,
      num_z_channels=128,
      num_cross_attend_heads=4,
      num_self_attend_heads=4,
      qk_channels=None,
      v_channels=128,
    )
  )
  model.decoder.update(dict(num_heads=4, qk_channels=64))
  # See docs/masked_lm.md: these three make the small model learn in minutes.
  config.model_init.update(
    dict(embed_init_scale=0.3, position_init='local', position_init_scale=0.3)
  )
  config.unmasked_loss_weight = 1.0
  config.optimizer.update(
    dict(name='adamw', weight_decay=0.01, max_grad_norm=1.0, eps=1e-6)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=1e-3,
      scale_by_batch=False,
      warmup_steps=200,
      end_value=0.0,
    )
  )
  config.data.source = 'pydoc'
  config.data.seq_len = model.max_seq_len
  # Training selects 40% of the words: more masked bytes per step, which
  # learns faster here (Wettig et al. 2023); the eval set keeps 15%.
  config.data.mask_prob = 0.4


def _tiny(config):
  """Test sizes: a few milliseconds per step."""
  model = config.model
  model.d_model = 16
  model.max_seq_len = 32
  model.encoder.update(
    dict(
      num_self_attends_per_block=2,
      num_blocks=1,
      z_index_dim=8,
      num_z_channels=32,
      num_cross_attend_heads=2,
      num_self_attend_heads=2,
      qk_channels=16,
      v_channels=32,
    )
  )
  model.decoder.update(dict(num_heads=2, qk_channels=16))
  config.data.seq_len = model.max_seq_len
  config.data.num_eval_examples = 8
  config.data.shuffle_buffer = 16
  config.batch_size = 4
  config.eval_batch_size = 8
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.schedule.warmup_steps = 1
