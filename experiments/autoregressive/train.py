"""Perceiver AR as a `trainer.Task`: model, loss at the latents, eval in bits.

Shape letters: B batch, M context length, N latents, V vocabulary.

The model reads M tokens and predicts the next token at its last N
positions (the latents); the loss, the accuracy and the bits are taken
there only. `eval/bits_per_byte` (bits per token for non-byte data) is
log2-loss summed over every real target of the eval windows over their
count; `eval/ngram_bits_per_byte` scores the order-3 n-gram of `ngram.py`,
fitted on the training data, on exactly the same targets.
"""

import dataclasses
import functools
import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import parallel
from experiments import trainer
from experiments.autoregressive import data as task_data
from experiments.autoregressive import ngram
from perceiver_io import autoregressive
from perceiver_io import models

MODEL_KEYS = (
  'vocab_size',
  'max_context',
  'channels',
  'num_heads',
  'num_layers',
  'widening',
  'squared_relu',
  'zero_init_output',
)


@dataclasses.dataclass(frozen=True)
class ARModel:
  """`PerceiverAR` as pure functions; `num_latents` may change per call.

  `init(rng, *, is_training, tokens, input_mask=None)` and `apply(params,
  state, rng, *, is_training, tokens, input_mask=None, num_latents=None)
  -> (logits [B, N, V], state)`. The parameters do not depend on N.
  """

  kwargs: tuple[tuple[str, Any], ...]
  num_latents: int
  runtime: Any

  @functools.cached_property
  def _transform(self):
    def forward(tokens, num_latents, input_mask=None):
      module = autoregressive.PerceiverAR(
        **dict(self.kwargs), runtime=self.runtime
      )
      return module(tokens, num_latents, input_mask)

    return hk.transform_with_state(forward)

  def init(self, rng, *, is_training=False, tokens, input_mask=None):
    del is_training
    num_latents = min(self.num_latents, tokens.shape[1])
    return self._transform.init(rng, tokens, num_latents, input_mask)

  def apply(
    self,
    params,
    state,
    rng,
    *,
    is_training=False,
    tokens,
    input_mask=None,
    num_latents=None,
  ):
    del is_training  # No dropout inside the model.
    n = self.num_latents if num_latents is None else num_latents
    return self._transform.apply(params, state, rng, tokens, n, input_mask)


def build_model(config: ml_collections.ConfigDict) -> ARModel:
  """The Perceiver AR of `config.model` (see configs/autoregressive.py)."""
  runtime = models.runtime_of(config.model)
  unknown = sorted(
    set(config.model.keys()) - set(MODEL_KEYS) - {'runtime', 'num_latents'}
  )
  if unknown:
    raise ValueError(
      f'Unknown config.model key {unknown[0]!r}; the keys are '
      f'{MODEL_KEYS + ("num_latents", "runtime")}.'
    )
  kwargs = tuple((k, config.model[k]) for k in MODEL_KEYS if k in config.model)
  return ARModel(kwargs, int(config.model.num_latents), runtime)


def _split(batch, num_latents):
  """Inputs [B, M], input mask [B, M], targets [B, N], target mask [B, N]."""
  tokens, mask = batch['tokens'], batch['token_mask']
  return (
    tokens[:, :-1],
    mask[:, :-1],
    tokens[:, -num_latents:],
    mask[:, -num_latents:].astype(jnp.float32),
  )


def prefix_dropout(rng, input_mask, num_latents, rate):
  """Drops context positions before the latents with probability `rate`.

  Perceiver AR's context dropout: the latents' own positions are always
  kept, so every target is still predicted; dropped positions are masked
  out of the cross-attention. [B, M] -> [B, M].
  """
  if rate <= 0:
    return input_mask
  keep = jax.random.bernoulli(rng, 1.0 - rate, input_mask.shape)
  keep = keep.at[:, -num_latents:].set(True)
  return input_mask * keep.astype(input_mask.dtype)


def make_loss_fn(model: ARModel, z_loss: float, context_dropout: float):
  n = model.num_latents

  def loss_fn(params, state, batch, rng, is_training):
    inputs, input_mask, targets, target_mask = _split(batch, n)
    if is_training:
      input_mask = prefix_dropout(rng, input_mask, n, context_dropout)
    logits, state = model.apply(
      params, state, None, tokens=inputs, input_mask=input_mask
    )
    loss, ce = autoregressive.loss_fn(logits, targets, target_mask, z_loss)
    correct = jnp.argmax(logits, -1) == targets
    denom = jnp.maximum(jnp.sum(target_mask), 1.0)
    metrics = {
      'bits_per_byte': ce / math.log(2.0),
      'accuracy': jnp.sum(correct * target_mask) / denom,
    }
    return loss, (metrics, state)

  return loss_fn


