"""The shared training and evaluation loop, and the `Task` every experiment fills.

An experiment (image classification, masked LM, optical flow, ...) builds a
`Task` -- its model, data iterators, loss and eval metrics -- and calls
`train_and_evaluate(config, workdir, task)`. Everything else lives here: the
explicit train state, the pure jitted `update`, data parallelism with a mesh
and `NamedSharding`, gradient accumulation, the optimizer and schedule, orbax
checkpoints with exact resumption, metrics files and the progress line.

Shape letters: B global batch, A gradient-accumulation steps.

# The config keys this loop reads

`config_utils.add_trainer_fields(config)` adds all of them with defaults, so a
config file only sets what differs. Durations may be given in steps or epochs.

  seed                    int, the one seed of the run (init, data, dropout).
  batch_size              int, the GLOBAL train batch, whatever the devices.
  eval_batch_size         int or None (None: `batch_size`); global.
  num_train_steps         int; or -1 with `num_epochs` set (needs
                          `Task.num_train_examples`). Resolved at run time by
                          `config_utils.resolve_steps`.
  num_epochs              float or None.
  log_every_steps         int; train metrics, progress line, NaN check.
  eval_every_steps        int; 0 or -1: only at the end. Always at the end.
  checkpoint_every_steps  int; also saved at the end and on SIGTERM.
  checkpoint_keep         int, how many recent checkpoints to keep.
  init_from               str; '' or our workdir/checkpoint dir or a
                          DeepMind release file (.pystate/.pickle/.npz).
                          Used only when the workdir has no checkpoint.
  mode                    'train' or 'eval' (eval only: restore or load
                          `init_from`, evaluate once, write `eval/*`).
  grad_accum_steps        int, micro-batches per step (A); B % (A * devices)
                          must be 0.
  optimizer.*             see `optimizers.build_optimizer`.
  schedule.*              see `optimizers.build_schedule`.
  model.*, data.*         the task's own sections; the loop does not read
                          them.

# Outputs in `workdir`

  config.json             the resolved config (after steps are resolved),
                          and under `run` the experiment module and the
                          `--config` given (`experiments.runs.load_run`
                          reads them). A resume must use the same config
                          (see `RESUMABLE_KEYS`); with
                          `allow_config_change` the old file is kept as
                          `config.<step>.json`.
  metrics.jsonl           one JSON object per logged step: `step`, train
                          metrics, `eval/...` metrics when evaluated at that
                          step; the first line also has `num_devices`,
                          `num_processes` and `num_params`.
  tensorboard/            TensorBoard scalar summaries of the same numbers.
  checkpoints/<step>/     orbax checkpoints of the `TrainState`.

# Resumption

A restart with the same command restores the latest checkpoint and continues.
The loop draws the rng of step `s` as `fold_in(PRNGKey(seed), s)` and asks the
task for `train_batches(s)`, so the resumed run computes exactly what an
uninterrupted run would: on CPU its final metrics are bitwise identical.
Records after the restored step are dropped from `metrics.jsonl`.
"""

import contextlib
import dataclasses
import os
import pickle
import signal
import sys
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import checkpointing
from experiments import config_utils
from experiments import host_memory
from experiments import metrics_writer
from experiments import optimizers
from experiments import parallel
from experiments import runs

Batch = Mapping[str, np.ndarray]
Metrics = dict[str, Any]
# loss_fn(params, state, batch, rng, is_training) -> (loss, (metrics, state))
LossFn = Callable[..., tuple[jax.Array, tuple[Metrics, Any]]]
# eval_fn(params, state, batch) -> {name: per-batch SUM, ..., 'count': n}
EvalFn = Callable[[Any, Any, Batch], Metrics]


