"""A tiny Haiku MLP task for the trainer tests; also a script.

  python tests/tiny_task.py WORKDIR STEPS [SECONDS_PER_BATCH]

trains it and prints `FINAL {json}`; the delay lets a test kill it mid-run.
"""

import dataclasses
import json
import sys
import time

import haiku as hk
import jax
import ml_collections
import numpy as np
import optax

from experiments import config_utils
from experiments import trainer


class Model:
  def __init__(self, dropout=0.1):
    def forward(x, is_training):
      h = jax.nn.relu(hk.Linear(32)(x))
      if is_training:
        h = hk.dropout(hk.next_rng_key(), dropout, h)
      return hk.Linear(4)(h)

    self._t = hk.transform_with_state(forward)

  def init(self, rng, *, is_training, x):
    return self._t.init(rng, x, is_training)

  def apply(self, params, state, rng, *, is_training, x):
    return self._t.apply(params, state, rng, x, is_training)


def build_model(config):
  """The task's model, as `experiments.runs.load_run` builds it."""
  return Model(config.get('dropout', 0.1))


def make_data(n=96):
  rs = np.random.RandomState(0)
  x = rs.randn(n, 8).astype(np.float32)
  y = (x[:, :4].argmax(-1)).astype(np.int32)
  return x, y


def make_task(global_batch=16, poison_step=None, dropout=0.1):
  model = Model(dropout)
  x, y = make_data()
  local = global_batch // jax.process_count()

  def train_batches(start_step):
    step = start_step
    while True:
      rng = np.random.default_rng([7, step])
      idx = rng.choice(len(y), global_batch, replace=False)[:local]
      xb = x[idx].copy()
      if poison_step is not None and step == poison_step:
        xb[0, 0] = np.nan
      yield {'x': xb, 'y': y[idx]}
      step += 1

  def eval_batches():
    for i in range(0, len(y), global_batch):
      idx = np.arange(i, i + global_batch)
      mask = (idx < len(y)).astype(np.float32)
      idx = np.minimum(idx, len(y) - 1)
      yield {'x': x[idx], 'y': y[idx], 'mask': mask}

  def loss_fn(params, state, batch, rng, is_training):
    logits, state = model.apply(
      params, state, rng, is_training=is_training, x=batch['x']
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['y']
    ).mean()
    acc = (logits.argmax(-1) == batch['y']).mean()
    return loss, ({'accuracy': acc}, state)

  def eval_fn(params, state, batch):
    logits, _ = model.apply(
      params, state, None, is_training=False, x=batch['x']
    )
    hits = (logits.argmax(-1) == batch['y']) * batch['mask']
    return {'accuracy': hits.sum(), 'count': batch['mask'].sum()}

  return trainer.Task(
    model=model,
    init_batch={'x': x[:2]},
    train_batches=train_batches,
    loss_fn=loss_fn,
    eval_batches=eval_batches,
    eval_fn=eval_fn,
    num_train_examples=len(y),
  )


def make_config(**overrides):
  config = ml_collections.ConfigDict()
  config_utils.add_trainer_fields(
    config,
    batch_size=16,
    num_train_steps=40,
    log_every_steps=5,
    eval_every_steps=20,
    checkpoint_every_steps=10,
  )
  config.schedule.base_lr = 1e-2
  config.schedule.scale_by_batch = False
  for key, value in overrides.items():
    config[key] = value
  return config


def main(argv):
  workdir, steps = argv[1], int(argv[2])
  delay = float(argv[3]) if len(argv) > 3 else 0.0
  task = make_task()
  if delay:  # Slow the loop down so that a kill lands mid-run.
    inner = task.train_batches

    def slow(start):
      for batch in inner(start):
        time.sleep(delay)
        yield batch

    task = dataclasses.replace(task, train_batches=slow)
  config = make_config(num_train_steps=steps, checkpoint_every_steps=5)
  final = trainer.train_and_evaluate(config, workdir, task)
  print('FINAL', json.dumps(final), flush=True)


if __name__ == '__main__':
  main(sys.argv)
