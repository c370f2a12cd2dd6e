"""GLUE fine-tuning: model, loss and eval of one task, grids and the summary.

`python -m experiments.glue` (`__main__.py`) trains one task with
`build_task(config)`, or several (and the grid) with `run_tasks`.

Shape letters: B batch, S bytes, K outputs (classes; 1 for STS-B), N eval
examples, P eval splits (2 for MNLI: matched, mismatched).
"""

import json
import os
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import metrics_writer
from experiments import runs
from experiments import trainer
from experiments.glue import data as task_data
from experiments.glue import metrics as task_metrics
from experiments.glue import model as task_model

SUMMARY_FILE = 'summary.json'
MNLI_SPLIT_NAMES = ('matched', 'mismatched')


# --- Loss and metrics ---


def make_loss_fn(model, info: task_data.TaskInfo) -> Callable:
  """Cross-entropy (classes) or mean squared error (STS-B)."""

  def loss_fn(params, state, batch, rng, is_training):
    logits, new_state = model.apply(
      params,
      state,
      rng,
      is_training=is_training,
      inputs=batch['inputs'],
      input_mask=batch['input_mask'],
    )  # [B, K]
    if info.is_regression:
      error = logits[:, 0] - batch['label']
      loss = jnp.mean(error**2)
      metrics = {'mse': loss}
    else:
      loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
      )
      correct = jnp.argmax(logits, axis=-1) == batch['label']
      metrics = {'accuracy': jnp.mean(correct.astype(jnp.float32))}
    return loss, (metrics, new_state)

  return loss_fn


def make_eval_fn(model, info: task_data.TaskInfo, num_eval: int) -> Callable:
  """Per-batch sums: confusion matrices [P, K, K], or scattered predictions.

  Scattering each example's prediction and label to its `index` in [N]
  vectors makes their sum over batches the full vectors, from which
  `eval_finalize` computes exact Pearson and Spearman correlations.
  """
  num_splits = len(info.eval_splits)

  def eval_fn(params, state, batch):
    logits, _ = model.apply(
      params,
      state,
      None,
      is_training=False,
      inputs=batch['inputs'],
      input_mask=batch['input_mask'],
    )
    mask = batch['mask']
    out = {'count': jnp.sum(mask)}
    if info.is_regression:
      prediction = logits[:, 0]
      out['loss_sum'] = jnp.sum(mask * (prediction - batch['label']) ** 2)
      zeros = jnp.zeros((num_eval,), jnp.float32)
      out['predictions'] = zeros.at[batch['index']].add(mask * prediction)
      out['labels'] = zeros.at[batch['index']].add(mask * batch['label'])
    else:
      ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']
      )
      out['loss_sum'] = jnp.sum(mask * ce)
      predicted = jnp.argmax(logits, axis=-1)
      k = info.num_classes
      confusion = jnp.zeros((num_splits, k, k), jnp.float32)
      out['confusion'] = confusion.at[
        batch['split'], batch['label'], predicted
      ].add(mask)
    return out

  return eval_fn


def make_eval_finalize(task: str, info: task_data.TaskInfo) -> Callable:
  def eval_finalize(sums):
    count = max(float(sums['count']), 1.0)
    results = {'loss': float(sums['loss_sum']) / count, 'count': count}
    if info.is_regression:
      results.update(
        task_metrics.regression_metrics(sums['predictions'], sums['labels'])
      )
    elif len(info.eval_splits) == 1:
      results.update(
        task_metrics.classification_metrics(task, sums['confusion'][0])
      )
    else:
      for name, confusion in zip(
        MNLI_SPLIT_NAMES, sums['confusion'], strict=True
      ):
        for key, value in task_metrics.classification_metrics(
          task, confusion
        ).items():
          results[f'{name}/{key}'] = value
    results['score'] = task_metrics.task_score(task, results)
    return results

  return eval_finalize


# --- Task ---


