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

  config.json             the resolved config (after steps are resolved).
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
import signal
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
  if task.load_init_params is not None:
    params, state = task.load_init_params(path)
  elif checkpointing.is_checkpoint_dir(path):
    params, state = checkpointing.load_params_and_state(path)
  else:
    from perceiver_io import pretrained

    params, state = pretrained.load_params(path)
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


def _last_metrics(workdir, step, eval_name):
  """The metrics already logged up to `step` (for a run resumed at its end)."""
  final = {'step': step}
  for record in metrics_writer.read_metrics(workdir):
    if record['step'] <= step:
      final.update(
        {
          k: v
          for k, v in record.items()
          if k.startswith(eval_name + '/')
          or ('/' not in k and not k.startswith('num_'))
        }
      )
  final['step'] = step
  return final


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
  config: ml_collections.ConfigDict, workdir: str, task: Task
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

  Returns:
    The final metrics: `step`, the last logged train metrics, the last
    `eval/*` metrics and `preempted` (bool).

  Raises:
    ValueError: bad config values (batch size not divisible by the number of
      devices times `grad_accum_steps`, unknown `mode`, no eval data in eval
      mode), or a checkpoint or `init_from` file that does not match the
      model (naming the first mismatching parameter and both shapes).
    FloatingPointError: a NaN or Inf loss or gradient norm; names the step.
  """
  # --- Config and devices ---
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
  writer = metrics_writer.MetricsWriter(workdir)
  writer.write_config(config, num_train_steps=num_steps)

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
      return {'step': start_step, **results, 'preempted': False}

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
          final.update({k: v for k, v in record.items() if '/' not in k})
          final.update(_items(record, task.eval_name))
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
    return final


def _items(record, prefix):
  return {k: v for k, v in record.items() if k.startswith(prefix + '/')}


# --- Command line (shared by every experiment's absl main) ---


def define_flags() -> None:
  """Defines `--config` (locked: unknown keys are errors), `--workdir` and
  `--jax_distributed`. Call at import time of an experiment's `__main__`."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file[:arg].', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Output directory; reuse to resume.')
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

  distributed = (
    flags.FLAGS['jax_distributed'].value
    if ('jax_distributed' in flags.FLAGS)
    else False
  )
  parallel.maybe_initialize_distributed(force=distributed)
  host_memory.keep_freed_memory()
  quiet_library_logs()
  logging.info('Config:\n%s', config)
  final = train_and_evaluate(config, workdir, build_task(config))
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
  import logging as std_logging

  class DropOrbaxInfo(std_logging.Filter):
    def filter(self, record):
      return record.levelno >= std_logging.WARNING or (
        'orbax' not in record.pathname
      )

  handler_owner = std_logging.getLogger('absl')
  handler_owner.addFilter(DropOrbaxInfo())
  logging.set_verbosity(logging.INFO)