@dataclasses.dataclass(frozen=True)
class Task:
  """What an experiment supplies to `train_and_evaluate`.

  Attributes:
    model: an object with pure `init(rng, *, is_training, **inputs) ->
      (params, state)` and `apply(params, state, rng, *, is_training,
      **inputs) -> (outputs, state)`, e.g. `perceiver_io.models.build(...)`.
      The loop only calls `init`; `loss_fn`/`eval_fn` call `apply`.
    init_batch: the model's keyword inputs for `init`, e.g. `{'images':
      float32[b, H, W, C]}` (numpy; any small batch size b). Used only for
      shapes and dtypes: the loop calls `model.init(rng, is_training=True,
      **init_batch)` under `jax.eval_shape` and `jax.jit`.
    train_batches: `train_batches(start_step)` returns an endless iterator of
      batches for steps `start_step, start_step + 1, ...`. Each batch is a
      dict of numpy arrays with fixed keys and shapes whose leading axis is
      this process's share of the global batch, `config.batch_size //
      jax.process_count()` (on one host: the whole global batch; see
      `parallel.local_batch_size`). The order must depend only on
      (`config.seed`, step), so that a resumed run sees the same batches.
    loss_fn: `loss_fn(params, state, batch, rng, is_training) -> (loss,
      (metrics, new_state))`; pure and jittable. `loss` is the scalar mean
      to minimise; `metrics` a dict of scalars (means over the batch) that is
      logged as is; `new_state` the updated model state (e.g. BatchNorm).
      Called with `is_training=True` on each micro-batch.
    eval_batches: `eval_batches()` returns a finite iterable of batches of
      this process's share of `eval_batch_size` (fixed shapes: the last one
      padded, with a float `mask` key of 1 for real and 0 for padded
      examples). None: no evaluation.
    eval_fn: `eval_fn(params, state, batch) -> metrics`; pure and jittable.
      Each value is a SUM over the batch's real (mask == 1) examples, of any
      fixed shape (a scalar, or e.g. a confusion matrix), and the dict has a
      `count` entry, the number of real examples. The loop adds them up over
      the whole split in float64 on the host.
    eval_finalize: optional host-side `eval_finalize(sums) -> {name: float}`
      for metrics that are not means (F1, Matthews, Pearson ...). Default:
      every scalar sum divided by `count`. Keys get an `eval/` prefix.
    num_train_examples: size of the train split, to resolve
      `config.num_epochs` to steps. None if the task has no epochs.
    make_optimizer: optional `make_optimizer(config, num_train_steps) ->
      optax.GradientTransformation`; default `optimizers.build_optimizer`.
    load_init_params: optional `load_init_params(path) -> (params, state)`
      that loads `config.init_from`, whatever it is (e.g. a pretrained model
      merged into a fresh init of another head). Default: our checkpoint
      directories, else `perceiver_io.pretrained.load_params`. The result
      must match the model's parameter tree (checked, naming the first
      mismatch). Every process calls it and must get the same values.
    eval_name: prefix of eval metric keys in `metrics.jsonl` (default
      'eval', giving `eval/accuracy`).
  """

  model: Any
  init_batch: Mapping[str, np.ndarray]
  train_batches: Callable[[int], Iterator[Batch]]
  loss_fn: LossFn
  eval_batches: Callable[[], Iterable[Batch]] | None = None
  eval_fn: EvalFn | None = None
  eval_finalize: Callable[[dict[str, np.ndarray]], Metrics] | None = None
  num_train_examples: int | None = None
  make_optimizer: (
    Callable[[ml_collections.ConfigDict, int], optax.GradientTransformation]
    | None
  ) = None
  load_init_params: Callable[[str], tuple[Any, Any]] | None = None
  eval_name: str = 'eval'


class TrainState(NamedTuple):
  """Everything a step reads and writes; the checkpointed pytree."""

  step: jax.Array  # int32 scalar: the number of updates applied so far.
  params: Any
  state: Any  # Haiku state (BatchNorm statistics), often empty.
  opt_state: Any


# --- Update step ---


