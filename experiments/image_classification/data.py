"""Image classification data: TFDS ImageNet and scikit-learn's 8x8 digits.

Both give dict batches with fixed keys, in an order that depends only on the
seed and the step, so a resumed run sees exactly the batches an
uninterrupted run would:

  train: {'images': float32[b, H, W, C], 'labels': int32[b],
          'mix_labels': int32[b], 'ratio': float32[b]}
  eval:  {'images': float32[b, H, W, C], 'labels': int32[b],
          'mask': float32[b]}  (mask 0 marks padding)

where b is this process's share of the global batch. The target of a train
example is `ratio * onehot(labels) + (1 - ratio) * onehot(mix_labels)`.

ImageNet (`imagenet2012`, TFDS 5.1.0) needs a manual download; see
`MISSING_IMAGENET`. Its stream is a sequence of epochs: epoch e reads this
process's records in file order through a shuffle buffer seeded by (seed,
process, e), so a restart at step s computes its epoch and skips only the
undecoded records before s within it. Per-example augmentation seeds come
from the example's position in the stream, and MixUp/CutMix seeds from the
step.
"""

import contextlib
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from experiments import parallel

# --- Digits (scikit-learn, ships with the dependencies) ---

DIGITS_SIZE = 8
DIGITS_CLASSES = 10


def load_digits(
  test_fraction: float = 0.2, split_seed: int = 0
) -> dict[str, np.ndarray]:
  """scikit-learn's 1,797 8x8 digits, split into train and held-out sets.

  The split is stratified by class and fixed by `split_seed`. Pixels (0..16)
  are scaled to [-1, 1].

  Returns:
    {'train_images': float32[n, 8, 8, 1], 'train_labels': int32[n],
     'test_images': ..., 'test_labels': ...}.
  """
  from sklearn import datasets
  from sklearn import model_selection

  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  labels = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
    images,
    labels,
    test_size=test_fraction,
    random_state=split_seed,
    stratify=labels,
  )
  return {
    'train_images': train_x,
    'train_labels': train_y,
    'test_images': test_x,
    'test_labels': test_y,
  }


