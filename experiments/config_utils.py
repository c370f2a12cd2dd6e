"""Config helpers shared by every experiment: common fields, args, durations.

Durations are stated in steps or in epochs and resolved to steps at run time
by `resolve_steps`, so that `--config.batch_size=...` never leaves a stale
step count behind (compare big_vision's `utils.steps`).
"""

from collections.abc import Mapping
from typing import Any

import ml_collections

from perceiver_io import runtime as runtime_lib


def add_trainer_fields(
  config: ml_collections.ConfigDict, **overrides: Any
) -> ml_collections.ConfigDict:
  """Adds every key `trainer.train_and_evaluate` reads, with defaults.

  Keys already in `config` are kept; `overrides` win over both. Sections
  `optimizer`, `schedule`, `model` and `data` are created if missing; the
  optimizer and schedule get the defaults of `optimizers.build_optimizer`
  and `optimizers.build_schedule` (LAMB and DeepMind's constant-then-cosine
  ImageNet schedule).

  Args:
    config: the experiment config to complete (modified in place).
    **overrides: top-level values, e.g. `batch_size=64`.

  Returns:
    `config`, for chaining.
  """
  defaults = dict(
    seed=0,
    batch_size=256,
    eval_batch_size=None,
    num_train_steps=-1,
    num_epochs=None,
    log_every_steps=100,
    eval_every_steps=1000,
    checkpoint_every_steps=1000,
    checkpoint_keep=3,
    # Saves run in the background (orbax async); False waits for each. Tests
    # under tfds.testing.mock_data need False: while it builds a dataset it
    # swaps in a process-wide mock file system, and a background write that
    # runs then lands in the mock and fails.
    checkpoint_async=True,
    init_from='',
    mode='train',
    grad_accum_steps=1,
  )
  for key, value in defaults.items():
    if key not in config:
      # Placeholders keep their type for command-line overrides.
      if value is None and key == 'eval_batch_size':
        config[key] = ml_collections.config_dict.placeholder(int)
      elif value is None and key == 'num_epochs':
        config[key] = ml_collections.config_dict.placeholder(float)
      else:
        config[key] = value
  for key, value in overrides.items():
    config[key] = value
  _fill(config, 'optimizer', optimizer_defaults())
  _fill(config, 'schedule', schedule_defaults())
  for section in ('model', 'data'):
    if section not in config:
      config[section] = ml_collections.ConfigDict()
  return config


def optimizer_defaults() -> dict[str, Any]:
  """LAMB as in DeepMind's ImageNet recipe (see `optimizers`)."""
  return dict(
    name='lamb',
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.1,
    decay_pos_embs=True,
    max_grad_norm=10.0,
  )


def schedule_defaults() -> dict[str, Any]:
  """Flat, then cosine to 0 over the second half; no warmup (see paper)."""
  return dict(
    name='constant_cosine',
    base_lr=5e-4,
    scale_by_batch=True,
    constant_fraction=0.5,
    warmup_steps=0,
    warmup_epochs=0.0,
    end_value=0.0,
  )


def _fill(config, section, defaults):
  if section not in config:
    config[section] = ml_collections.ConfigDict()
  for key, value in defaults.items():
    if key not in config[section]:
      config[section][key] = value


def resolve_steps(
  config: ml_collections.ConfigDict, num_train_examples: int | None
) -> int:
  """Returns the number of training steps from steps or epochs.

  Exactly one of `config.num_train_steps` (> 0) and `config.num_epochs` must
  be set. Epochs give `floor(num_epochs * num_train_examples / batch_size)`.

  Raises:
    ValueError: if neither or both are set, or epochs are set but the task
      has no `num_train_examples`.
  """
  steps = config.get('num_train_steps')
  epochs = config.get('num_epochs')
  has_steps = steps is not None and steps > 0
  has_epochs = epochs is not None and epochs > 0
  if has_steps and has_epochs:
    raise ValueError(
      f'Set only one of num_train_steps ({steps}) and num_epochs ({epochs}); '
      'set the other to -1 / None.'
    )
  if has_steps:
    return int(steps)
  if not has_epochs:
    raise ValueError('Set config.num_train_steps > 0 or config.num_epochs > 0.')
  if not num_train_examples:
    raise ValueError(
      'config.num_epochs needs the size of the train split, which this task '
      'does not give; set config.num_train_steps instead.'
    )
  return steps_from_epochs(epochs, num_train_examples, config.batch_size)


