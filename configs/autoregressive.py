r"""Perceiver AR (Hawthorne et al. 2022): causal modelling over long contexts.

  python -m experiments.autoregressive --config=configs/autoregressive.py:local \
    --workdir=runs/ar

trains a byte-level Perceiver AR on the source files of Python's own
standard library (about 11 MB to train on, 1 MB of held-out files; no
download): N = 256 latents over a context of M = 2048 bytes. It logs
`eval/bits_per_byte`, `eval/accuracy` and, on the same target bytes,
`eval/ngram_bits_per_byte` of an order-3 byte n-gram fitted on the training
files. `:local,context_factor=1` is the same model with M = N, a plain
causal Transformer over N positions, scored on the same targets.

  python -m experiments.autoregressive --config=configs/autoregressive.py:pg19 \
    --workdir=runs/ar_pg19

  python -m experiments.autoregressive \
    --config=configs/autoregressive.py:imagenet64 --workdir=runs/ar_imagenet64

are the paper-style runs on TFDS `pg19` (UTF-8 bytes of each book) and
`downsampled_imagenet/64x64` (an SOS token, then the 12,288 pixel values in
raster order, bits per token), with the sizes of the released
`imagenet_w_positions` sweep (paper.md section 4.3: 1024 latents, 60
layers, width 1024, 16 heads; Adam 3e-4, 10k warmup) and, for PG-19, the
same stack over a 4096-byte context. They need the prepared datasets
(`--config.data.data_dir`).

Config argument: `<variant>[,tiny][,context_factor=K]` with variant `local`
(default), `pg19` or `imagenet64`; `context_factor` sets M = K * N (local
only; 8 by default); `tiny` shrinks everything for tests.
"""

import ml_collections

from experiments import config_utils
from perceiver_io import runtime as runtime_lib

VARIANTS = ('local', 'pg19', 'imagenet64')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one variant; see the module docstring."""
  args = config_utils.parse_arg(
    arg, variant='local', tiny=False, context_factor=8
  )
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {VARIANTS}.'
    )
  if args.context_factor < 1:
    raise ValueError(
      f'context_factor={args.context_factor}: the context is at least N.'
    )
  config = ml_collections.ConfigDict()
  config.variant = args.variant
  config.model = ml_collections.ConfigDict(
    dict(
      vocab_size=256,
      num_latents=256,
      max_context=2048,
      channels=128,
      num_heads=4,
      num_layers=2,
      widening=4,
      squared_relu=True,
      zero_init_output=True,
      runtime=runtime_lib.config(),
    )
  )
  config.z_loss = 1e-4
  config.data = ml_collections.ConfigDict(
    dict(
      source='stdlib',  # 'stdlib' | 'tfds'
      root='',  # '' : Python's standard library.
      eval_percent=10.0,
      # Eval windows end at the same places whatever M (<= eval_first_end - 1).
      eval_first_end=8 * 256 + 1,
      num_eval_windows=64,
      ngram_alpha=1.0,
      context_dropout=0.0,
      tfds_name='',
      data_dir='',
      tfds_eval_split='validation',
      shuffle_buffer=1000,
      num_eval_docs=8,
      eval_stride=4096,
      eval_windows_per_doc=4,
      ngram_train_docs=200,
    )
  )
  config_utils.add_trainer_fields(
    config,
    batch_size=8,
    num_train_steps=1500,
    log_every_steps=50,
    eval_every_steps=500,
    checkpoint_every_steps=500,
    eval_batch_size=16,
  )
  config.optimizer.update(
    dict(name='adamw', weight_decay=0.01, max_grad_norm=1.0, eps=1e-8)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=1e-3,
      scale_by_batch=False,
      warmup_steps=100,
      end_value=0.0,
    )
  )
  if args.variant == 'local':
    n = config.model.num_latents
    config.model.max_context = args.context_factor * n
  else:
    _paper(config, args.variant)
  if args.tiny:
    _tiny(config, args.context_factor)
  return config


def _paper(config, variant):
  """The released sizes (paper.md 4.3) on a TFDS dataset."""
  config.model.update(
    dict(
      num_latents=1024,
      channels=1024,
      num_heads=16,
      num_layers=60,
      widening=4,
    )
  )
  config.data.source = 'tfds'
  config.data.tfds_name = variant
  if variant == 'imagenet64':
    config.model.vocab_size = 257  # 256 values and the SOS token.
    config.model.max_context = 12_416
    config.data.eval_stride = 12_289  # One window per image: all of it.
    config.data.eval_windows_per_doc = 1
    config.data.num_eval_docs = 64
  else:
    config.model.max_context = 4096
  config.model.runtime.remat_layers = True
  config.batch_size = 2048
  config.eval_batch_size = 64
  config.num_train_steps = 1_000_000
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2_000
  config.optimizer.update(
    dict(name='adamw', weight_decay=0.0, max_grad_norm=1.0, eps=1e-8)
  )
  config.schedule.update(dict(base_lr=3e-4, warmup_steps=10_000))


def _tiny(config, context_factor):
  """Test sizes: milliseconds per step."""
  config.model.update(
    dict(num_latents=8, channels=16, num_heads=2, num_layers=1, widening=2)
  )
  config.model.max_context = context_factor * 8
  if config.model.vocab_size == 257:
    config.model.max_context = max(config.model.max_context, 16)
  config.data.eval_first_end = 8 * 8 + 1
  config.data.num_eval_windows = 6
  config.data.num_eval_docs = 2
  config.data.eval_stride = 32
  config.data.eval_windows_per_doc = 2
  config.data.ngram_train_docs = 4
  config.data.shuffle_buffer = 4
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.schedule.warmup_steps = 1