def make_eval_fn(model: ARModel, num_latents: int | None = None):
  """Per-batch sums: bits, n-gram bits, correct and target counts."""
  n = num_latents or model.num_latents

  def eval_fn(params, state, batch):
    inputs, input_mask, targets, target_mask = _split(batch, n)
    logits, _ = model.apply(
      params,
      state,
      None,
      tokens=inputs,
      input_mask=input_mask,
      num_latents=n,
    )
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    weight = target_mask * batch['mask'][:, None]
    correct = jnp.argmax(logits, -1) == targets
    return {
      'bits': jnp.sum(nll * weight) / math.log(2.0),
      'ngram_bits': jnp.sum(batch['ngram_bits'][:, -n:] * weight),
      'correct': jnp.sum(correct * weight),
      'targets': jnp.sum(weight),
      'count': jnp.sum(batch['mask']),
    }

  return eval_fn


def eval_finalize(sums):
  targets = max(float(sums['targets']), 1.0)
  return {
    'bits_per_byte': float(sums['bits']) / targets,
    'ngram_bits_per_byte': float(sums['ngram_bits']) / targets,
    'accuracy': float(sums['correct']) / targets,
    'targets': float(sums['targets']),
    'count': float(sums['count']),
  }


# --- Data ---


def _context(config):
  context = int(config.model.max_context)
  if not 1 <= config.model.num_latents <= context:
    raise ValueError(
      f'config.model.num_latents={config.model.num_latents} must be in '
      f'[1, config.model.max_context={context}].'
    )
  return context


def eval_set(config, context: int | None = None) -> dict[str, np.ndarray]:
  """The fixed eval windows with their n-gram bits: see `data`."""
  data = config.data
  context = context or _context(config)
  vocab = int(config.model.vocab_size)
  if data.source == 'stdlib':
    train_stream, eval_stream = task_data.stdlib_streams(data)
    counts = ngram.fit([train_stream], vocab_size=vocab, alpha=data.ngram_alpha)
    stream_bits = ngram.bits(counts, eval_stream).astype(np.float32)
    ends = task_data.eval_ends(
      len(eval_stream), int(data.eval_first_end), int(data.num_eval_windows)
    )
    tokens, starts = task_data.stream_windows(eval_stream, ends, context)
    # Target j of a window is stream position start + 1 + j.
    index = starts[:, None] + 1 + np.arange(context)[None]
    return {
      'tokens': tokens,
      'token_mask': np.ones_like(tokens),
      'ngram_bits': stream_bits[index],
    }
  if data.source == 'tfds':
    tokens, token_mask, docs = task_data.tfds_eval_windows(data, context)
    counts = ngram.fit(
      task_data.tfds_ngram_documents(data),
      vocab_size=vocab,
      alpha=data.ngram_alpha,
    )
    bits = np.zeros(tokens.shape[:1] + (context,), np.float32)
    for i in range(len(tokens)):
      row = tokens[i][token_mask[i] == 1]
      bits[i, -(len(row) - 1) :] = ngram.bits(counts, row)[1:]
    return {'tokens': tokens, 'token_mask': token_mask, 'ngram_bits': bits}
  raise ValueError(
    f"Unknown config.data.source {data.source!r}; use 'stdlib' or 'tfds'."
  )


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The Perceiver AR task of `config` for `trainer.train_and_evaluate`."""
  model = build_model(config)
  context = _context(config)
  data = config.data
  process_index, process_count = jax.process_index(), jax.process_count()
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  cache: dict[str, Any] = {}

  def train_batches(start_step):
    kwargs = dict(
      seed=config.seed,
      batch_size=config.batch_size,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )
    if data.source == 'stdlib':
      stream, _ = task_data.stdlib_streams(data)
      return task_data.stream_train_batches(stream, context, **kwargs)
    return task_data.tfds_train_batches(
      data, context, int(config.model.num_latents), **kwargs
    )

  def eval_batches():
    if 'eval' not in cache:  # Built once: the eval set is fixed.
      cache['eval'] = eval_set(config, context)
    return parallel.padded_eval_batches(
      cache['eval'], eval_batch_size, process_index, process_count
    )

  init_batch = {
    'tokens': np.zeros((1, context), np.int32),
    'input_mask': np.ones((1, context), np.int32),
  }
  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=make_loss_fn(
      model, float(config.z_loss), float(data.context_dropout)
    ),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model),
    eval_finalize=eval_finalize,
  )


def run(config, workdir):
  return trainer.train_and_evaluate(config, workdir, build_task(config))
