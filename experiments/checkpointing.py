"""Orbax checkpoints of the train state: atomic, keep the last N, async.

A checkpoint is written to a temporary directory and renamed when complete,
so a SIGKILL during a save leaves the previous checkpoints intact and the
half-written one is ignored (and cleaned up) on restart. Saves run in the
background unless `async_save=False`; `close()` waits for them.

Layout: `<workdir>/checkpoints/<step>/train_state/...`, holding the
`trainer.TrainState` as a dict (`step`, `params`, `state`, `opt_state`).
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

_ITEM = 'train_state'
CHECKPOINT_SUBDIR = 'checkpoints'


class Checkpointer:
  """Saves and restores `TrainState`s under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    """Opens (or creates) `<workdir>/checkpoints`.

    Args:
      workdir: the run's directory, relative or absolute.
      keep: how many of the newest checkpoints to keep.
      async_save: whether `save` returns while its files are written in the
        background; False makes each save final when it returns.
    """
    # Orbax needs absolute paths; users pass relative workdirs.
    self.directory = _absolute(workdir) / CHECKPOINT_SUBDIR
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
      ),
      item_handlers={_ITEM: ocp.StandardCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, train_state) -> None:
    """Starts saving `train_state` (a `TrainState`) as `step`; returns early."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        **{_ITEM: ocp.args.StandardSave(dict(train_state._asdict()))}
      ),
      force=True,
    )

  def restore(self, step: int, abstract_state, shardings):
    """Restores `step` into the structure, shapes and shardings given.

    Args:
      step: which checkpoint.
      abstract_state: a `TrainState` of `jax.ShapeDtypeStruct`s (from
        `jax.eval_shape`).
      shardings: a `TrainState` of shardings for every leaf.

    Returns:
      The restored `TrainState`.

    Raises:
      ValueError: if the checkpoint's parameter tree differs from the model's,
        naming the first mismatching entry and both shapes.
    """
    saved = self._manager.item_metadata(step)[_ITEM]
    source = str(self.directory / str(step))
    check_tree_matches(
      abstract_state.params, saved['params'], what='parameter', source=source
    )
    check_tree_matches(
      abstract_state.state, saved['state'], what='state', source=source
    )
    check_shapes_match(
      abstract_state.opt_state, saved['opt_state'], source=source
    )
    target = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      dict(abstract_state._asdict()),
      dict(shardings._asdict()),
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(**{_ITEM: ocp.args.StandardRestore(target)}),
    )[_ITEM]
    return type(abstract_state)(**restored)

  def reached_preemption(self, step: int) -> bool:
    """Whether all processes agreed to stop at `step` (multi-host SIGTERM)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def checkpoint_steps(path: str) -> tuple[epath.Path, list[int]] | None:
  """Our complete checkpoints under a workdir, `checkpoints/` or a step dir.

  Returns:
    (checkpoints directory, sorted steps); for a step directory, only its
    step. None if `path` holds none of ours.
  """
  path = _absolute(path)
  if not path.is_dir():
    return None
  for directory in (path / CHECKPOINT_SUBDIR, path):
    if directory.is_dir():
      steps = sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.name.isdigit() and (p / _ITEM).is_dir()
      )
      if steps:
        return directory, steps
  if path.name.isdigit() and (path / _ITEM).is_dir():
    return path.parent, [int(path.name)]
  return None


def find_checkpoint(path: str) -> tuple[epath.Path, int] | None:
  """Locates our checkpoint from a workdir, `checkpoints/` or a step dir.

  Returns:
    (checkpoints directory, step) of the newest checkpoint found (of the
    step directory given), or None if `path` is not one of ours.
  """
  found = checkpoint_steps(path)
  return None if found is None else (found[0], found[1][-1])


def is_checkpoint_dir(path: str) -> bool:
  return bool(path) and find_checkpoint(path) is not None