def steps_from_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
  """`floor(epochs * num_examples / batch_size)` (as DeepMind), at least 1."""
  return max(1, int(epochs * num_examples // batch_size))


def steps_of(
  config: ml_collections.ConfigDict,
  prefix: str,
  num_train_examples: int | None,
  batch_size: int,
) -> int:
  """Resolves `<prefix>_steps` or `<prefix>_epochs` in `config` to steps.

  E.g. `steps_of(config.schedule, 'warmup', n, b)` reads `warmup_steps` or
  `warmup_epochs`. Both unset or zero gives 0.

  Raises:
    ValueError: if both are set, or epochs without `num_train_examples`.
  """
  steps = config.get(f'{prefix}_steps') or 0
  epochs = config.get(f'{prefix}_epochs') or 0
  if steps and epochs:
    raise ValueError(f'Set only one of {prefix}_steps and {prefix}_epochs.')
  if epochs:
    if not num_train_examples:
      raise ValueError(
        f'{prefix}_epochs needs the train split size; use {prefix}_steps.'
      )
    return steps_from_epochs(epochs, num_train_examples, batch_size)
  return int(steps)


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses a config argument like 'fourier' or 'variant=conv,runlocal=True'.

  `spec` gives every accepted key and its default; the value's type comes
  from the default (bools accept true/false/1/0; a bare key means True for
  bools). A bare word that is not a key sets the first key of `spec` (the
  variant), so `get_config('digits')` works.

  Raises:
    ValueError: an unknown key or a value that does not parse, naming the
      accepted keys.
  """
  result = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return result
  keys = list(spec)
  for part in arg.split(','):
    part = part.strip()
    if not part:
      continue
    if '=' in part:
      key, value = (s.strip() for s in part.split('=', 1))
    elif part in spec and isinstance(spec[part], bool):
      key, value = part, 'true'
    else:
      key, value = keys[0], part
    if key not in spec:
      raise ValueError(
        f'Unknown config argument {key!r} in {arg!r}; accepted: {keys}.'
      )
    result[key] = _convert(value, spec[key], key)
  return result


def _convert(value, default, key):
  if isinstance(default, bool):
    lowered = value.lower()
    if lowered in ('1', 'true', 'yes'):
      return True
    if lowered in ('0', 'false', 'no'):
      return False
    raise ValueError(f'Config argument {key}={value!r} is not a bool.')
  if default is None or isinstance(default, str):
    return value
  try:
    return type(default)(value)
  except ValueError as e:
    raise ValueError(
      f'Config argument {key}={value!r} is not a {type(default).__name__}.'
    ) from e


def to_dict(config: ml_collections.ConfigDict | Mapping) -> dict[str, Any]:
  """A JSON-friendly plain dict of `config` (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out[key] = to_dict(value)
    elif isinstance(value, tuple):
      out[key] = list(value)
    else:
      out[key] = value
  return out


class _Absent:
  def __repr__(self):
    return '(absent)'


ABSENT = _Absent()  # The value of a key that one of two configs lacks.


def flatten(data: Mapping, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; an empty mapping stays as a value."""
  out = {}
  for key, value in data.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping) and value:
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def config_changes(
  old: Mapping, new: Mapping, ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
  """The (key, old value, new value) of every dotted key that differs.

  A key missing on one side has the value `config_utils.ABSENT` there; an
  empty section counts as missing. Keys in `ignore`, or under a section named
  in it, are left out.

  Args:
    old: e.g. the `config.json` a run was started with.
    new: the same for the run now (JSON values: lists, not tuples).
    ignore: dotted keys or section names, e.g. `('log_every_steps', 'run')`.
  """
  flat_old, flat_new = (
    {k: v for k, v in flatten(d).items() if v != {}} for d in (old, new)
  )
  changes = []
  for key in sorted(set(flat_old) | set(flat_new)):
    if any(key == i or key.startswith(i + '.') for i in ignore):
      continue
    before = flat_old.get(key, ABSENT)
    after = flat_new.get(key, ABSENT)
    if before != after:
      changes.append((key, before, after))
  return changes


def format_changes(changes, limit: int = 8) -> str:
  """'batch_size: 64 -> 32; schedule.base_lr: 0.002 -> 0.001'."""
  shown = [f'{key}: {old!r} -> {new!r}' for key, old, new in changes[:limit]]
  if len(changes) > limit:
    shown.append(f'and {len(changes) - limit} more')
  return '; '.join(shown)


def upgrade_config_record(record: Mapping[str, Any]) -> dict[str, Any]:
  """A `config.json` dict of an earlier version, in today's keys.

  Earlier versions kept how the model runs in several places: the
  experiment's `compute_dtype`, and `attention_impl`, `remat_*`, `scan_*`,
  `compute_dtype` and `grid_inputs` in the sections of the model config.
  They now live in `model.runtime` alone; this moves them there (the
  encoder's value first, since it is where they were set), so that runs of
  earlier versions resume and load. A record in today's keys is returned
  as it is.
  """
  record = dict(record)
  model = record.get('model')
  if not isinstance(model, Mapping):
    return record
  model = {
    key: dict(value) if isinstance(value, Mapping) else value
    for key, value in model.items()
  }
  runtime = dict(model.get('runtime') or {})
  legacy = False
  sections = sorted(
    (key for key, value in model.items() if isinstance(value, dict)),
    key=lambda key: key != 'encoder',
  )
  for section in sections:
    if section == 'runtime':
      continue
    for field in runtime_lib.FIELDS:
      if field in model[section]:
        value = model[section].pop(field)
        legacy = True
        if value is not None:
          runtime.setdefault(field, value)
  if 'compute_dtype' in record:
    runtime['compute_dtype'] = record.pop('compute_dtype')
    legacy = True
  if legacy:
    model['runtime'] = runtime_lib.config(**runtime).to_dict()
    record['model'] = model
  return record
