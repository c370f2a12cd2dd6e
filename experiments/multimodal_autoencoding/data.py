"""Moving sklearn digits with a sound track: the `local` data of this task.

Each clip: one 8x8 digit of `sklearn.datasets.load_digits`, upscaled 2x to
16x16 and drawn white on black into `image_size` frames, moving with a random
velocity and bouncing off the borders over `num_frames` frames. Its audio
track is a tone whose frequency encodes the digit's class (class k: k + 1
cycles per frame of audio, starting at phase 0) and whose loudness follows
the digit's speed in each frame (0.2 at rest to 1.0 at the top speed). The label is the class.
Video values lie in [0, 1], audio in [-1, 1].

Train clips use 80% of the digit images, held-out clips the other 20% (a
fixed split) with motion drawn from another seed. A batch of step s depends
only on (seed, s), so `train_batches(start_step)` restarts exactly.

Shape letters: B batch, T frames, H, W frame size, A audio samples, n image
points, m audio patches.
"""

from collections.abc import Iterator

import ml_collections
import numpy as np

NUM_CLASSES = 10
HOLDOUT_FRACTION = 0.2
DIGIT_SCALE = 2
MAX_SPEED = 3.0


def digit_split():
  """(train images, train labels, held-out images, held-out labels).

  Images are float32[N, 16, 16] in [0, 1]; a fixed permutation (seed 0).
  """
  from sklearn import datasets

  digits = datasets.load_digits()
  images = digits.images.astype(np.float32) / 16.0
  images = np.kron(images, np.ones((1, DIGIT_SCALE, DIGIT_SCALE), np.float32))
  order = np.random.default_rng(0).permutation(len(images))
  cut = int(round(len(images) * (1 - HOLDOUT_FRACTION)))
  train, held = order[:cut], order[cut:]
  return (
    images[train],
    digits.target[train].astype(np.int32),
    images[held],
    digits.target[held].astype(np.int32),
  )


def make_clips(data, images, labels, rng):
  """Clips of the digits `images` [B, 16, 16] with fresh motion from `rng`.

  Returns:
    {'images': float32[B, T, H, W, 3], 'audio': float32[B, A, 1],
     'label': int32[B]}.
  """
  T = data.num_frames
  H, W = data.image_size
  A = data.audio_samples
  batch, size = images.shape[0], images.shape[1]
  if size > min(H, W):
    raise ValueError(
      f'config.data.image_size={tuple(data.image_size)} is smaller than the '
      f'{size}x{size} digit.'
    )
  room = np.array([H - size, W - size], np.float64)
  pos = rng.random((batch, 2)) * room
  angle = rng.random(batch) * 2 * np.pi
  speed = rng.uniform(0.5, MAX_SPEED, batch)
  vel = np.stack([np.sin(angle), np.cos(angle)], 1) * speed[:, None]
  video = np.zeros((batch, T, H, W), np.float32)
  speeds = np.zeros((batch, T), np.float64)
  for t in range(T):
    corner = np.round(pos).astype(int)
    for b in range(batch):
      y, x = corner[b]
      video[b, t, y : y + size, x : x + size] = images[b]
    speeds[:, t] = np.linalg.norm(vel, axis=1)
    pos = pos + vel
    # Bounce: reflect the position and the velocity at the borders.
    low, high = pos < 0, pos > room
    pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
    vel = np.where(low | high, -vel, vel)
    pos = np.clip(pos, 0, room)
  # --- Audio: class -> tone frequency, speed -> loudness ---
  per_frame = A // T
  t = np.arange(A)
  cycles = (1 + labels.astype(np.float64))[:, None] / per_frame
  loud = 0.2 + 0.8 * speeds / MAX_SPEED  # [B, T]
  frame_centres = (np.arange(T) + 0.5) * per_frame
  envelope = np.stack([np.interp(t, frame_centres, row) for row in loud])
  audio = envelope * np.sin(2 * np.pi * cycles * t)
  return {
    'images': np.repeat(video[..., None], 3, axis=-1),
    'audio': audio[..., None].astype(np.float32),
    'label': labels.astype(np.int32),
  }


def output_points(data, model_config, batch, rng):
  """Per-example random output points to decode in training.

  Returns:
    (int32[B, n] flat indices into the grid of image output patches,
    int32[B, m] audio patch indices), each row without repeats; n =
    `data.train_image_points` / pixels per output patch (pixel indices when
    the patch is 1x1x1, as released), m = `data.train_audio_samples` /
    samples per audio patch.
  """
  from experiments.multimodal_autoencoding import model as model_lib

  patch = model_lib.image_patch(model_config)
  grid = model_lib.patch_grid((data.num_frames, *data.image_size), patch)
  num_queries = int(np.prod(grid))
  n = data.train_image_points // int(np.prod(patch))
  per_patch = model_config.audio_preprocessor.samples_per_patch
  num_patches = data.audio_samples // per_patch
  m = data.train_audio_samples // per_patch
  image = np.argsort(rng.random((batch, num_queries)), axis=1)
  audio = np.argsort(rng.random((batch, num_patches)), axis=1)
  return (
    image[:, :n].astype(np.int32),
    audio[:, :m].astype(np.int32),
  )


def train_batches(
  data: ml_collections.ConfigDict,
  model_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches for steps start_step, start_step + 1, ...

  Each batch: the clip arrays of `make_clips`, `label_mask` float32[B]
  (1 with probability `data.label_mask_prob`), and the per-example
  `image_points` [B, n] and `audio_points` [B, m] that training decodes.
  """
  train_images, train_labels, _, _ = digit_split()
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    pick = rng.integers(0, len(train_images), batch_size)
    batch = make_clips(data, train_images[pick], train_labels[pick], rng)
    batch['label_mask'] = (
      rng.random(batch_size) < data.label_mask_prob
    ).astype(np.float32)
    batch['image_points'], batch['audio_points'] = output_points(
      data, model_config, batch_size, rng
    )
    yield batch
    step += 1


def eval_set(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """`data.num_eval_examples` held-out clips (held-out digits, fresh motion),
  the label masked on every one."""
  _, _, held_images, held_labels = digit_split()
  rng = np.random.default_rng([data.eval_seed, 1])
  pick = np.arange(data.num_eval_examples) % len(held_images)
  clips = make_clips(data, held_images[pick], held_labels[pick], rng)
  clips['label_mask'] = np.ones(len(pick), np.float32)
  return clips


def train_statistics(data, seed: int, num_clips: int = 256):
  """(mean video value, mean audio value, majority class) of training data:
  the constant predictions of the baselines."""
  train_images, train_labels, _, _ = digit_split()
  rng = np.random.default_rng([seed, 7919])
  pick = rng.integers(0, len(train_images), num_clips)
  clips = make_clips(data, train_images[pick], train_labels[pick], rng)
  majority = int(np.bincount(train_labels, minlength=NUM_CLASSES).argmax())
  return float(clips['images'].mean()), float(clips['audio'].mean()), majority