def make_update_fn(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  base_rng: jax.Array,
  grad_accum_steps: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns the pure `update(train_state, batch) -> (train_state, metrics)`.

  The step's rng is `fold_in(base_rng, step)`; micro-batch j of A uses
  `fold_in(that, j)`. With A > 1 the global batch [B, ...] is viewed as
  [B / A, A, ...] and micro-batch j is column j, so each device keeps its
  own rows and no data moves between devices. Gradients and metrics are
  averaged over micro-batches; the model state is threaded through them.

  Metrics returned: the task's metrics, plus `loss`, `grad_norm` (global
  norm before clipping) and `learning_rate` when the optimizer exposes it.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(train_state, batch):
    rng = jax.random.fold_in(base_rng, train_state.step)
    if grad_accum_steps == 1:
      (loss, (metrics, new_state)), grads = grad_fn(
        train_state.params, train_state.state, batch, rng, True
      )
    else:
      A = grad_accum_steps

      def split(x):  # [B, ...] -> [A, B / A, ...]
        return jnp.moveaxis(x.reshape(x.shape[0] // A, A, *x.shape[1:]), 1, 0)

      micro_batches = jax.tree.map(split, dict(batch))

      def accumulate(carry, inputs):
        grads_sum, model_state = carry
        j, micro_batch = inputs
        (loss, (metrics, model_state)), grads = grad_fn(
          train_state.params,
          model_state,
          micro_batch,
          jax.random.fold_in(rng, j),
          True,
        )
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, model_state), (loss, metrics)

      zeros = jax.tree.map(jnp.zeros_like, train_state.params)
      (grads, new_state), (losses, metrics) = jax.lax.scan(
        accumulate,
        (zeros, train_state.state),
        (jnp.arange(A), micro_batches),
      )
      grads = jax.tree.map(lambda g: g / A, grads)
      loss = jnp.mean(losses)
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    updates, opt_state = optimizer.update(
      grads, train_state.opt_state, train_state.params
    )
    params = optax.apply_updates(train_state.params, updates)
    metrics = dict(metrics)
    metrics['loss'] = loss
    metrics['grad_norm'] = optax.tree.norm(grads)
    lr = optimizers.current_learning_rate(opt_state)
    if lr is not None:
      metrics['learning_rate'] = lr
    new_train_state = TrainState(
      step=train_state.step + 1,
      params=params,
      state=new_state,
      opt_state=opt_state,
    )
    return new_train_state, metrics

  return update


# --- Evaluation ---


def evaluate(
  task: Task,
  eval_step: Callable[..., Metrics],
  train_state: TrainState,
  batch_sharding: jax.sharding.Sharding,
) -> Metrics:
  """Runs `task.eval_fn` over `task.eval_batches()`; returns `eval/*` metrics.

  Raises:
    ValueError: if the split is empty or the eval_fn has no `count`.
  """
  sums = None
  for batch in task.eval_batches():
    batch = parallel.make_global_batch(batch, batch_sharding)
    out = jax.device_get(
      eval_step(train_state.params, train_state.state, batch)
    )
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  if sums is None:
    raise ValueError('The eval split gave no batches.')
  if 'count' not in sums:
    raise ValueError("eval_fn must return a 'count' entry (real examples).")
  if task.eval_finalize is not None:
    results = task.eval_finalize(sums)
  else:
    count = max(float(sums['count']), 1.0)
    results = {
      k: v / count for k, v in sums.items() if k != 'count' and v.ndim == 0
    }
    results['count'] = sums['count']
  return {f'{task.eval_name}/{k}': float(v) for k, v in results.items()}


# --- Setup helpers ---


def _init_train_state(task, optimizer, rng):
  params, state = task.model.init(rng, is_training=True, **task.init_batch)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    state=state,
    opt_state=optimizer.init(params),
  )


def _load_initial_params(config, task, abstract_state):
  """Loads `config.init_from` and checks it against the model's tree."""
  path = config.init_from
  try:
    if task.load_init_params is not None:
      params, state = task.load_init_params(path)
    else:
      params, state, _, _ = runs.load_weights(path)
  except (OSError, ValueError, pickle.UnpicklingError) as e:
    if str(e).startswith('config.init_from'):  # The task's loader said so.
      raise
    # The loaders name the file; say which setting pointed at it.
    raise _with_context(e, f'config.init_from={path!r}') from e
  checkpointing.check_tree_matches(
    abstract_state.params, params, what='parameter', source=path
  )
  if jax.tree.leaves(abstract_state.state):
    checkpointing.check_tree_matches(
      abstract_state.state, state, what='state', source=path
    )
  else:
    state = abstract_state.state
  return params, state


