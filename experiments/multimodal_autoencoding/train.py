"""The multimodal autoencoding task: model, loss and eval for the trainer.

Loss (paper Sec. 4.3):

  loss = w_video * L1(video) + w_video_mse * MSE(video)
         + w_audio * L1(audio) + w_label * CE(label)

with the weights of `config.loss` (paper: 0.03, 0, 1, 1e-4), L1 the mean
absolute error and MSE the mean squared error over the decoded points, CE
the label cross-entropy. In training each example decodes its own random
subset of points (`data.train_image_points` pixels, in patches of
`model.image_output_patch` pixels per query,
`data.train_audio_samples` samples) and the label, whose input is masked on
`data.label_mask_prob` of the examples.
Evaluation decodes every point (in `eval.num_decode_chunks` chunks) with the
label always masked.

PSNR, per clip and then averaged over clips:

  PSNR = 10 * log10(R**2 / MSE)

MSE is the mean squared error over all of a clip's values (every pixel and
channel; every audio sample), R the data range: `eval.video_data_range`
(1.0: video in [0, 1]) and `eval.audio_data_range` (2.0: audio in [-1, 1]).
An MSE below 1e-10 counts as 1e-10. The `*_mean_baseline` figures are the
PSNR of predicting the training set's mean value at every point; the label
baseline predicts the training set's majority class.

Shape letters: B batch, T frames, H, W frame size, A audio samples, K classes.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import trainer
from experiments.multimodal_autoencoding import data as task_data
from experiments.multimodal_autoencoding import model as model_lib

MIN_MSE = 1e-10


# --- Model ---


def build_model(config: ml_collections.ConfigDict) -> model_lib.Model:
  """The autoencoder of `config.model`, decoding eval in chunks."""
  return model_lib.build_model(
    config.model, num_decode_chunks=config.eval.num_decode_chunks
  )


def compression(config: ml_collections.ConfigDict) -> dict[str, float]:
  """How much smaller the latents are than the input.

  Returns:
    {'values': input values (video T*H*W*3 + audio A + K label) over latent
     values (N * D), 'paper': the paper's measure, the preprocessed input
     array (M inputs x C channels) over the latents (88x when released)}.
  """
  model = config.model
  T, (H, W) = model.num_frames, model.image_size
  prep = model.image_preprocessor
  latents = model.encoder.z_index_dim * model.encoder.num_z_channels
  values = T * H * W * 3 + model.audio_samples + model.num_classes
  s, t = prep.spatial_downsample, prep.temporal_downsample
  num_patches = (T // t) * (H // s) * (W // s)
  per_patch = model.audio_preprocessor.samples_per_patch
  num_audio = model.audio_samples // per_patch
  bands = prep.fourier_position_encoding_kwargs.num_bands
  audio_bands = model.audio_preprocessor.fourier_position_encoding_kwargs
  widths = (
    3 * s * s * t + 3 * (2 * bands + 1),
    per_patch + 2 * audio_bands.num_bands + 1,
    model.num_classes,
  )
  width = max(widths) + model.input_preprocessor.min_padding_size
  inputs = (num_patches + num_audio + 1) * width
  return {'values': values / latents, 'paper': inputs / latents}


# --- Loss and metrics ---


def loss_terms(outputs, video_targets, audio_targets, labels):
  """Mean L1 of video and audio, mean MSE of video, mean CE and accuracy of
  the label."""
  ce = optax.softmax_cross_entropy_with_integer_labels(outputs['label'], labels)
  return {
    'video_l1': jnp.mean(jnp.abs(outputs['image'] - video_targets)),
    'video_mse': jnp.mean((outputs['image'] - video_targets) ** 2),
    'audio_l1': jnp.mean(jnp.abs(outputs['audio'] - audio_targets)),
    'label_ce': jnp.mean(ce),
    'label_accuracy': jnp.mean(jnp.argmax(outputs['label'], -1) == labels),
  }


def model_inputs(batch, num_classes, points=True):
  inputs = {
    'images': batch['images'],
    'audio': batch['audio'],
    'label': jax.nn.one_hot(batch['label'], num_classes),
    'label_mask': batch['label_mask'],
  }
  if points:
    inputs['image_points'] = batch['image_points']
    inputs['audio_points'] = batch['audio_points']
  return inputs


def make_loss_fn(model, config):
  """The training loss of the module docstring."""
  weights = config.loss
  per_patch = config.model.audio_preprocessor.samples_per_patch
  num_classes = config.model.num_classes
  patch = model_lib.image_patch(config.model)

  def loss_fn(params, state, batch, rng, is_training):
    outputs, new_state = model.apply(
      params,
      state,
      rng,
      is_training=is_training,
      **model_inputs(batch, num_classes),
    )
    images = batch['images']
    B = images.shape[0]
    pixels = model_lib.patchify(images, patch)  # [B, T*H*W / Q, Q, 3]
    points = batch['image_points'][..., None, None]  # [B, n, 1, 1]
    video = jnp.take_along_axis(pixels, points, axis=1)  # [B, n, Q, 3]
    video = video.reshape(B, -1, images.shape[-1])  # [B, n * Q, 3]
    patches = batch['audio'].reshape(B, -1, per_patch)  # [B, A / P, P]
    audio = jnp.take_along_axis(
      patches, batch['audio_points'][..., None], axis=1
    ).reshape(B, -1)  # [B, m * P]
    terms = loss_terms(outputs, video, audio, batch['label'])
    loss = (
      weights.video * terms['video_l1']
      + weights.video_mse * terms['video_mse']
      + weights.audio * terms['audio_l1']
      + weights.label * terms['label_ce']
    )
    terms['label_masked'] = jnp.mean(batch['label_mask'])
    return loss, (terms, new_state)

  return loss_fn


def psnr(mse, data_range):
  """PSNR in dB of per-clip `mse` [B] at `data_range` (module docstring)."""
  mse = jnp.maximum(mse, MIN_MSE)
  return 10.0 * jnp.log10(data_range**2 / mse)


def make_eval_fn(model, config, statistics):
  """Per-batch sums over real examples of the eval metrics."""
  video_mean, audio_mean, majority = statistics
  num_classes = config.model.num_classes
  video_range = config.eval.video_data_range
  audio_range = config.eval.audio_data_range

  def eval_fn(params, state, batch):
    outputs, _ = model.apply(
      params,
      state,
      None,
      is_training=False,
      **model_inputs(batch, num_classes, points=False),
    )
    images = batch['images']
    B = images.shape[0]
    video = images.reshape(B, -1, images.shape[-1])
    audio = batch['audio'][..., 0]
    mask = batch['mask']

    def clip_mse(pred, target):
      axes = tuple(range(1, target.ndim))
      return jnp.mean((pred - target) ** 2, axis=axes)

    per_clip = {
      'video_psnr': psnr(clip_mse(outputs['image'], video), video_range),
      'audio_psnr': psnr(clip_mse(outputs['audio'], audio), audio_range),
      'video_psnr_mean_baseline': psnr(
        clip_mse(jnp.full_like(video, video_mean), video), video_range
      ),
      'audio_psnr_mean_baseline': psnr(
        clip_mse(jnp.full_like(audio, audio_mean), audio), audio_range
      ),
      'label_top1': (jnp.argmax(outputs['label'], -1) == batch['label']),
      'label_top1_majority_baseline': batch['label'] == majority,
      'video_l1': jnp.mean(jnp.abs(outputs['image'] - video), axis=(1, 2)),
      'audio_l1': jnp.mean(jnp.abs(outputs['audio'] - audio), axis=1),
    }
    sums = {
      k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_clip.items()
    }
    sums['count'] = jnp.sum(mask)
    return sums

  return eval_fn


def batch_arrays(arrays, batch_size):
  """Fixed-size batches of `arrays`, the last padded, with a `mask` key."""
  n = len(arrays['label'])
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    real = idx < n
    idx = np.minimum(idx, n - 1)
    batch = {k: v[idx] for k, v in arrays.items()}
    batch['mask'] = real.astype(np.float32)
    yield batch


# --- Task ---


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The multimodal autoencoding task of `config`."""
  from configs import multimodal_autoencoding as config_lib

  config_lib.validate(config)
  if jax.process_count() > 1:
    raise ValueError('This task runs on one host (its data is local).')
  model = build_model(config)
  ratio = compression(config)
  logging.info(
    'Compression: latents are %.1fx smaller than the input values, %.1fx '
    "by the paper's measure (preprocessed inputs x channels).",
    ratio['values'],
    ratio['paper'],
  )
  print(
    f'Compression: {ratio["values"]:.1f}x (input values / latent values), '
    f'{ratio["paper"]:.1f}x (paper: inputs x channels / latents x channels)',
    flush=True,
  )
  data = _data_for(config)
  statistics = _statistics(config, data)
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  cache = {}

  def train_batches(start_step):
    return data.train_batches(start_step)

  def eval_batches():
    if 'eval' not in cache:
      cache['eval'] = data.eval_set()
    return batch_arrays(cache['eval'], eval_batch_size)

  m = config.model
  n = config.data.train_image_points // int(np.prod(model_lib.image_patch(m)))
  init_batch = {
    'images': np.zeros((1, m.num_frames, *m.image_size, 3), np.float32),
    'audio': np.zeros((1, m.audio_samples, 1), np.float32),
    'label': np.zeros((1, m.num_classes), np.float32),
    'label_mask': np.ones((1,), np.float32),
    'image_points': np.zeros((n,), np.int32),
    'audio_points': np.zeros(
      (
        config.data.train_audio_samples
        // m.audio_preprocessor.samples_per_patch,
      ),
      np.int32,
    ),
  }
  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=make_loss_fn(model, config),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model, config, statistics),
  )


class _DigitsData:
  """The `local` source: moving sklearn digits (`data.py`)."""

  def __init__(self, config):
    self._config = config

  def train_batches(self, start_step):
    c = self._config
    return task_data.train_batches(
      c.data,
      c.model,
      seed=c.seed,
      batch_size=c.batch_size,
      start_step=start_step,
    )

  def eval_set(self):
    return task_data.eval_set(self._config.data)

  def statistics(self):
    return task_data.train_statistics(self._config.data, self._config.seed)


def _data_for(config):
  if config.data.source == 'digits':
    return _DigitsData(config)
  if config.data.source == 'kinetics':
    from experiments.multimodal_autoencoding import kinetics

    return kinetics.KineticsData(config)
  raise ValueError(
    f"Unknown config.data.source {config.data.source!r}; use 'digits' or "
    "'kinetics'."
  )


def _statistics(config, data):
  return data.statistics()