def build_model(config: ml_collections.ConfigDict):
  info = task_data.task_info(config.task)
  return task_model.build(task_model.get_config(info.num_classes, config.model))


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The GLUE task `config.task` for `trainer.train_and_evaluate`."""
  task = config.task
  info = task_data.task_info(task)
  data = config.data
  if data.seq_len > config.model.max_seq_len:
    raise ValueError(
      f'config.data.seq_len ({data.seq_len}) exceeds '
      f'config.model.max_seq_len ({config.model.max_seq_len}).'
    )
  model = build_model(config)
  train = task_data.load_split(task, data.train_split, data.data_dir)
  evals = [
    task_data.load_split(task, s, data.data_dir) for s in info.eval_splits
  ]
  num_eval = sum(len(s) for s in evals)
  process_index, process_count = jax.process_index(), jax.process_count()
  eval_batch_size = config.get('eval_batch_size') or config.batch_size

  def train_batches(start_step):
    return task_data.train_batches(
      train,
      seq_len=data.seq_len,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )

  def eval_batches():
    return task_data.eval_batches(
      evals,
      seq_len=data.seq_len,
      batch_size=eval_batch_size,
      process_index=process_index,
      process_count=process_count,
    )

  init_batch = {
    'inputs': np.zeros((1, data.seq_len), np.int32),
    'input_mask': np.ones((1, data.seq_len), np.int32),
  }
  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=make_loss_fn(model, info),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model, info, num_eval),
    eval_finalize=make_eval_finalize(task, info),
    num_train_examples=len(train),
    load_init_params=make_init_loader(config, model),
  )


# --- Initialisation from a pretrained masked language model ---


def make_init_loader(config: ml_collections.ConfigDict, model) -> Callable:
  """`load_init_params` for the trainer: a pretrained MLM in a fresh head.

  The classifier is initialised from `config.seed` and its encoder-side
  modules are replaced by the MLM's (our workdir or a released checkpoint).
  Deterministic, so every process builds the same tree; nothing is written.
  A checkpoint that already is a classifier of this shape (a fine-tuned
  GLUE workdir, e.g. for `--config.mode=eval`) is loaded as it is.
  """

  def load_init_params(path):
    fresh, state = task_model.init_params(
      model, config.data.seq_len, config.seed
    )
    source, source_state, _, _ = runs.load_weights(path)
    if set(source) == set(fresh):
      return source, source_state
    params = task_model.transfer_pretrained(fresh, source, source=path)
    logging.info('Encoder initialised from %s.', path)
    return params, state

  return load_init_params


def train_task(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes one task (resuming if `workdir` has a checkpoint)."""
  return trainer.train_and_evaluate(config, workdir, build_task(config))


# --- Several tasks, the grid and the summary ---


def grid_points(config) -> list[tuple[int, float]]:
  return [
    (b, lr)
    for b in config.grid.batch_sizes
    for lr in config.grid.learning_rates
  ]


def run_dir(
  workdir: str,
  task: str,
  batch_size: int | None = None,
  lr: float | None = None,
) -> str:
  path = os.path.join(workdir, task)
  if batch_size is not None:
    path = os.path.join(path, f'bs{batch_size}_lr{lr:g}')
  return path


def final_eval(run_workdir: str) -> dict[str, float] | None:
  """The last `eval/*` record of a run, without the prefix (None if none)."""
  if not os.path.exists(os.path.join(run_workdir, 'metrics.jsonl')):
    return None
  records = [
    r for r in metrics_writer.read_metrics(run_workdir) if 'eval/score' in r
  ]
  if not records:
    return None
  return {
    k[len('eval/') :]: v
    for k, v in records[-1].items()
    if k.startswith('eval/')
  } | {'step': records[-1]['step']}


def summarize(workdir: str, tasks: Sequence[str]) -> dict:
  """Collects each task's best run and the GLUE average; writes summary.json.

  Scores are reported x100, as in the paper's tables.
  """
  summary = {'tasks': {}}
  scores = {}
  for task in tasks:
    candidates = []
    task_dir = os.path.join(workdir, task)
    if os.path.isdir(task_dir):
      for name in sorted(os.listdir(task_dir)):
        sub = os.path.join(task_dir, name)
        result = final_eval(sub) if os.path.isdir(sub) else None
        if result is not None:
          candidates.append((result['score'], name, result))
    direct = final_eval(task_dir)
    if direct is not None:
      candidates.append((direct['score'], '.', direct))
    if not candidates:
      summary['tasks'][task] = None
      continue
    score, run, result = max(candidates, key=lambda c: c[0])
    scores[task] = score
    summary['tasks'][task] = {**result, 'score': 100.0 * score, 'run': run}
  average = task_metrics.glue_average(scores)
  summary['glue_average'] = 100.0 * average['average']
  summary['num_average_tasks'] = int(average['num_tasks'])
  summary['complete'] = bool(average['complete'])
  with open(os.path.join(workdir, SUMMARY_FILE), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  return summary


def format_summary(summary: dict) -> str:
  lines = []
  for task, result in summary['tasks'].items():
    lines.append(
      f'{task:6s} '
      + (
        'not run'
        if result is None
        else f'{result["score"]:6.2f}  ({result["run"]})'
      )
    )
  lines.append(
    f'GLUE average {summary["glue_average"]:.2f} over '
    f'{summary["num_average_tasks"]} of {len(task_metrics.AVERAGE_TASKS)} tasks'
    + ('' if summary['complete'] else ' (incomplete)')
  )
  return '\n'.join(lines)


def run_tasks(config, workdir: str, tasks: Sequence[str], grid: bool) -> dict:
  """Fine-tunes each task (and grid point), then summarizes."""
  for task in tasks:
    points = grid_points(config) if grid else [(None, None)]
    for batch_size, lr in points:
      run_config = config.copy_and_resolve_references()
      with run_config.unlocked():
        run_config.task = task
        if batch_size is not None:
          run_config.batch_size = batch_size
          run_config.schedule.base_lr = lr
      train_task(run_config, run_dir(workdir, task, batch_size, lr))
  return summarize(workdir, tasks)


def parse_tasks(spec: str) -> list[str]:
  if spec == 'all':
    return [t for t in task_data.TASKS if t != 'wnli'] + ['wnli']
  tasks = [t.strip() for t in spec.split(',') if t.strip()]
  for task in tasks:
    task_data.task_info(task)
  return tasks
