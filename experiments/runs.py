"""Our own training runs as ready models, and the one weight loader.

`load_run(workdir, step=None)` gives a model with its weights;
`load_weights(path)` gives only (params, state) from either kind of source:
our run (a workdir, its `checkpoints/` or a step directory) or a DeepMind
released file (`.pickle`/`.pystate`, or an `.npz` converted from one).
`is_run(path)` is the decision between the two that every loader makes.

  from experiments import runs

  run = runs.load_run('runs/digits')  # The newest checkpoint.
  logits = run(images=images)  # [B, 10], jitted, is_training=False.
  run.step, run.experiment, run.config.batch_size
  runs.load_run('runs/digits', step=500)  # One of `runs.steps('runs/digits')`.

This is `perceiver_io.pretrained.load` for a workdir of ours: the result has
the same `model`, `params`, `state`, `config`, `init`, `apply` and
`__call__`. The model is built by the experiment that trained the run (its
module's `build_model(config)`, named by the `run` entry the trainer writes
into `config.json`) from the run's own `config.json`, at the run's
`compute_dtype`. `run.checkpoint_dir` is the step directory, which
`--config.init_from` takes to start another run from these weights.

`perceiver_io` stays free of orbax: this module lives in `experiments/`.
"""

import importlib
import os
from typing import Any
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from experiments import checkpointing
from experiments import metrics_writer
from perceiver_io import pretrained

# How far above a given path (a step dir's `train_state/` is 3 levels below
# the workdir) `config.json` is searched for.
_MAX_LEVELS = 4


class Run:
  """A model of one of our runs with loaded weights; calling it runs
  jitted inference.

  Attributes:
    model: the experiment's model (`init`, `apply`).
    params, state: numpy trees from the checkpoint.
    config: the run's config (`config.json`, resolved values included, the
      `run` entry left out), lists turned back into tuples.
    experiment: the module that trained it, e.g. 'experiments.masked_lm.train'.
    step: the checkpoint's step.
    workdir: the run's directory (the one holding `config.json`).
    checkpoint_dir: the step directory; `config.init_from` accepts it.
  """

  def __init__(
    self,
    *,
    model,
    params,
    state,
    config,
    experiment,
    step,
    workdir,
    checkpoint_dir,
  ):
    self.model = model
    self.params = params
    self.state = state
    self.config = config
    self.experiment = experiment
    self.step = step
    self.workdir = workdir
    self.checkpoint_dir = checkpoint_dir
    self._apply = jax.jit(self.model.apply, static_argnames=('is_training',))

  @property
  def name(self) -> str:
    """The architecture (as `PretrainedModel.name`), if the model has one."""
    return getattr(self.model, 'name', self.experiment)

  def init(self, rng, **inputs):
    return self.model.init(rng, **inputs)

  def apply(self, params, state, rng, *, is_training=False, **inputs):
    return self.model.apply(
      params, state, rng, is_training=is_training, **inputs
    )

  def __call__(self, **inputs):
    """Inference with the loaded weights (the model's keyword inputs)."""
    outputs, _ = self._apply(
      self.params, self.state, None, is_training=False, **inputs
    )
    return outputs

  def __repr__(self):
    return (
      f'Run({self.workdir!r}, step={self.step}, experiment={self.experiment!r})'
    )


def find_config(path: str) -> str | None:
  """The `config.json` in or above `path` (a workdir, `checkpoints/`, a step
  directory or deeper), or None."""
  directory = os.path.abspath(os.path.expanduser(path))
  for _ in range(_MAX_LEVELS):
    candidate = os.path.join(directory, metrics_writer.CONFIG_FILE)
    if os.path.isfile(candidate):
      return candidate
    directory = os.path.dirname(directory)
  return None