def stream_indices(
  num_examples: int, seed: int, start: int, count: int
) -> np.ndarray:
  """Example indices at stream positions [start, start + count).

  The stream is a fresh permutation of range(num_examples) per epoch,
  drawn from (seed, epoch), so any position can be computed directly.
  """
  positions = np.arange(start, start + count)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(count, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    where = epochs == epoch
    out[where] = perm[offsets[where]]
  return out


def shift_images(
  images: np.ndarray, rng: np.random.Generator, max_shift: int
) -> np.ndarray:
  """Translates each [H, W, C] image by up to `max_shift` pixels, zero-filled
  at the image's background value (its minimum, -1 for digits)."""
  if max_shift <= 0:
    return images
  n, h, w, _ = images.shape
  pad = max_shift
  background = images.min()
  padded = np.pad(
    images,
    ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    constant_values=background,
  )
  dy = rng.integers(0, 2 * pad + 1, n)
  dx = rng.integers(0, 2 * pad + 1, n)
  return np.stack(
    [padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]
  )


def digits_train_batches(
  data: dict[str, np.ndarray],
  global_batch_size: int,
  seed: int,
  start_step: int,
  max_shift: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless train batches of this process's share, from `start_step` on.

  Batch s holds the stream positions [s B, (s + 1) B) of `stream_indices`;
  the random shifts of batch s come from (seed, s).
  """
  images, labels = data['train_images'], data['train_labels']
  rows = parallel.process_slice(global_batch_size)
  local = rows.stop - rows.start
  step = start_step
  while True:
    idx = stream_indices(
      len(labels), seed, step * global_batch_size, global_batch_size
    )
    rng = np.random.default_rng([seed, 1, step])
    # The shifts of the whole global batch, then this process's rows: the
    # same pixels whatever the number of processes.
    batch_images = shift_images(images[idx], rng, max_shift)[rows]
    idx = idx[rows]
    yield {
      'images': batch_images,
      'labels': labels[idx],
      'mix_labels': labels[idx],
      'ratio': np.ones(local, np.float32),
    }
    step += 1


def padded_batches(
  images: np.ndarray, labels: np.ndarray, global_batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """Eval batches of this process's share, the last one padded (mask 0).

  Returns:
    An iterator of {'images': [b, H, W, C], 'labels': [b], 'mask':
    float32[b]}, b the process's share of `global_batch_size`
    (`parallel.padded_eval_batches`).
  """
  return parallel.padded_eval_batches(
    {'images': images, 'labels': labels}, global_batch_size
  )


# --- ImageNet (TFDS) ---

IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_EVAL_EXAMPLES = 50_000
MISSING_IMAGENET = (
  'TFDS dataset {name}:{version} was not found in data_dir={data_dir!r}. '
  'ImageNet needs a manual download: get ILSVRC2012_img_train.tar and '
  'ILSVRC2012_img_val.tar from https://image-net.org/, put them in '
  '<data_dir>/downloads/manual/, run `tfds build imagenet2012 '
  '--data_dir=<data_dir>` (or `tfds.builder("imagenet2012", '
  'data_dir=...).download_and_prepare()`), then pass '
  '--config.data.data_dir=<data_dir>.'
)


def _tf():
  """Imports TensorFlow for the input pipeline only; it must not take GPUs."""
  import tensorflow as tf

  # RuntimeError: TensorFlow is initialised already, its devices are fixed.
  with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], 'GPU')
  return tf


def imagenet_builder(data: ml_collections.ConfigDict):
  """The TFDS builder of `data.name:data.version` in `data.data_dir`."""
  import tensorflow_datasets as tfds

  _tf()
  return tfds.builder(f'{data.name}:{data.version}', data_dir=data.data_dir)


def _as_dataset(builder, data, **kwargs):
  import tensorflow_datasets as tfds

  try:
    return builder.as_dataset(
      decoders={'image': tfds.decode.SkipDecoding()}, **kwargs
    )
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    raise FileNotFoundError(
      MISSING_IMAGENET.format(
        name=data.name, version=data.version, data_dir=data.data_dir
      )
    ) from e


def _num_examples(builder, split, override):
  """Examples in `split` per its dataset info (or `override`)."""
  if override:
    return int(override)
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError) as e:
    raise ValueError(
      f'Unknown size of split {split!r}; set config.data.num_train_examples.'
    ) from e


def check_available(data: ml_collections.ConfigDict) -> None:
  """Fails early, before any compiling, if the dataset is not prepared.

  Raises:
    FileNotFoundError: saying how to download and prepare it.
  """
  builder = imagenet_builder(data)
  for split in (data.train_split, data.eval_split):
    _as_dataset(builder, data, split=split, shuffle_files=False)


def num_train_examples(data: ml_collections.ConfigDict) -> int:
  """Size of the whole train split (for epochs -> steps)."""
  if data.get('num_train_examples'):
    return int(data.num_train_examples)
  builder = imagenet_builder(data)
  try:
    return int(builder.info.splits[data.train_split].num_examples)
  except (KeyError, ValueError):
    return IMAGENET_TRAIN_EXAMPLES


def imagenet_train_dataset(
  data: ml_collections.ConfigDict,
  seed: int,
  global_batch_size: int,
  start_step: int,
):
  """This process's augmented train batches for steps start_step, ... (endless).

  Args:
    data: `config.data` (name, version, data_dir, train_split, image_size,
      randaugment_layers, randaugment_magnitude, mixup_alpha, cutmix,
      shuffle_buffer, num_train_examples).
    seed: `config.seed`.
    global_batch_size: `config.batch_size`.
    start_step: first step to produce.

  Returns:
    A `tf.data.Dataset` of train batches (see the module docstring).
  """
  import tensorflow_datasets as tfds

  from experiments.image_classification import augment

  tf = _tf()
  builder = imagenet_builder(data)
  local = global_batch_size // jax.process_count()
  split = tfds.split_for_jax_process(data.train_split, drop_remainder=True)
  n = _num_examples(
    builder, split, _per_process(data.get('num_train_examples'))
  )
  start = start_step * local
  first_epoch, offset = divmod(start, n)
  process_seed = [seed, jax.process_index()]
  # Files in a fixed order (TFDS shuffled the examples when it wrote them);
  # each epoch gets its own shuffle-buffer seed from (seed, process, epoch).
  records = _as_dataset(builder, data, split=split, shuffle_files=False)
  epoch_key = tf.constant(process_seed, tf.int64)

  def epoch_dataset(epoch):
    key = tf.random.experimental.stateless_fold_in(epoch_key, epoch)
    epoch_seed = tf.random.stateless_uniform(
      [], key, minval=0, maxval=2**62, dtype=tf.int64
    )
    return records.shuffle(
      data.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
    )

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_dataset)
  # Skipping happens before decoding: a restart only reads past the
  # records of its current epoch.
  ds = ds.skip(offset)

  example_seed = tf.constant(process_seed, tf.int64)
  batch_seed = tf.constant([seed, jax.process_index() + 2**20], tf.int64)
  size = data.image_size

  def preprocess(position, example):
    s = tf.random.experimental.stateless_fold_in(example_seed, position)
    return augment.train_preprocess(
      example,
      s,
      image_size=size,
      randaugment_layers=data.randaugment_layers,
      randaugment_magnitude=data.randaugment_magnitude,
    )

  def mix(step, batch):
    s = tf.random.experimental.stateless_fold_in(batch_seed, step)
    out = augment.mixup_cutmix(
      batch, s, mixup_alpha=data.mixup_alpha, cutmix=data.cutmix
    )
    out.setdefault('mix_labels', out['labels'])
    out.setdefault('ratio', tf.ones([local], tf.float32))
    return out

  ds = ds.enumerate(start).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local, drop_remainder=True)
  ds = ds.enumerate(start_step).map(mix, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(tf))


def _per_process(total):
  if not total:
    return None
  return int(total) // jax.process_count()


def _options(tf):
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  return options


def imagenet_eval_dataset(
  data: ml_collections.ConfigDict, global_batch_size: int
):
  """This process's eval batches of the `data.eval_split`, in file order."""
  import tensorflow_datasets as tfds

  from experiments.image_classification import augment

  tf = _tf()
  builder = imagenet_builder(data)
  local = global_batch_size // jax.process_count()
  split = tfds.split_for_jax_process(data.eval_split, drop_remainder=False)
  ds = _as_dataset(builder, data, split=split, shuffle_files=False)

  def preprocess(example):
    out = augment.eval_preprocess(example, data.image_size)
    out['mask'] = tf.constant(1.0, tf.float32)
    return out

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(tf))


def imagenet_eval_batches(
  data: ml_collections.ConfigDict, global_batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """Eval batches as numpy, each padded to this process's share.

  Every process yields the same number of batches (the most any process
  needs), so that the global batches line up across hosts.
  """
  import tensorflow_datasets as tfds

  local = global_batch_size // jax.process_count()
  num_batches = None
  builder = imagenet_builder(data)
  try:
    total = int(builder.info.splits[data.eval_split].num_examples)
    per_process = math.ceil(total / jax.process_count())
    num_batches = math.ceil(per_process / local)
  except (KeyError, ValueError):
    pass  # Unknown sizes (mock data): one process is assumed.
  count = 0
  template = None
  for batch in tfds.as_numpy(imagenet_eval_dataset(data, global_batch_size)):
    template = batch
    yield pad_batch(batch, local)
    count += 1
  while (
    num_batches is not None and template is not None and count < num_batches
  ):
    yield pad_batch({k: v[:0] for k, v in template.items()}, local)
    count += 1


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads every entry to `size` rows with zeros (so `mask` is 0 there)."""
  n = len(batch['mask'])
  if n == size:
    return batch
  return {
    k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
    for k, v in batch.items()
  }