def _with_context(error, context):
  """`error` again, of the same type where possible, prefixed by `context`."""
  text = f'{context}: {error}'
  try:
    return type(error)(text)
  except Exception:  # noqa: BLE001 - an exception type with other arguments.
    return ValueError(text)


def check_compute_dtype(config: ml_collections.ConfigDict) -> None:
  """Refuses a float16 `model.runtime.compute_dtype` for training.

  float16 gradients underflow without loss scaling, which this trainer does
  not do; bfloat16 has float32's range. (Inference may use float16.)
  """
  model = config.get('model') or {}
  runtime = model.get('runtime') or {}
  dtype = runtime.get('compute_dtype', 'float32')
  if dtype == 'float16':
    raise ValueError(
      'config.model.runtime.compute_dtype=float16 needs loss scaling, which '
      "the trainer does not do; use 'bfloat16' (or 'float32')."
    )


def check_workdir(workdir: str) -> None:
  """Creates `workdir` if needed.

  Raises:
    NotADirectoryError: if it is a file (naming it and what to pass).
    OSError: if it cannot be created, naming it.
  """
  if '://' in str(workdir):
    return  # Cloud storage has no directories to check.
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
      f'The workdir {workdir} is a file, not a directory. Pass --workdir a '
      'new directory, or the workdir of a run to resume.'
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise _with_context(e, f'Cannot create the workdir {workdir}') from e


# Keys that may differ when a run resumes: when and how it logs, evaluates
# and saves, and where eval batches and the initial weights come from
# (`init_from` is only read by a fresh run). They change what is recorded,
# not what is computed. `model.runtime` (how the model runs: attention
# implementation, compute dtype, remat...) changes the results by round-off
# at most and never the parameters. Everything else (the batch size, the
# model, the data, the optimizer and also `num_train_steps`/`num_epochs`,
# which set the learning-rate schedule) needs `allow_config_change`.
RESUMABLE_KEYS = (
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'checkpoint_keep',
  'checkpoint_async',
  'eval_batch_size',
  'mode',
  'init_from',
  'data.data_dir',
  'model.runtime',
  metrics_writer.RUN_KEY,
)


def _experiment_of(task) -> str | None:
  """The module that defined the task ('experiments.masked_lm.train'), or None."""
  return _module_of(task.loss_fn)


def _module_of(fn) -> str | None:
  """`fn.__module__`, naming `__main__` by the module run with `-m`."""
  module = getattr(fn, '__module__', None)
  if module == '__main__':
    spec = getattr(sys.modules['__main__'], '__spec__', None)
    module = spec.name if spec is not None else None
  return module


def _record_config(
  config, workdir, writer, *, num_train_steps, run_info, allow_change
):
  """Writes config.json; on resume, first checks it against the old one.

  Raises:
    ValueError: if the workdir has a checkpoint and its config.json differs
      from `config` in keys outside `RESUMABLE_KEYS`, unless `allow_change`.
  """
  new = metrics_writer.config_record(
    config, run_info, num_train_steps=num_train_steps
  )
  found = checkpointing.find_checkpoint(
    os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)
  )
  old = metrics_writer.read_config(workdir) if found else None
  if old is not None:
    step = found[1]
    changes = config_utils.config_changes(old, new, ignore=RESUMABLE_KEYS)
    if changes and not allow_change:
      raise ValueError(
        f'The config differs from the one the run in {workdir} was started '
        f'with (its config.json; checkpoint at step {step}): '
        f'{config_utils.format_changes(changes)}. Resume with the same '
        'config, use a new --workdir, or pass --allow_config_change to '
        f'continue with the new one (the old one is kept as config.{step}.json).'
      )
    if changes:
      kept = writer.keep_config(step)
      logging.warning(
        'Resuming at step %d with a changed config (%s); the old one is %s.',
        step,
        config_utils.format_changes(changes),
        kept,
      )
  writer.write_config(config, run_info, num_train_steps=num_train_steps)


