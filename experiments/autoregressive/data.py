"""Token windows for Perceiver AR: Python's own source files, PG-19, ImageNet.

Shape letters: B batch, M context length, E eval windows.

A window is M + 1 tokens: the model reads the first M and predicts the last
M (targets are the inputs shifted by one); the loss is taken at the last N.
Batches are dicts of numpy arrays:
  tokens       int32[B, M + 1]  token ids (bytes 0..255; ImageNet adds SOS).
  token_mask   int32[B, M + 1]  1 for real tokens, 0 for left padding.
  ngram_bits   float32[E, M]    eval only: -log2 p of each target under the
                                order-3 n-gram (`ngram`), so that the
                                baseline is scored on the same targets.
  mask         float32[E]       eval only: 1 real, 0 padded example.

Sources (`config.data.source`):
  'stdlib': the `*.py` files of Python's standard library
    (`os.path.dirname(os.__file__)`, or `data.root`), found recursively in
    sorted order, without test folders, `site-packages` or `dist-packages`.
    Files are held out by a hash of their relative path
    (`eval_percent` of them), so no evaluated file was ever trained on. Each
    split is one byte stream: its files joined by FILE_SEPARATOR. Train
    window i of step s starts at an offset drawn from (seed, s) alone, so
    training resumes at any step without replaying data. Eval windows end
    at fixed places: `num_eval_windows` ends spaced evenly from
    `eval_first_end` to the end of the held-out stream, the same for every
    context length M <= eval_first_end - 1 (so M = N and M = 8N are scored on
    the same target bytes).
  'tfds': `pg19` (the UTF-8 bytes of each book) or `imagenet64`
    (`downsampled_imagenet/64x64`, an SOS token then the 12,288 pixel values
    in raster order, channels innermost). Train windows end at a random
    place in a shuffled document (left-padded when the document is
    shorter); the pipeline is deterministic for a seed and resumes by
    skipping batches. Eval windows of the first `num_eval_docs` documents
    end every `eval_stride` tokens (`eval_windows_per_doc` of them).
"""

import functools
import hashlib
import os
from collections.abc import Iterator

import ml_collections
import numpy as np

from experiments import parallel

# Between the files of a stream: ASCII "file separator".
FILE_SEPARATOR = b'\x1c'
EXCLUDED_DIRS = ('test', 'tests', 'idle_test', 'site-packages', 'dist-packages')
BYTE_VOCAB = 256
IMAGENET_SOS = 256  # ImageNet's start-of-image token; its vocabulary is 257.
PG19 = 'pg19:0.1.1'
IMAGENET64 = 'downsampled_imagenet/64x64:2.0.0'
TFDS_DATASETS = {'pg19': PG19, 'imagenet64': IMAGENET64}


# --- Python's standard library, held out by file ---


def stdlib_root() -> str:
  """The directory of Python's standard-library sources."""
  return os.path.dirname(os.__file__)