def load_params_and_state(
  path: str, step: int | None = None
) -> tuple[Any, Any]:
  """Loads `params` and `state` (as numpy) from one of our checkpoints.

  Args:
    path: a workdir, its `checkpoints/` directory or one step directory.
    step: which checkpoint; None: the newest (or the step directory's).

  Raises:
    FileNotFoundError: if no complete checkpoint (of `step`) is there; the
      message lists the steps there are.
  """
  found = checkpoint_steps(path)
  if found is None:
    raise FileNotFoundError(f'No checkpoint found under {path!r}.')
  directory, steps = found
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(
      f'No checkpoint of step {step} under {path!r}; the steps there are '
      f'{steps}.'
    )
  logging.info('Loading params from %s, step %d.', directory, step)
  with ocp.CheckpointManager(
    directory,
    # Read-only, with the options orbax would otherwise reset (and warn).
    options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False
    ),
    item_handlers={_ITEM: ocp.PyTreeCheckpointHandler()},
  ) as manager:
    metadata = manager.item_metadata(step)[_ITEM]
    target = {
      k: jax.tree.map(_numpy_restore_target, metadata[k])
      for k in ('params', 'state')
    }
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        **{
          _ITEM: ocp.args.PyTreeRestore(
            item=target,
            restore_args=jax.tree.map(
              lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target
            ),
            partial_restore=True,
          )
        }
      ),
    )[_ITEM]
  return restored['params'], restored.get('state', {})


def _numpy_restore_target(meta):
  return np.zeros(meta.shape, meta.dtype)


def _flatten(tree, prefix='') -> dict[str, tuple[int, ...]]:
  """{'module/name': shape} for a tree of arrays, shape structs or metadata.

  Works alike on haiku mappings, plain dicts, named tuples and orbax's
  metadata trees; `None` (an empty optax state) has no entries.
  """
  if tree is None:
    return {}
  if isinstance(tree, Mapping):
    items = [(str(k), v) for k, v in tree.items()]
  elif isinstance(tree, tuple) and hasattr(tree, '_asdict'):
    items = list(tree._asdict().items())
  elif isinstance(tree, (list, tuple)):
    items = [(str(i), v) for i, v in enumerate(tree)]
  else:
    return {prefix: tuple(getattr(tree, 'shape', np.shape(tree)))}
  out = {}
  for key, value in items:
    out.update(_flatten(value, f'{prefix}/{key}' if prefix else key))
  return out


def check_tree_matches(
  expected: Any, actual: Any, *, what: str = 'parameter', source: str = ''
) -> None:
  """Checks names and shapes of `actual` against the model's `expected`.

  Leaves may be arrays, `jax.ShapeDtypeStruct`s or orbax metadata (anything
  with `.shape`).

  Raises:
    ValueError: naming the first (in sorted order) missing, unexpected or
      differently shaped entry, with both shapes.
  """
  exp = _flatten(expected)
  act = _flatten(actual)
  where = f' in {source}' if source else ''
  for name in sorted(set(exp) | set(act)):
    if name not in act:
      raise ValueError(
        f'Checkpoint mismatch{where}: the model has {what} {name!r} with '
        f'shape {exp[name]}, but the checkpoint does not.'
      )
    if name not in exp:
      raise ValueError(
        f'Checkpoint mismatch{where}: the checkpoint has {what} {name!r} '
        f'with shape {act[name]}, which the model does not have.'
      )
    if exp[name] != act[name]:
      raise ValueError(
        f'Checkpoint mismatch{where}: {what} {name!r} has shape '
        f'{act[name]} in the checkpoint but {exp[name]} in the model.'
      )


def check_shapes_match(expected: Any, actual: Any, *, source: str = ''):
  """Compares only the sorted leaf shapes (for optimizer states, whose
  container types orbax does not keep).

  Raises:
    ValueError: if they differ, e.g. after changing the optimizer.
  """
  exp = sorted(_flatten(expected).values())
  act = sorted(_flatten(actual).values())
  if exp != act:
    raise ValueError(
      f'The optimizer state in {source} does not match this run: '
      f'{len(act)} arrays saved, {len(exp)} expected. Was the optimizer '
      'config changed? Use a new workdir, or `init_from` to load only the '
      'parameters.'
    )


def _absolute(path) -> epath.Path:
  """An absolute epath.Path; cloud paths (gs://...) are left as they are."""
  path = epath.Path(path)
  return path if '://' in str(path) else epath.Path(os.path.abspath(path))