def _last_metrics(workdir, step, eval_name):
  """The metrics already logged up to `step` (for a run resumed at its end),
  with the steps they were measured at (`train_step`, `eval_step`)."""
  final = {'step': step}
  for record in metrics_writer.read_metrics(workdir):
    if record['step'] <= step:
      _add_record(final, record, eval_name)
  final['step'] = step
  return final


def _add_record(final, record, eval_name):
  """Updates `final` with a metrics record and the step of each group."""
  train = {
    k: v
    for k, v in record.items()
    if '/' not in k and not k.startswith('num_') and k != 'step'
  }
  evals = _items(record, eval_name)
  final.update(train)
  final.update(evals)
  if train:
    final['train_step'] = record['step']
  if evals:
    final['eval_step'] = record['step']


def _ordered(final):
  """`step`, `train_step`, `eval_step` first: a preempted run's last train
  and eval metrics come from earlier steps than the one it stopped at."""
  keys = [k for k in ('step', 'train_step', 'eval_step') if k in final]
  return {**{k: final[k] for k in keys}, **final}


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step.

  With several processes, all must stop at the same step: there JAX's
  coordination service catches the signal and orbax's
  `reached_preemption(step)` agrees on the step, so no handler is installed.
  """

  def __init__(self, checkpointer):
    self._checkpointer = checkpointer
    self._local = False
    self._previous = None

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._checkpointer.reached_preemption(step)
    return self._local

  def __enter__(self):
    if jax.process_count() > 1:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint, then exiting.')
    self._local = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(history):
  """Raises FloatingPointError naming the first step with a bad loss."""
  if not history:
    return
  steps, values = zip(*history, strict=True)
  values = jax.device_get(values)
  for step, (loss, grad_norm) in zip(steps, values, strict=True):
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      raise FloatingPointError(
        f'Non-finite training loss at step {step}: loss={loss}, '
        f'grad_norm={grad_norm}. Stopping without checkpointing this state; '
        'the last good checkpoint is kept. Try a lower learning rate, '
        'gradient clipping or float32 compute.'
      )


# --- The loop ---


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  task: Task,
  *,
  allow_config_change: bool = False,
  run_info: Mapping[str, Any] | None = None,
) -> Metrics:
  """Trains (or only evaluates) `task` as `config` says, writing to `workdir`.

  Resumes from the latest checkpoint in `workdir/checkpoints` if there is
  one, else starts from `config.init_from` if set, else from a fresh init.
  A SIGTERM makes the loop save a checkpoint at the current step and return
  early with `preempted=True` in the result.

  Args:
    config: the experiment config (see the module docstring for the keys the
      loop reads). `num_train_steps` is resolved from `num_epochs` here when
      needed; the config is not modified.
    workdir: output directory (created). Reusing it resumes the run.
    task: the experiment's model, data, loss and metrics.
    allow_config_change: resume even if `config` differs from the run's
      `config.json` in more than `RESUMABLE_KEYS`; the old file is kept as
      `config.<step>.json`.
    run_info: what started the run, stored as `config.json`'s `run` entry
      (`experiment`: the module whose `build_model(config)` builds the
      model, e.g. 'experiments.masked_lm.train'; `config`: the `--config` flag).
      Default: the module that defined `task.loss_fn`.

  Returns:
    The final metrics: `step` (where the run stopped), the last logged
    train metrics and the step they were measured at (`train_step`), the
    last `eval/*` metrics and theirs (`eval_step`; after a preemption both
    can be earlier than `step`), and `preempted` (bool).

  Raises:
    ValueError: on resume, a config that differs from the run's config.json
      outside `RESUMABLE_KEYS` (naming the keys, old -> new) unless
      `allow_config_change`; bad config values (batch size not divisible by
      the number of devices times `grad_accum_steps`, unknown `mode`, no eval
      data in eval mode), or a checkpoint or `init_from` file that does not
      match the model (naming the first mismatching parameter and shapes).
    FloatingPointError: a NaN or Inf loss or gradient norm; names the step.
  """
  # --- Config and devices ---
  check_workdir(workdir)
  mesh = parallel.make_mesh()
  num_devices = mesh.devices.size
  num_steps = config_utils.resolve_steps(config, task.num_train_examples)
  grad_accum = int(config.get('grad_accum_steps', 1) or 1)
  parallel.check_batch_size(config.batch_size, 'batch_size', grad_accum)
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  parallel.check_batch_size(eval_batch_size, 'eval_batch_size')
  mode = config.get('mode', 'train')
  if mode not in ('train', 'eval'):
    raise ValueError(f"config.mode must be 'train' or 'eval'; got {mode!r}.")
  check_compute_dtype(config)
  writer = metrics_writer.MetricsWriter(workdir)
  _record_config(
    config,
    workdir,
    writer,
    num_train_steps=num_steps,
    run_info=run_info or {'experiment': _experiment_of(task)},
    allow_change=allow_config_change,
  )

  # --- Initial train state (shapes first, then values) ---
  if task.make_optimizer is not None:
    optimizer = task.make_optimizer(config, num_steps)
  else:
    optimizer = optimizers.build_optimizer(
      config, num_steps, task.num_train_examples
    )
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, train_rng = jax.random.split(base_rng)
  init_fn = lambda rng: _init_train_state(task, optimizer, rng)  # noqa: E731
  abstract_state = jax.eval_shape(init_fn, init_rng)
  replicated = parallel.replicated_sharding(mesh)
  state_shardings = jax.tree.map(lambda _: replicated, abstract_state)
  batch_sharding = parallel.batch_sharding(mesh)

  ckpt = checkpointing.Checkpointer(
    workdir,
    keep=config.get('checkpoint_keep', 3),
    async_save=config.get('checkpoint_async', True),
  )
  # Pending async saves finish, and files close, even when the loop fails.
  with contextlib.closing(ckpt), contextlib.closing(writer):
    # --- Restore, or initialise ---
    restored_step = ckpt.latest_step()
    if restored_step is not None:
      logging.info(
        'Resuming from %s at step %d.', ckpt.directory, restored_step
      )
      train_state = ckpt.restore(restored_step, abstract_state, state_shardings)
    else:
      train_state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
      if config.get('init_from'):
        params, model_state = _load_initial_params(config, task, abstract_state)
        params, model_state = jax.device_put((params, model_state), replicated)
        train_state = train_state._replace(
          params=params,
          state=model_state,
          opt_state=jax.jit(optimizer.init, out_shardings=replicated)(params),
        )
    start_step = int(jax.device_get(train_state.step))
    writer.resume_at(start_step)
    num_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    writer.write_header(
      num_devices=num_devices,
      num_processes=jax.process_count(),
      num_params=num_params,
    )
    logging.info(
      'Devices: %d (%d processes); parameters: %d; steps: %d.',
      num_devices,
      jax.process_count(),
      num_params,
      num_steps,
    )

    eval_step = None
    if task.eval_fn is not None and task.eval_batches is not None:
      eval_step = jax.jit(task.eval_fn, out_shardings=replicated)

    # --- Eval only ---
    if mode == 'eval':
      if eval_step is None:
        raise ValueError('config.mode=eval needs a task with eval data.')
      results = evaluate(task, eval_step, train_state, batch_sharding)
      writer.write(start_step, results)
      logging.info('Eval at step %d: %s', start_step, results)
      return {
        'step': start_step,
        'eval_step': start_step,
        **results,
        'preempted': False,
      }

    # --- Train ---
    update = jax.jit(
      make_update_fn(task.loss_fn, optimizer, train_rng, grad_accum),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    )
    eval_every = config.eval_every_steps
    ckpt_every = config.checkpoint_every_steps
    log_every = config.log_every_steps
    progress = metrics_writer.Progress(
      num_steps, config.batch_size, start_step=start_step
    )
    final = _last_metrics(workdir, start_step, task.eval_name)
    history = []  # (step, (loss, grad_norm)) on device, checked for NaN.
    # XLA:CPU runs each fake device's share on a shared thread pool, and two
    # programs with collectives in flight at once (async dispatch) can starve
    # each other into a rendezvous timeout; on CPU, finish each step first.
    sync_each_step = jax.default_backend() == 'cpu' and num_devices > 1
    preempted = False
    batches = task.train_batches(start_step)
    with _Preemption(ckpt) as preemption:
      for step in range(start_step + 1, num_steps + 1):
        # Step `step` consumes the batch of index `step - 1`.
        batch = parallel.make_global_batch(next(batches), batch_sharding)
        train_state, metrics = update(train_state, batch)
        if sync_each_step:
          train_state.step.block_until_ready()
        if step == start_step + 1:
          # The first step compiles; rates and the ETA start after it.
          train_state.step.block_until_ready()
          progress.mark_steady(step)
        history.append((step, (metrics['loss'], metrics['grad_norm'])))
        last = step == num_steps
        record = {}
        if step % log_every == 0 or last:
          _check_finite(history)
          history = []
          record.update(
            {k: float(v) for k, v in jax.device_get(metrics).items()}
          )
          progress.update(step)
          record.update(progress.rates())
          logging.info(progress.line(step, record))
        if eval_step is not None and (
          last or (eval_every > 0 and step % eval_every == 0)
        ):
          record.update(evaluate(task, eval_step, train_state, batch_sharding))
          logging.info(
            'Eval at step %d: %s', step, _items(record, task.eval_name)
          )
        if record:
          writer.write(step, record)
          _add_record(final, {'step': step, **record}, task.eval_name)
          final['step'] = step
        stop = preemption.requested(step)
        if last or step % ckpt_every == 0 or stop:
          _check_finite(history)
          history = []
          ckpt.save(step, train_state)
        if stop and not last:
          preempted = True
          final['step'] = step
          logging.warning('Preempted: checkpoint saved at step %d.', step)
          break
    final['preempted'] = preempted
    return _ordered(final)


def _items(record, prefix):
  return {k: v for k, v in record.items() if k.startswith(prefix + '/')}


# --- Command line (shared by every experiment's absl main) ---


def define_flags() -> None:
  """Defines `--config` (locked: unknown keys are errors), `--workdir`,
  `--allow_config_change` and `--jax_distributed`. Call at import time of an
  experiment's `__main__`."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:arg].', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Output directory; reuse to resume.')
  flags.DEFINE_bool(
    'allow_config_change',
    False,
    'Resume a run whose config.json differs from --config (the old one is '
    'kept as config.<step>.json). Without it such a resume is refused.',
  )
  flags.DEFINE_bool(
    'jax_distributed',
    False,
    'Call jax.distributed.initialize() (multi-host; it is also called when '
    'a coordinator address, SLURM or Open MPI is detected).',
  )
  flags.mark_flags_as_required(['config', 'workdir'])