def source_files(root: str) -> list[str]:
  """The `*.py` files under `root`, relative to it, in sorted order.

  Folders named in EXCLUDED_DIRS (tests, installed packages) and
  `__pycache__` are skipped.

  Raises:
    FileNotFoundError: if `root` is not a directory or holds no `*.py`.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f'config.data.root={root!r} is not a directory of Python sources.'
    )
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(
      d for d in subdirs if d not in EXCLUDED_DIRS and d != '__pycache__'
    )
    rel = os.path.relpath(directory, root)
    found += [
      os.path.normpath(os.path.join(rel, f)) for f in files if f.endswith('.py')
    ]
  if not found:
    raise FileNotFoundError(
      f'No *.py files under {root!r} (outside {EXCLUDED_DIRS}); set '
      'config.data.root to a directory of Python sources.'
    )
  return sorted(found)


def is_eval_file(path: str, eval_percent: float) -> bool:
  """Whether the file `path` (relative) is held out; by a hash of the path."""
  digest = hashlib.sha256(path.replace(os.sep, '/').encode('utf-8')).digest()
  return int.from_bytes(digest[:4], 'big') % 10_000 < eval_percent * 100


def split_files(root: str, eval_percent: float) -> tuple[list[str], list[str]]:
  """(train, eval) relative paths of `source_files(root)`.

  Raises:
    FileNotFoundError: as `source_files`.
    ValueError: if either split is empty.
  """
  files = source_files(root)
  held = [f for f in files if is_eval_file(f, eval_percent)]
  train = [f for f in files if not is_eval_file(f, eval_percent)]
  if not held or not train:
    raise ValueError(
      f'Holding out {eval_percent}% of the {len(files)} files under {root!r} '
      f'leaves {len(train)} to train and {len(held)} to evaluate; both must '
      'be non-empty (add files or change config.data.eval_percent).'
    )
  return train, held


def read_stream(root: str, paths: list[str]) -> np.ndarray:
  """uint8[L]: the bytes of `paths`, each followed by FILE_SEPARATOR."""
  chunks = []
  for path in paths:
    with open(os.path.join(root, path), 'rb') as f:
      chunks += [f.read(), FILE_SEPARATOR]
  return np.frombuffer(b''.join(chunks), np.uint8)


@functools.lru_cache(maxsize=4)
def _streams(root: str, eval_percent: float):
  train, held = split_files(root, eval_percent)
  return read_stream(root, train), read_stream(root, held)


def stdlib_streams(data: ml_collections.ConfigDict):
  """(train, eval) uint8 byte streams of `data.root` (default: stdlib)."""
  root = os.path.abspath(os.path.expanduser(data.root or stdlib_root()))
  return _streams(root, float(data.eval_percent))


def stream_train_batches(
  stream: np.ndarray,
  context: int,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the train batches of steps `start_step`, ...

  Batch s holds `batch_size` windows of `context + 1` bytes at offsets drawn
  from (seed, s) alone.

  Raises:
    ValueError: if the stream is shorter than a window.
  """
  length = context + 1
  if len(stream) < length:
    raise ValueError(
      f'The train stream has {len(stream)} bytes, fewer than one window of '
      f'{length} (config.model.max_context + 1).'
    )
  rows = parallel.process_slice(batch_size, process_index, process_count)
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - length + 1, batch_size)[rows]
    tokens = np.stack([stream[s : s + length] for s in starts])
    yield {
      'tokens': tokens.astype(np.int32),
      'token_mask': np.ones_like(tokens, np.int32),
    }
    step += 1


def eval_ends(length: int, first_end: int, num_windows: int) -> np.ndarray:
  """int64[E]: the (exclusive) stream ends of the eval windows.

  Raises:
    ValueError: if the stream is shorter than `first_end`.
  """
  if length < first_end:
    raise ValueError(
      f'The eval stream has {length} bytes, fewer than '
      f'config.data.eval_first_end={first_end}.'
    )
  return np.unique(np.linspace(first_end, length, num_windows).astype(np.int64))


def stream_windows(stream: np.ndarray, ends: np.ndarray, context: int):
  """int32[E, M + 1] windows ending (exclusive) at `ends`, and their starts.

  Raises:
    ValueError: if a window would start before the stream.
  """
  starts = np.asarray(ends) - (context + 1)
  if starts.min() < 0:
    raise ValueError(
      f'A context of {context} bytes does not fit before the first eval end '
      f'({int(np.min(ends))}); raise config.data.eval_first_end above '
      f'{context}.'
    )
  tokens = np.stack([stream[s : s + context + 1] for s in starts])
  return tokens.astype(np.int32), starts


# --- TFDS: PG-19 and downsampled ImageNet ---


def _tf():
  import tensorflow as tf

  # TensorFlow must never see (or grab memory on) the accelerators.
  tf.config.set_visible_devices([], 'GPU')
  return tf


