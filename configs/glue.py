r"""GLUE fine-tuning of the byte-level Perceiver IO (paper App. F.4, Table 13).

  python -m experiments.glue --config=configs/glue.py:mrpc \
    --config.init_from=language_perceiver_io_bytes.pickle \
    --workdir=runs/glue/mrpc

fine-tunes DeepMind's released encoder on MRPC (the paper reports 87.24 for
this model, 80.95 GLUE average). `--tasks=all --grid` runs every task over
the paper's grid and writes the GLUE average to `<workdir>/summary.json`.

  python -m experiments.glue --config=configs/glue.py:task=sst2,variant=local \
    --config.init_from=runs/mlm --workdir=runs/glue_local/sst2

fine-tunes the small model of `configs/masked_lm.py:local` instead.

Config argument: `<task>[,variant=paper|local][,tiny]`. The recipe: 10
epochs, LAMB, batch 32 and learning rate 5e-5 (the grid is batch {16, 32,
64} x lr {1e-4, 5e-5, 2e-5, 1e-5}), 200 warmup steps, weight decay 0.01.
"""

import ml_collections

from configs import masked_lm as masked_lm_config
from experiments import config_utils
from experiments.glue import data as task_data
from perceiver_io import models

VARIANTS = ('paper', 'local')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one task; see the module docstring."""
  args = config_utils.parse_arg(arg, task='cola', variant='paper', tiny=False)
  task_data.task_info(args.task)
  if args.variant not in VARIANTS:
    raise ValueError(
      f'Unknown variant {args.variant!r}; use one of {VARIANTS}.'
    )
  config = ml_collections.ConfigDict()
  config.task = args.task
  config.variant = args.variant
  config_utils.add_trainer_fields(
    config,
    batch_size=32,
    num_train_steps=-1,
    num_epochs=10.0,
    log_every_steps=100,
    eval_every_steps=-1,
    checkpoint_every_steps=1000,
    checkpoint_keep=1,
    eval_batch_size=128,
  )
  config.optimizer.update(
    dict(name='lamb', weight_decay=0.01, max_grad_norm=1.0, eps=1e-6)
  )
  config.schedule.update(
    dict(
      name='warmup_cosine',
      base_lr=5e-5,
      scale_by_batch=False,
      warmup_steps=200,
      end_value=0.0,
    )
  )
  config.grid = ml_collections.ConfigDict(
    dict(batch_sizes=(16, 32, 64), learning_rates=(1e-4, 5e-5, 2e-5, 1e-5))
  )
  if args.variant == 'paper':
    config.model = models.get_config(models.LANGUAGE)
    seq_len = 512
  else:
    mlm = masked_lm_config.get_config('local,tiny' if args.tiny else 'local')
    config.model = mlm.model
    seq_len = mlm.data.seq_len
  config.data = ml_collections.ConfigDict(
    dict(
      seq_len=seq_len,
      train_split='train',
      data_dir=ml_collections.config_dict.placeholder(str),
    )
  )
  if args.tiny:
    _tiny(config)
  return config


def _tiny(config):
  """Test sizes: a tiny model, short sequences, a few steps."""
  if config.variant == 'paper':
    tiny = masked_lm_config.get_config('local,tiny')
    config.model = tiny.model
  config.data.seq_len = min(32, config.model.max_seq_len)
  config.batch_size = 4
  config.eval_batch_size = 8
  config.num_epochs = 1.0
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.schedule.warmup_steps = 1