def run_main(
  config: ml_collections.ConfigDict,
  workdir: str,
  build_task: Callable[[ml_collections.ConfigDict], Task],
) -> Metrics:
  """What every experiment's `main` does: set up, build the task, run it."""
  from absl import flags

  def flag(name, default):
    return flags.FLAGS[name].value if name in flags.FLAGS else default

  check_workdir(workdir)  # Before anything is logged or built.
  parallel.maybe_initialize_distributed(force=flag('jax_distributed', False))
  host_memory.keep_freed_memory()
  quiet_library_logs()
  logging.info('Config:\n%s', config)
  run_info = {'experiment': _module_of(build_task)}
  if 'config' in flags.FLAGS:
    from ml_collections import config_flags

    run_info['config'] = config_flags.get_config_filename(flags.FLAGS['config'])
  final = train_and_evaluate(
    config,
    workdir,
    build_task(config),
    allow_config_change=flag('allow_config_change', False),
    run_info=run_info,
  )
  logging.info('Final metrics: %s', final)
  if jax.process_index() == 0:
    print(
      'Final:',
      ', '.join(
        f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
        for k, v in final.items()
      ),
      flush=True,
    )
  return final


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO chatter out of the progress log."""
  from experiments import cli

  cli.quiet_library_logs(tool=False)
