"""The one optimizer factory: clip, then LAMB or AdamW, then a schedule.

DeepMind's ImageNet recipe (perceiver/train/experiment.py), which the paper
used, is the default: `clip_by_global_norm(10)` -> `scale_by_adam(0.9,
0.999, eps=1e-6)` -> decoupled weight decay 0.1 on every parameter except
biases and LayerNorm/BatchNorm parameters -> LAMB trust ratio -> learning
rate `5e-4 * batch / 256`, flat for half of training, then cosine to 0.

Config keys (`config.optimizer`):
  name            'lamb' or 'adamw' (AdamW with weight_decay 0 is Adam).
  b1, b2, eps     Adam moments.
  weight_decay    decoupled decay coefficient (0 disables it).
  decay_pos_embs  also decay learned position tables and latents
                  (`pos_embs`); DeepMind's ImageNet recipe does.
  max_grad_norm   clip by global norm first; 0 or None disables it.

Config keys (`config.schedule`): see `build_schedule`.
"""

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments import config_utils

# Parameter names never decayed, and module-name fragments whose parameters
# are never decayed (DeepMind: `name == 'b'` or a layer/batch norm module).
NO_DECAY_NAMES = ('b', 'bias')
NO_DECAY_MODULES = ('layer_norm', 'batchnorm', 'batch_norm')
POS_EMBS_NAME = 'pos_embs'


# --- Learning-rate schedules ---


def build_schedule(
  config: ml_collections.ConfigDict,
  num_train_steps: int,
  num_train_examples: int | None = None,
) -> optax.Schedule:
  """Returns the learning-rate schedule `step -> lr` from `config.schedule`.

  Keys of `config.schedule`:
    name: 'constant_cosine' (flat at the peak for `constant_fraction` of the
      steps after warmup, then half-cosine to `end_value`; DeepMind's
      ImageNet schedule), 'warmup_cosine' (linear warmup from 0, then cosine
      to `end_value`), or 'constant' (after warmup).
    base_lr: the peak learning rate before batch scaling.
    scale_by_batch: multiply `base_lr` (and `end_value`) by
      `config.batch_size / 256`.
    constant_fraction: for 'constant_cosine'.
    warmup_steps or warmup_epochs: linear warmup from 0 (default none).
    end_value: final learning rate (before batch scaling).

  Raises:
    ValueError: unknown schedule name or warmup longer than training.
  """
  cfg = config.schedule
  scale = config.batch_size / 256 if cfg.get('scale_by_batch', False) else 1.0
  peak = cfg.base_lr * scale
  end = cfg.get('end_value', 0.0) * scale
  warmup = config_utils.steps_of(
    cfg, 'warmup', num_train_examples, config.batch_size
  )
  if warmup >= num_train_steps > 1:
    raise ValueError(
      f'Warmup ({warmup} steps) must be shorter than training '
      f'({num_train_steps} steps).'
    )
  rest = max(num_train_steps - warmup, 1)
  name = cfg.name
  if name == 'constant_cosine':
    flat = int(cfg.get('constant_fraction', 0.5) * rest)
    main = optax.join_schedules(
      [
        optax.constant_schedule(peak),
        optax.cosine_decay_schedule(
          peak, max(rest - flat, 1), alpha=end / peak if peak else 0.0
        ),
      ],
      [flat],
    )
  elif name == 'warmup_cosine':
    main = optax.cosine_decay_schedule(
      peak, rest, alpha=end / peak if peak else 0.0
    )
  elif name == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(
      f'Unknown schedule {name!r}; use constant_cosine, warmup_cosine or '
      'constant.'
    )
  if not warmup:
    return main
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), main], [warmup]
  )


# --- Weight-decay masks ---


def weight_decay_mask(params: Any, decay_pos_embs: bool = True) -> Any:
  """A tree of bools like `params`: True where weight decay applies.

  Not decayed: parameters named `b` or `bias`, and every parameter of a
  module whose path contains `layer_norm` or `batchnorm`. Learned position
  tables and latents (`pos_embs`) are decayed unless `decay_pos_embs` is
  False. Works on Haiku's `{module: {name: array}}` and any nested dict.
  """

  def decide(path, _):
    names = [str(getattr(p, 'key', getattr(p, 'name', p))) for p in path]
    name, modules = names[-1], '/'.join(names[:-1])
    if name in NO_DECAY_NAMES:
      return False
    if any(m in modules for m in NO_DECAY_MODULES):
      return False
    return decay_pos_embs or name != POS_EMBS_NAME

  return jax.tree_util.tree_map_with_path(decide, params)


# --- Learning rate kept in the optimizer state, for logging ---


class ScaleByLoggedScheduleState(NamedTuple):
  count: jax.Array  # int32: updates so far.
  learning_rate: jax.Array  # float32: the rate of the latest update.


def scale_by_logged_schedule(
  schedule: optax.Schedule,
) -> optax.GradientTransformation:
  """Multiplies updates by `-schedule(count)` and remembers the rate."""

  def init_fn(params):
    del params
    return ScaleByLoggedScheduleState(
      count=jnp.zeros((), jnp.int32),
      learning_rate=jnp.asarray(schedule(0), jnp.float32),
    )

  def update_fn(updates, state, params=None):
    del params
    lr = jnp.asarray(schedule(state.count), jnp.float32)
    updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
    return updates, ScaleByLoggedScheduleState(
      count=optax.safe_increment(state.count), learning_rate=lr
    )

  return optax.GradientTransformation(init_fn, update_fn)


def current_learning_rate(opt_state: Any) -> jax.Array | None:
  """The learning rate of the last update, if the optimizer logs it."""
  found = [
    s.learning_rate
    for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, ScaleByLoggedScheduleState)
    )
    if isinstance(s, ScaleByLoggedScheduleState)
  ]
  return found[0] if found else None


# --- The factory ---


def build_optimizer(
  config: ml_collections.ConfigDict,
  num_train_steps: int,
  num_train_examples: int | None = None,
  schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
  """Builds the optimizer chain from `config.optimizer` and the schedule.

  Args:
    config: the experiment config (reads `optimizer`, `schedule`,
      `batch_size`).
    num_train_steps: the resolved training length.
    num_train_examples: to resolve `schedule.warmup_epochs`.
    schedule: overrides the one from `build_schedule`.

  Raises:
    ValueError: unknown optimizer name.
  """
  cfg = config.optimizer
  if schedule is None:
    schedule = build_schedule(config, num_train_steps, num_train_examples)
  mask = make_decay_mask_fn(cfg.get('decay_pos_embs', True))
  parts = []
  if cfg.get('max_grad_norm'):
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
  if cfg.get('weight_decay'):
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
  if cfg.name == 'lamb':
    parts.append(optax.scale_by_trust_ratio())
  elif cfg.name != 'adamw':
    raise ValueError(f"Unknown optimizer {cfg.name!r}; use 'lamb' or 'adamw'.")
  parts.append(scale_by_logged_schedule(schedule))
  return optax.chain(*parts)


def make_decay_mask_fn(decay_pos_embs: bool) -> Callable[[Any], Any]:
  return lambda params: weight_decay_mask(params, decay_pos_embs)