def tfds_builder(data: ml_collections.ConfigDict):
  """The prepared TFDS builder of `data.tfds_name`.

  Raises:
    ValueError: on an unknown dataset name.
    FileNotFoundError: if the dataset is not prepared in `data.data_dir`,
      saying how to prepare it.
  """
  import tensorflow_datasets as tfds

  if data.tfds_name not in TFDS_DATASETS:
    raise ValueError(
      f'Unknown config.data.tfds_name {data.tfds_name!r}; use one of '
      f'{sorted(TFDS_DATASETS)}.'
    )
  name = TFDS_DATASETS[data.tfds_name]
  builder = tfds.builder(name, data_dir=data.data_dir or None)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f'The TFDS dataset {name} is not prepared in {builder.data_dir!r}. '
      f'Prepare it once with `tfds build {name.split(":")[0]}` (or '
      'tfds.builder(...).download_and_prepare()), and pass its directory as '
      '--config.data.data_dir.'
    )
  return builder


def _document_tokens(tf, example, tfds_name):
  """The int32 token sequence of one TFDS example."""
  if tfds_name == 'pg19':
    text = example['book_text']
    return tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)
  pixels = tf.cast(tf.reshape(example['image'], [-1]), tf.int32)
  return tf.concat([tf.constant([IMAGENET_SOS], tf.int32), pixels], 0)


def _window(tf, tokens, end, context):
  """[M + 1] tokens of `tokens` ending (exclusive) at `end`, left-padded."""
  length = context + 1
  start = tf.maximum(end - length, 0)
  piece = tokens[start:end]
  pad = length - tf.shape(piece)[0]
  return {
    'tokens': tf.pad(piece, [[pad, 0]]),
    'token_mask': tf.pad(tf.ones_like(piece), [[pad, 0]]),
  }


def tfds_train_batches(
  data: ml_collections.ConfigDict,
  context: int,
  num_latents: int,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Train batches of windows ending at a random place of each document."""
  tf = _tf()
  import tensorflow_datasets as tfds

  builder = tfds_builder(data)
  rows = parallel.process_slice(batch_size, process_index, process_count)
  split = tfds.split_for_jax_process(
    'train', process_index=process_index, process_count=process_count
  )
  ds = builder.as_dataset(
    split=split,
    shuffle_files=True,
    read_config=tfds.ReadConfig(shuffle_seed=seed),
  )
  ds = ds.shuffle(data.shuffle_buffer, seed=seed).repeat().enumerate()

  def example(index, features):
    tokens = _document_tokens(tf, features, data.tfds_name)
    size = tf.shape(tokens)[0]
    # The last target is at end - 1; at least N targets must be real.
    low = tf.minimum(num_latents + 1, size)
    end = tf.random.stateless_uniform(
      [], [seed, process_index * 2**31 + index], low, size + 1, tf.int32
    )
    return _window(tf, tokens, end, context)

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(rows.stop - rows.start, drop_remainder=True).skip(start_step)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def tfds_eval_windows(data: ml_collections.ConfigDict, context: int):
  """(int32[E, M + 1] tokens, int32[E, M + 1] token_mask, [docs]) of the
  first `num_eval_docs` validation documents, windows ending every
  `eval_stride` tokens (at most `eval_windows_per_doc` per document)."""
  tf = _tf()
  builder = tfds_builder(data)
  ds = builder.as_dataset(split=data.tfds_eval_split, shuffle_files=False)
  tokens, masks, docs = [], [], []
  for features in ds.take(data.num_eval_docs):
    doc = _document_tokens(tf, features, data.tfds_name)
    docs.append(doc.numpy())
    size = int(doc.shape[0])
    ends = range(data.eval_stride, size + 1, data.eval_stride)
    for end in list(ends)[: data.eval_windows_per_doc]:
      window = _window(tf, doc, end, context)
      tokens.append(window['tokens'].numpy())
      masks.append(window['token_mask'].numpy())
  if not tokens:
    raise ValueError(
      f'No eval windows: the first {data.num_eval_docs} documents of '
      f'{data.tfds_name} are shorter than config.data.eval_stride.'
    )
  return np.stack(tokens), np.stack(masks), docs


def tfds_ngram_documents(data: ml_collections.ConfigDict) -> list[np.ndarray]:
  """The first `ngram_train_docs` train documents, to fit the n-gram on."""
  tf = _tf()
  builder = tfds_builder(data)
  ds = builder.as_dataset(split='train', shuffle_files=False)
  return [
    _document_tokens(tf, f, data.tfds_name).numpy()
    for f in ds.take(data.ngram_train_docs)
  ]
