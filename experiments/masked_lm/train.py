"""The masked language modelling task: model, loss and eval for the trainer.

`build_task(config)` is what `python -m experiments.masked_lm`
(`__main__.py`) trains and evaluates; `data` makes the batches.

Shape letters: B batch, S sequence length in bytes, V vocabulary (262).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import trainer
from experiments.masked_lm import data as task_data
from perceiver_io import models

# Parameter paths of the tensors that `ReinitModel` may redraw.
EMBED = 'embed'
INPUT_POSITIONS = 'trainable_position_encoding'
QUERY_POSITIONS = 'basic_decoder/~/trainable_position_encoding'
LATENTS = 'perceiver_encoder/~/trainable_position_encoding'
ENCODER_ATTENTION = 'perceiver_encoder/~/cross_attention/attention/'
DECODER_ATTENTION = 'basic_decoder/cross_attention/attention/'
POSITION_INITS = ('default', 'fourier', 'local')


# --- Model ---


def fourier_table(
  positions, num_positions: int, num_channels: int, num_heads: int = 1
):
  """[M, C] unit-variance Fourier features of (fractional) byte positions.

  C / 2 frequencies spaced linearly from half a cycle over `num_positions`
  bytes to the Nyquist frequency (the paper's Fourier features, starting at
  half a cycle so that the first and last bytes differ). The channels are
  split into `num_heads` contiguous groups, as attention splits them into
  heads: group h holds the sines, then the cosines, of the h-th band of
  frequencies. The product of two rows within a group depends on p - q only
  and peaks at p == q.
  """
  positions = np.asarray(positions, np.float64)
  if num_channels % (2 * num_heads):
    raise ValueError(
      f'A Fourier table needs channels ({num_channels}) divisible by twice '
      f'the heads ({num_heads}).'
    )
  per_head = num_channels // num_heads
  cycles = np.linspace(0.5, num_positions / 2, num_channels // 2)
  bands = cycles.reshape(num_heads, per_head // 2)
  groups = []
  for band in bands:
    phases = 2 * np.pi * positions[:, None] * band / num_positions
    groups += [np.sin(phases), np.cos(phases)]
  return (np.sqrt(2.0) * np.concatenate(groups, axis=1)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ReinitModel:
  """A language `models.Model` whose parameters may start differently.

  Same parameter names and shapes (checkpoints load either way); only some
  initial values change, to help a small model learn fast:

  - `embed_init_scale` redraws `embed/embeddings` from a truncated normal of
    that std. Haiku's default (1) makes the tied output logits large and
    drowns the 0.02-scale input position table.
  - `position_init='fourier'` starts the input and output-query position
    tables as Fourier features of std `position_init_scale`.
  - `position_init='local'` also makes both cross-attentions start as local
    look-ups: latent i gets a Fourier position at the centre of its share
    of the bytes, and the query and key projections of the encoder and
    decoder cross-attentions start as (scaled) identities on the Fourier
    channels, so latent i first pools the bytes around its centre and the
    query of byte p first reads the latents around p. The peak attention
    logit is about `local_peak_logit`. This needs the cross-attentions'
    qk_channels equal to d_model and equal head counts.
  """

  model: models.Model
  embed_init_scale: float | None = None
  position_init: str = 'default'
  position_init_scale: float = 0.02
  local_peak_logit: float = 8.0

  def __post_init__(self):
    if self.position_init not in POSITION_INITS:
      raise ValueError(
        f'Unknown position_init {self.position_init!r}; use one of '
        f'{POSITION_INITS}.'
      )

  @property
  def config(self):
    return self.model.config

  def init(self, rng, *, is_training=False, **inputs):
    params, state = self.model.init(rng, is_training=is_training, **inputs)
    params = {k: dict(v) for k, v in params.items()}
    if self.embed_init_scale:
      shape = params[EMBED]['embeddings'].shape
      params[EMBED]['embeddings'] = (
        self.embed_init_scale
        * jax.random.truncated_normal(
          jax.random.fold_in(rng, 1), -2.0, 2.0, shape, jnp.float32
        )
      )
    if self.position_init in ('fourier', 'local'):
      heads = self._heads() if self.position_init == 'local' else 1
      for name in (INPUT_POSITIONS, QUERY_POSITIONS):
        num, channels = params[name]['pos_embs'].shape
        table = fourier_table(np.arange(num), num, channels, heads)
        params[name]['pos_embs'] = jnp.asarray(self.position_init_scale * table)
    if self.position_init == 'local':
      self._init_local_attention(params)
    return params, state

  def _heads(self):
    config = self.model.config
    heads = config.encoder.num_cross_attend_heads
    if config.decoder.num_heads != heads:
      raise ValueError(
        "position_init='local' needs equal encoder cross-attention and "
        f'decoder heads; got {heads} and {config.decoder.num_heads}.'
      )
    return heads

  def _init_local_attention(self, params):
    """Latent centres and identity q/k projections; see the class doc."""
    d = self.model.config.d_model
    num_bytes = self.model.config.max_seq_len
    latents = params[LATENTS]['pos_embs']
    num_latents, width = latents.shape
    heads = self._heads()
    for scope in (ENCODER_ATTENTION, DECODER_ATTENTION):
      qk = params[scope + 'linear']['w'].shape[1]
      if qk != d:
        raise ValueError(
          f"position_init='local' needs qk_channels == d_model ({d}) in "
          f'{scope}; got {qk}.'
        )
    if width < d:
      raise ValueError(
        f'num_z_channels ({width}) must be at least d_model ({d}).'
      )
    centres = (np.arange(num_latents) + 0.5) * num_bytes / num_latents - 0.5
    table = np.zeros((num_latents, width), np.float32)
    table[:, :d] = fourier_table(centres, num_bytes, d, heads)
    params[LATENTS]['pos_embs'] = jnp.asarray(table)
    # LayerNorm rescales the latents' d Fourier channels by sqrt(width / d);
    # a head's d / heads channels then sum to a peak of sqrt(d / heads).
    gain = np.sqrt(
      self.local_peak_logit / (np.sqrt(width / d) * np.sqrt(d / heads))
    )
    eye = np.eye(d, dtype=np.float32)
    pad = np.zeros((width - d, d), np.float32)
    latent_side = gain * np.concatenate([eye, pad])  # [width, d]
    byte_side = gain * eye  # [d, d]
    for scope, q, k in (
      (ENCODER_ATTENTION, latent_side, byte_side),
      (DECODER_ATTENTION, byte_side, latent_side),
    ):
      params[scope + 'linear'] = {'w': jnp.asarray(q), 'b': jnp.zeros((d,))}
      params[scope + 'linear_1'] = {'w': jnp.asarray(k), 'b': jnp.zeros((d,))}

  def apply(self, params, state, rng, *, is_training=False, **inputs):
    return self.model.apply(
      params, state, rng, is_training=is_training, **inputs
    )


def build_model(config: ml_collections.ConfigDict) -> ReinitModel:
  """The language Perceiver at `config.model` sizes, `config.model_init`."""
  init = config.get('model_init') or ml_collections.ConfigDict()
  return ReinitModel(
    model=models.build(models.LANGUAGE, config.model),
    embed_init_scale=init.get('embed_init_scale'),
    position_init=init.get('position_init', 'default'),
    position_init_scale=init.get('position_init_scale', 0.02),
    local_peak_logit=init.get('local_peak_logit', 8.0),
  )


# --- Loss and metrics ---


def masked_lm_loss(logits, targets, weights):
  """Cross-entropy and accuracy on the weighted (masked) positions.

  Args:
    logits: [B, S, V].
    targets: int[B, S] original byte ids.
    weights: [B, S], 1 where the loss is taken.

  Returns:
    (mean loss over weighted positions, {'masked_accuracy', 'masked_bytes'}).
  """
  weights = weights.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), targets
  )  # [B, S]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(ce * weights) / total
  metrics = {
    'masked_accuracy': jnp.sum(correct * weights) / total,
    'masked_bytes': jnp.sum(weights),
  }
  return loss, metrics


def make_loss_fn(model, unmasked_weight: float = 0.0) -> Callable:
  """The training loss: masked-byte cross-entropy.

  With `unmasked_weight` > 0, the mean cross-entropy of the other real bytes
  (reconstructing the visible input) is added with that weight. This makes
  the model learn early to keep every byte's content apart in its latents,
  which the masked bytes alone teach only slowly; evaluation never uses it.
  """

  def loss_fn(params, state, batch, rng, is_training):
    logits, new_state = model.apply(
      params,
      state,
      rng,
      is_training=is_training,
      inputs=batch['inputs'],
      input_mask=batch['input_mask'],
    )
    loss, metrics = masked_lm_loss(logits, batch['targets'], batch['weights'])
    if unmasked_weight:
      visible = (1.0 - batch['weights']) * batch['input_mask']
      visible_loss, _ = masked_lm_loss(logits, batch['targets'], visible)
      metrics['unmasked_loss'] = visible_loss
      loss = loss + unmasked_weight * visible_loss
    return loss, (metrics, new_state)

  return loss_fn


def make_eval_fn(model) -> Callable:
  """Per-batch sums over real examples: CE, correct and masked bytes.

  Batches hold two copies of the eval set: `scheme` 0 with every selected
  word replaced by [MASK] (`masked_accuracy`, `loss`), and `scheme` 1 with
  the training (BERT) replacement shares (`bert_masked_accuracy`: some
  selected words stay unchanged and can be copied, as in BERT's usual MLM
  accuracy). `word_masked_accuracy` is `masked_accuracy` without the
  whitespace bytes that selected words take along (`mask_leading_space`).
  """

  def eval_fn(params, state, batch):
    logits, _ = model.apply(
      params,
      state,
      None,
      is_training=False,
      inputs=batch['inputs'],
      input_mask=batch['input_mask'],
    )
    scheme = batch['scheme'][:, None]
    weights = batch['weights'] * batch['mask'][:, None]
    strict = weights * (1.0 - scheme)
    bert = weights * scheme
    ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch['targets']
    )
    correct = (jnp.argmax(logits, axis=-1) == batch['targets']).astype(
      jnp.float32
    )
    # The bytes of the words themselves, without the whitespace a selected
    # word takes along under `data.mask_leading_space`.
    separator = jnp.isin(
      batch['targets'],
      jnp.asarray(task_data.WHITESPACE_BYTES) + task_data.NUM_RESERVED,
    )
    word = strict * (1.0 - separator.astype(jnp.float32))
    return {
      'loss_sum': jnp.sum(ce * strict),
      'correct': jnp.sum(correct * strict),
      'masked_bytes': jnp.sum(strict),
      'word_correct': jnp.sum(correct * word),
      'word_masked_bytes': jnp.sum(word),
      'bert_correct': jnp.sum(correct * bert),
      'bert_masked_bytes': jnp.sum(bert),
      'count': jnp.sum(batch['mask'] * (1.0 - batch['scheme'])),
    }

  return eval_fn


def eval_finalize(sums: dict[str, np.ndarray]) -> dict[str, float]:
  masked = max(float(sums['masked_bytes']), 1.0)
  bert_masked = max(float(sums['bert_masked_bytes']), 1.0)
  return {
    'masked_accuracy': float(sums['correct']) / masked,
    'loss': float(sums['loss_sum']) / masked,
    'masked_bytes': float(sums['masked_bytes']),
    'word_masked_accuracy': float(sums['word_correct'])
    / max(float(sums['word_masked_bytes']), 1.0),
    'bert_masked_accuracy': float(sums['bert_correct']) / bert_masked,
    'count': float(sums['count']),
  }


def eval_set(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Both copies of the eval set (see `make_eval_fn`), with a `scheme` key."""
  strict = task_data.eval_arrays(data, seed=data.eval_seed)
  bert = task_data.eval_arrays(
    data,
    seed=data.eval_seed,
    mask_token_prob=data.mask_token_prob,
    random_token_prob=data.random_token_prob,
  )
  n = len(strict['inputs'])
  arrays = {k: np.concatenate([strict[k], bert[k]]) for k in strict}
  arrays['scheme'] = np.repeat(np.float32([0.0, 1.0]), n)
  return arrays


# --- Task ---


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The masked-LM task of `config` for `trainer.train_and_evaluate`."""
  data = config.data
  if data.seq_len > config.model.max_seq_len:
    raise ValueError(
      f'config.data.seq_len ({data.seq_len}) exceeds '
      f'config.model.max_seq_len ({config.model.max_seq_len}).'
    )
  model = build_model(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  cache: dict[str, Any] = {}

  def train_batches(start_step):
    return task_data.train_batches(
      data,
      seed=config.seed,
      batch_size=config.batch_size,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )

  def eval_batches():
    if 'eval' not in cache:  # Built once: the eval set is fixed.
      cache['eval'] = eval_set(data)
    return task_data.batch_arrays(
      cache['eval'], eval_batch_size, process_index, process_count
    )

  init_batch = {
    'inputs': np.zeros((1, data.seq_len), np.int32),
    'input_mask': np.ones((1, data.seq_len), np.int32),
  }
  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=make_loss_fn(model, config.get('unmasked_loss_weight', 0.0)),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model),
    eval_finalize=eval_finalize,
  )
