"""The image classification task: model, loss and eval for the trainer.

`build_task(config)` is what `python -m experiments.image_classification`
(`__main__.py`) trains and evaluates; `data` makes the batches.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import trainer
from experiments.image_classification import data as task_data
from perceiver_io import models


def build_model(config: ml_collections.ConfigDict) -> models.Model:
  """The Perceiver of `config.model.architecture` at `config.model` sizes."""
  model_config = config.model.to_dict()
  architecture = model_config.pop('architecture')
  model_config = ml_collections.ConfigDict(model_config)
  if architecture not in models.IMAGENET_ARCHITECTURES:
    raise ValueError(
      f'config.model.architecture={architecture!r} is not an image '
      f'classifier; use one of {models.IMAGENET_ARCHITECTURES}.'
    )
  return models.build(architecture, model_config)


def make_forward(model) -> Callable:
  """`forward(params, state, rng, images, is_training) -> (logits, state)`.

  `model` computes in its `runtime.compute_dtype`; the logits are float32
  either way.
  """

  def forward(params, state, rng, images, is_training):
    logits, state = model.apply(
      params, state, rng, is_training=is_training, images=images
    )
    return logits.astype(jnp.float32), state

  return forward


def _topk_correct(logits, labels, k):
  """int [B]: whether `labels` is among the top `k` logits."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1)


def make_loss_fn(forward, num_classes: int, label_smoothing: float):
  """The `Task.loss_fn`: smoothed cross-entropy on (mixed) one-hot targets.

  Targets follow DeepMind: `ratio * onehot(labels) + (1 - ratio) *
  onehot(mix_labels)`, then `(1 - s) * y + s / K`. Accuracies are against
  the un-mixed `labels`.
  """

  def loss_fn(params, state, batch, rng, is_training):
    logits, state = forward(params, state, rng, batch['images'], is_training)
    one_hot = jax.nn.one_hot(batch['labels'], num_classes)
    if 'mix_labels' in batch:
      ratio = batch['ratio'][:, None]
      one_hot = ratio * one_hot + (1.0 - ratio) * jax.nn.one_hot(
        batch['mix_labels'], num_classes
      )
    targets = optax.smooth_labels(one_hot, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    metrics = {
      'accuracy': jnp.mean(_topk_correct(logits, batch['labels'], 1)),
      'top_5_accuracy': jnp.mean(_topk_correct(logits, batch['labels'], 5)),
    }
    return loss, (metrics, state)

  return loss_fn


def make_eval_fn(forward):
  """The `Task.eval_fn`: sums of unsmoothed loss, top-1 and top-5 hits."""

  def eval_fn(params, state, batch):
    logits, _ = forward(params, state, None, batch['images'], False)
    mask = batch['mask']
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['labels']
    )
    return {
      'loss': jnp.sum(loss * mask),
      'accuracy': jnp.sum(_topk_correct(logits, batch['labels'], 1) * mask),
      'top_5_accuracy': jnp.sum(
        _topk_correct(logits, batch['labels'], 5) * mask
      ),
      'count': jnp.sum(mask),
    }

  return eval_fn


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The image-classification `Task` for `config.data.name`."""
  model = build_model(config)
  forward = make_forward(model)
  num_classes = config.model.decoder.num_classes
  loss_fn = make_loss_fn(forward, num_classes, config.label_smoothing)
  eval_fn = make_eval_fn(forward)
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  height, width = config.model.image_size
  channels = config.data.get('channels', 3)
  init_batch = {'images': np.zeros((1, height, width, channels), np.float32)}
  data = config.data
  if data.get('image_size') and (data.image_size,) * 2 != (height, width):
    raise ValueError(
      f'config.data.image_size={data.image_size} does not match '
      f'config.model.image_size={(height, width)}; set both (the Fourier '
      "max_resolution follows the model's)."
    )
  if data.name == 'digits':
    arrays = task_data.load_digits(data.test_fraction, data.split_seed)
    return trainer.Task(
      model=model,
      init_batch=init_batch,
      train_batches=functools.partial(
        task_data.digits_train_batches,
        arrays,
        config.batch_size,
        config.seed,
        max_shift=data.max_shift,
      ),
      loss_fn=loss_fn,
      eval_batches=functools.partial(
        task_data.padded_batches,
        arrays['test_images'],
        arrays['test_labels'],
        eval_batch_size,
      ),
      eval_fn=eval_fn,
      num_train_examples=len(arrays['train_labels']),
    )
  if data.name != 'imagenet2012':
    raise ValueError(
      f"config.data.name must be 'digits' or 'imagenet2012'; got {data.name!r}."
    )
  task_data.check_available(data)
  num_examples = task_data.num_train_examples(data)

  def train_batches(start_step):
    import tensorflow_datasets as tfds

    return iter(
      tfds.as_numpy(
        task_data.imagenet_train_dataset(
          data, config.seed, config.batch_size, start_step
        )
      )
    )

  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=loss_fn,
    eval_batches=lambda: task_data.imagenet_eval_batches(data, eval_batch_size),
    eval_fn=eval_fn,
    num_train_examples=num_examples,
  )