def read_config(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The run config of the run holding `path`, and its `run` entry.

  Returns:
    (config, run): the config with lists as tuples (as the config files
    write them), and the `run` entry ({} for runs from before it existed).

  Raises:
    FileNotFoundError: if there is no `config.json` in or above `path`.
    ValueError: if it is corrupt.
  """
  config_path = find_config(path)
  if config_path is None:
    raise FileNotFoundError(_not_a_run(path))
  data = metrics_writer.read_config(os.path.dirname(config_path))
  run = data.pop(metrics_writer.RUN_KEY, None) or {}
  return ml_collections.ConfigDict(_tuples(data)), dict(run)


def steps(path: str) -> list[int]:
  """The steps of the complete checkpoints of the run at `path` ([] if
  none)."""
  found = checkpointing.checkpoint_steps(_absolute(path))
  return [] if found is None else found[1]


class Weights(NamedTuple):
  """What `load_weights` read.

  Attributes:
    params, state: nested dicts {module: {name: np.ndarray}}.
    step: the checkpoint's step for our runs; None for a released file.
    source: where they came from, for messages: the file, or the step
      directory of a run.
  """

  params: Any
  state: Any
  step: int | None
  source: str


def is_run(path: str) -> bool:
  """Whether `path` is one of our runs rather than a released file.

  A run is a directory: a workdir, its `checkpoints/` or a step directory
  (also on cloud storage). Anything else is taken for a released checkpoint
  file (`perceiver_io.pretrained`). A missing path is not a run.
  """
  path = _absolute(path)
  return checkpointing.is_checkpoint_dir(path) or os.path.isdir(path)


def load_weights(path: str, step: int | None = None) -> Weights:
  """(params, state) of our run or of a released checkpoint file.

  Args:
    path: our run's workdir, its `checkpoints/` or a step directory; or a
      released `.pickle`/`.pystate`, or an `.npz` (`pretrained.convert`).
    step: our checkpoint's step; None: the newest (or the step directory's).
      Released files have no steps.

  Returns:
    `Weights(params, state, step, source)`, numpy trees.

  Raises:
    FileNotFoundError: nothing is at `path`; a directory holds no complete
      checkpoint; or there is no checkpoint of `step` (the message lists
      the steps there are).
    ValueError: `step` given for a released file; or an `.npz` that cannot
      be read or holds no parameter mapping.
    pickle.UnpicklingError: a pickle that is empty, truncated, not a
      pickle or asks to run code (`safe_pickle`). Every message names the
      file.
  """
  path = _absolute(path)
  if is_run(path):
    found = checkpointing.checkpoint_steps(path)
    if found is None:
      raise FileNotFoundError(
        f'{path} is a directory without checkpoints; give a workdir of a '
        'run that saved one, a step directory in it, or a released file.'
      )
    directory, available = found
    step = available[-1] if step is None else int(step)
    params, state = checkpointing.load_params_and_state(path, step)
    return Weights(
      params=params,
      state=state,
      step=step,
      source=os.path.join(str(directory), str(step)),
    )
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'No checkpoint at {path}: no such file or directory. Give our run '
      "(a workdir or a step directory in it) or a released '.pickle', "
      "'.pystate' or '.npz' file."
    )
  if step is not None:
    raise ValueError(
      f'{path} is a released checkpoint file, which has no steps; step='
      f'{step} applies only to our runs. Leave the step out.'
    )
  params, state = pretrained.load_params(path)
  return Weights(params=params, state=state, step=None, source=path)


def load_run(path: str, step: int | None = None, experiment: str | None = None):
  """Loads one of our runs (its newest checkpoint, or `step`) as a `Run`.

  Args:
    path: the run's workdir (or its `checkpoints/`, or a step directory).
    step: the checkpoint's step; None: the newest.
    experiment: the module that trained the run, e.g.
      'experiments.masked_lm.train'. Needed only for runs whose `config.json` does
      not say (written before it recorded it); if both are given, they must
      agree.

  Returns:
    A `Run`: `run(**inputs)` predicts; `.model`, `.params`, `.state`,
    `.config`, `.step`, `.checkpoint_dir`.

  Raises:
    FileNotFoundError: `path` does not exist, is not a run directory (no
      `config.json` in or above it), has no checkpoint yet, or none of
      `step` (the message lists the steps there are).
    ValueError: a corrupt `config.json`, an unknown or contradicting
      experiment, or weights that do not fit the model built from the config.
  """
  path = _absolute(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No run at {path}: no such file or directory.')
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f'{path} is a file, not a run directory (a --workdir). For a released '
      'checkpoint file use perceiver_io.pretrained.load.'
    )
  config, run_entry = read_config(path)
  workdir = os.path.dirname(find_config(path))
  found = checkpointing.checkpoint_steps(path)
  if found is None:
    raise FileNotFoundError(
      f'The run {workdir} has no checkpoint yet (nothing complete in '
      f'{os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)}); it saves '
      f'every checkpoint_every_steps '
      f'({config.get("checkpoint_every_steps", "?")}) and at the end.'
    )
  directory, available = found
  if step is None:
    step = available[-1]
  elif int(step) not in available:
    raise FileNotFoundError(
      f'The run {workdir} has no checkpoint of step {step}; the steps there '
      f'are {available}.'
    )
  step = int(step)
  module_name = _experiment(run_entry.get('experiment'), experiment, workdir)
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(
      f'The run {workdir} was trained by {module_name!r}, which cannot be '
      f'imported ({e}).'
    ) from e
  if not hasattr(module, 'build_model'):
    raise ValueError(
      f'{module_name} has no build_model(config), so load_run cannot build '
      f'the model of {workdir}.'
    )
  model = module.build_model(config)
  ckpt = os.path.join(str(directory), str(step))
  params, state = checkpointing.load_params_and_state(ckpt)
  return Run(
    model=model,
    params=jax.tree.map(np.asarray, params),
    state=jax.tree.map(np.asarray, state),
    config=config,
    experiment=module_name,
    step=step,
    workdir=workdir,
    checkpoint_dir=ckpt,
  )


def _experiment(recorded, requested, workdir):
  if recorded and requested and recorded != requested:
    raise ValueError(
      f'The run {workdir} was trained by {recorded}, not {requested}.'
    )
  name = recorded or requested
  if not name:
    raise ValueError(
      f'{os.path.join(workdir, metrics_writer.CONFIG_FILE)} does not say '
      'which experiment trained the run (runs started before it was '
      "recorded); pass experiment=, e.g. 'experiments.image_classification.train'."
    )
  return name


def _not_a_run(path):
  return (
    f'{path} is not a run directory: there is no config.json in it or above '
    'it. Give the --workdir of a training run (or its checkpoints/ or a '
    'step directory in it).'
  )


def _tuples(value):
  """JSON lists back to tuples, as the config files write them."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _absolute(path) -> str:
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))
