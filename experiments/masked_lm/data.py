"""Byte-level masked-language-model data: documents to masked batches.

Shape letters: B batch, S sequence length in bytes, K documents per example.

Every source goes through the same ops (Perceiver IO, App. F.3):

  documents -> join K of them -> random crop of S bytes, cut at UTF-8
  character boundaries -> byte ids (byte + 6) padded to S with a mask ->
  whole-word masking of 15% of the whitespace-delimited words with BERT's
  80% [MASK] / 10% random byte / 10% unchanged replacement -> batch.

A word is a maximal run of non-whitespace bytes (ASCII space, tab, newline,
carriage return, vertical tab, form feed); whitespace and special ids are
never masked. The 80/10/10 choice is made once per word, so a word is either
all [MASK], all random bytes or unchanged.

Sources (`config.data.source`):
  'pydoc': the English reference documentation that ships with Python,
    `pydoc_data.topics` (79 topics, ~465 kB on Python 3.11). Each topic is a
    document; its first `1 - holdout_fraction` of bytes (cut at a line
    break) train and the rest is held out for evaluation.
  'files': local UTF-8 text files named by glob patterns; each file is a
    document, split the same way.
  'tfds': a weighted mixture of TFDS text datasets, by default c4/en (70%)
    and English Wikipedia (30%) as in the paper; c4's validation split is
    held out.

In-memory sources (pydoc, files) compute example i of the stream from
(seed, i) alone, so training resumes at any step without replaying data.
TFDS streams are deterministic for a seed and resume by skipping batches.

Batches are dicts of numpy arrays:
  inputs      int32[B, S]   byte ids after masking (the model's input).
  input_mask  int32[B, S]   1 for real bytes, 0 for padding.
  targets     int32[B, S]   the original byte ids.
  weights     float32[B, S] 1 where the loss is taken (selected words).
  mask        float32[B]    eval only: 1 for real, 0 for padded examples.
"""

import glob
import os
from collections.abc import Iterator
from collections.abc import Sequence

import ml_collections
import numpy as np

from experiments import parallel

# Byte ids, as in `perceiver_io.bytes_tokenizer.BytesTokenizer`.
PAD_ID = 0
MASK_ID = 3
NUM_RESERVED = 6
VOCAB_SIZE = 256 + NUM_RESERVED
WHITESPACE_BYTES = (0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)

# Pinned TFDS versions.
C4 = 'c4/en:3.1.0'
WIKIPEDIA = 'wikipedia/20230601.en:1.0.0'

BATCH_KEYS = ('inputs', 'input_mask', 'targets', 'weights')


def _tf():
  import tensorflow as tf

  # TensorFlow must never see (or grab memory on) the accelerators.
  tf.config.set_visible_devices([], 'GPU')
  return tf


# --- Corpora ---


def split_document(text: str, holdout_fraction: float) -> tuple[str, str]:
  """Splits a document into a train head and a held-out tail.

  The cut is placed at the line break nearest to `1 - holdout_fraction` of
  the document's characters, else at the nearest space, else at that
  character, so that no word or multibyte character is split when the
  document has line breaks or spaces.

  Args:
    text: the document.
    holdout_fraction: share of the document held out, in [0, 1).

  Returns:
    (train_text, heldout_text); their concatenation is `text`.
  """
  if not 0.0 <= holdout_fraction < 1.0:
    raise ValueError(
      f'holdout_fraction must be in [0, 1); got {holdout_fraction}.'
    )
  if holdout_fraction == 0.0 or len(text) < 2:
    return text, ''
  target = min(
    max(int(round(len(text) * (1.0 - holdout_fraction))), 1), len(text) - 1
  )
  cut = target
  for separator in ('\n', ' '):
    # A separator ends the head; both parts must keep some text.
    after = text.find(separator, target - 1, len(text) - 1)
    before = text.rfind(separator, 0, target - 1)
    found = [p + 1 for p in (after, before) if p != -1]
    if found:
      cut = min(found, key=lambda c: abs(c - target))
      break
  return text[:cut], text[cut:]


def pydoc_documents() -> list[str]:
  """The topics of `pydoc_data.topics`, in sorted key order."""
  from pydoc_data import topics

  return [topics.topics[key] for key in sorted(topics.topics)]


def file_documents(patterns: str | Sequence[str]) -> list[str]:
  """Reads the files matching glob patterns; each file is one document.

  Args:
    patterns: comma-separated glob patterns, or a sequence of them.

  Returns:
    The files' texts in sorted path order (bytes that are not UTF-8 are
    replaced by U+FFFD).

  Raises:
    FileNotFoundError: if a pattern matches no file.
    ValueError: if all matched files are empty.
  """
  if isinstance(patterns, str):
    patterns = [p.strip() for p in patterns.split(',') if p.strip()]
  if not patterns:
    raise ValueError('config.data.files names no file pattern.')
  paths = []
  for pattern in patterns:
    matched = sorted(
      p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p)
    )
    if not matched:
      raise FileNotFoundError(f'No text file matches {pattern!r}.')
    paths.extend(matched)
  docs = []
  for path in sorted(set(paths)):
    with open(path, 'rb') as f:
      docs.append(f.read().decode('utf-8', errors='replace'))
  if not any(docs):
    raise ValueError(f'All text files are empty: {paths}.')
  return docs


def in_memory_documents(
  data: ml_collections.ConfigDict, split: str
) -> list[str]:
  """The train or held-out documents of an in-memory source.

  Args:
    data: `config.data` with `source` ('pydoc' or 'files'), `files` and
      `holdout_fraction`.
    split: 'train' or 'eval'.

  Returns:
    Non-empty documents.

  Raises:
    ValueError: on an unknown source or split, or an empty split.
  """
  if data.source == 'pydoc':
    docs = pydoc_documents()
  elif data.source == 'files':
    docs = file_documents(data.files)
  else:
    raise ValueError(
      f"Unknown in-memory source {data.source!r}; expected 'pydoc' or 'files'."
    )
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval'; got {split!r}.")
  parts = [split_document(d, data.holdout_fraction) for d in docs]
  docs = [p[0] if split == 'train' else p[1] for p in parts]
  docs = [d for d in docs if d]
  if not docs:
    raise ValueError(
      f'The {split} split of source {data.source!r} is empty '
      f'(holdout_fraction={data.holdout_fraction}).'
    )
  return docs


# --- Byte ops (TensorFlow, one example at a time) ---


def random_crop(text, length: int, seed):
  """A random window of at most `length` bytes, cut at character boundaries.

  Partial UTF-8 sequences at the window's two ends are dropped, so the
  result is valid UTF-8 whenever `text` is (invalid bytes inside `text` are
  dropped too).

  Args:
    text: tf.string scalar.
    length: maximum window length in bytes.
    seed: int32/int64[2] stateless seed.

  Returns:
    tf.string scalar of at most `length` bytes.
  """
  tf = _tf()
  n = tf.strings.length(text)
  max_start = tf.maximum(n - length, 0)
  start = tf.random.stateless_uniform(
    [], seed, minval=0, maxval=max_start + 1, dtype=tf.int32
  )
  window = tf.strings.substr(text, start, length)
  return tf.strings.unicode_transcode(window, 'UTF-8', 'UTF-8', errors='ignore')


def tokenize(text, length: int) -> dict:
  """UTF-8 bytes to ids (byte + 6), truncated or padded to `length`.

  Args:
    text: tf.string scalar.
    length: S.

  Returns:
    {'tokens': int32[S], 'input_mask': int32[S]}.
  """
  tf = _tf()
  raw = tf.io.decode_raw(text, tf.uint8)[:length]
  tokens = tf.cast(raw, tf.int32) + NUM_RESERVED
  n = tf.shape(tokens)[0]
  tokens = tf.pad(tokens, [[0, length - n]], constant_values=PAD_ID)
  input_mask = tf.cast(tf.range(length) < n, tf.int32)
  tokens = tf.ensure_shape(tokens, [length])
  return {'tokens': tokens, 'input_mask': tf.ensure_shape(input_mask, [length])}


def word_ids(tokens, leading_space: bool = False):
  """Numbers the words of a byte-id sequence.

  A word is a maximal run of non-whitespace bytes. With `leading_space`, the
  one whitespace byte right before a word (if any) belongs to it, as the
  word-start marker of a SentencePiece word does: masking a word then masks
  " word", the span the released model fills best.

  Args:
    tokens: int32[S] byte ids.
    leading_space: whether each word takes the whitespace byte before it.

  Returns:
    int32[S]: 0 for whitespace, padding and special ids; 1, 2, ... for the
    bytes of the first, second, ... word.
  """
  tf = _tf()
  is_space = tf.reduce_any(
    tokens[:, None]
    == tf.constant(WHITESPACE_BYTES, tf.int32)[None] + NUM_RESERVED,
    axis=1,
  )
  in_word = tf.logical_and(tokens >= NUM_RESERVED, tf.logical_not(is_space))
  previous = tf.concat([[False], in_word[:-1]], axis=0)
  starts = tf.logical_and(in_word, tf.logical_not(previous))
  ids = tf.cumsum(tf.cast(starts, tf.int32)) * tf.cast(in_word, tf.int32)
  if leading_space:
    before_start = tf.concat([starts[1:], [False]], axis=0)
    lead = tf.logical_and(before_start, is_space)
    ids = tf.where(lead, tf.concat([ids[1:], [0]], axis=0), ids)
  return ids


def whole_word_mask(
  features: dict,
  seed,
  mask_prob: float = 0.15,
  mask_token_prob: float = 0.8,
  random_token_prob: float = 0.1,
  leading_space: bool = False,
) -> dict:
  """BERT-style whole-word masking of one example.

  Each word is selected with probability `mask_prob`, independently. A
  selected word is replaced by [MASK] ids (with probability
  `mask_token_prob`), by random bytes (`random_token_prob`) or left as it
  is (the rest); the loss is taken on all its bytes.

  Args:
    features: {'tokens': int32[S], 'input_mask': int32[S]}.
    seed: int32/int64[2] stateless seed.
    mask_prob: probability that a word is selected.
    mask_token_prob: share of selected words replaced by [MASK].
    random_token_prob: share of selected words replaced by random bytes.
    leading_space: whether a word includes the whitespace byte before it
      (`word_ids`).

  Returns:
    {'inputs', 'input_mask', 'targets': int32[S], 'weights': float32[S]}.
  """
  tf = _tf()
  if mask_token_prob + random_token_prob > 1.0:
    raise ValueError(
      f'mask_token_prob ({mask_token_prob}) + random_token_prob '
      f'({random_token_prob}) exceeds 1.'
    )
  tokens = features['tokens']
  length = tf.shape(tokens)[0]
  ids = word_ids(tokens, leading_space)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  # One draw per word id (ids run from 0 to at most S).
  word_draw = tf.random.stateless_uniform([length + 1], seeds[0])
  branch_draw = tf.random.stateless_uniform([length + 1], seeds[1])
  selected = tf.logical_and(ids > 0, tf.gather(word_draw, ids) < mask_prob)
  branch = tf.gather(branch_draw, ids)
  use_mask = tf.logical_and(selected, branch < mask_token_prob)
  use_random = tf.logical_and(
    selected,
    tf.logical_and(
      branch >= mask_token_prob, branch < mask_token_prob + random_token_prob
    ),
  )
  random_bytes = tf.random.stateless_uniform(
    [length], seeds[2], minval=NUM_RESERVED, maxval=VOCAB_SIZE, dtype=tf.int32
  )
  inputs = tf.where(
    use_mask, MASK_ID, tf.where(use_random, random_bytes, tokens)
  )
  return {
    'inputs': inputs,
    'input_mask': features['input_mask'],
    'targets': tokens,
    'weights': tf.cast(selected, tf.float32),
  }


def make_example(text, seed, data: ml_collections.ConfigDict) -> dict:
  """Crop, tokenize and mask one (joined) text; the op every source shares."""
  tf = _tf()
  crop_seed, mask_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 2)
  )
  text = random_crop(text, data.seq_len, crop_seed)
  return whole_word_mask(
    tokenize(text, data.seq_len),
    mask_seed,
    mask_prob=data.mask_prob,
    mask_token_prob=data.mask_token_prob,
    random_token_prob=data.random_token_prob,
    leading_space=data.get('mask_leading_space', False),
  )


def _example_seed(seed: int, *indices):
  tf = _tf()
  key = tf.constant([seed, 0], tf.int64)
  for index in indices:
    key = tf.random.experimental.stateless_fold_in(
      key, tf.cast(index, tf.int64)
    )
  return key


# --- Train streams ---


def in_memory_train_dataset(
  documents: Sequence[str],
  data: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
):
  """The endless train stream of an in-memory corpus, from `start_step` on.

  Example i of the global stream joins `docs_per_example` documents drawn
  with replacement, crops and masks them, all from seeds derived from
  (seed, i). Global batch s holds examples [s * B, (s + 1) * B); this
  process yields its contiguous share of each.

  Returns:
    A batched `tf.data.Dataset` of this process's share of each global batch.
  """
  tf = _tf()
  rows = parallel.process_slice(batch_size, process_index, process_count)
  local = rows.stop - rows.start
  docs = tf.constant(list(documents), tf.string)
  num_docs = len(documents)

  def example(index):
    step, j = index // local, index % local
    global_index = step * batch_size + rows.start + j
    key = _example_seed(seed, global_index)
    doc_key, example_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 2)
    )
    picks = tf.random.stateless_uniform(
      [data.docs_per_example], doc_key, 0, num_docs, dtype=tf.int32
    )
    text = tf.strings.reduce_join(
      tf.gather(docs, picks), separator=data.document_separator
    )
    return make_example(text, example_key, data)

  ds = tf.data.Dataset.range(start_step * local, np.iinfo(np.int64).max)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def tfds_train_dataset(
  data: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  data_dir: str | None = None,
):
  """The endless train stream of the TFDS mixture, from `start_step` on.

  Each dataset is read in a seeded order (file shuffle, then a document
  shuffle buffer), repeated, grouped `docs_per_example` documents at a
  time, and turned into examples; the datasets are then sampled with
  `data.tfds_weights`. Resuming skips `start_step` batches, which replays
  the input pipeline (exact, but slow for large steps).

  Returns:
    A batched `tf.data.Dataset` of this process's share of each global batch.
  """
  tf = _tf()
  import tensorflow_datasets as tfds

  names, weights = tuple(data.tfds_names), tuple(data.tfds_weights)
  if len(names) != len(weights) or not names:
    raise ValueError(
      f'config.data.tfds_names {names} and tfds_weights {weights} must be '
      'non-empty and of the same length.'
    )
  rows = parallel.process_slice(batch_size, process_index, process_count)
  local = rows.stop - rows.start
  streams = []
  for source, name in enumerate(names):
    split = tfds.split_for_jax_process(
      data.tfds_train_split,
      process_index=process_index,
      process_count=process_count,
    )
    ds = tfds.load(
      name,
      split=split,
      shuffle_files=True,
      data_dir=data_dir,
      read_config=tfds.ReadConfig(shuffle_seed=seed + source),
    )
    ds = ds.map(lambda x: x['text'])
    ds = ds.shuffle(data.shuffle_buffer, seed=seed + source)
    ds = ds.repeat().batch(data.docs_per_example, drop_remainder=True)

    def example(index, texts, source=source):
      text = tf.strings.reduce_join(texts, separator=data.document_separator)
      return make_example(
        text, _example_seed(seed, source, process_index, index), data
      )

    streams.append(
      ds.enumerate().map(example, num_parallel_calls=tf.data.AUTOTUNE)
    )
  if len(streams) == 1:
    ds = streams[0]
  else:
    ds = tf.data.Dataset.sample_from_datasets(
      streams,
      weights=list(weights),
      seed=seed,
      rerandomize_each_iteration=False,
    )
  ds = ds.batch(local, drop_remainder=True).skip(start_step)
  return ds.prefetch(tf.data.AUTOTUNE)


def train_batches(
  data: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's numpy share of global batches `start_step`, ... ."""
  kwargs = dict(
    seed=seed,
    batch_size=batch_size,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
  )
  if data.source == 'tfds':
    ds = tfds_train_dataset(data, **kwargs)
  else:
    ds = in_memory_train_dataset(
      in_memory_documents(data, 'train'), data, **kwargs
    )
  return ds.as_numpy_iterator()


# --- Eval sets ---


def window_text(text: str, length: int) -> list[bytes]:
  """Cuts text into consecutive windows of at most `length` UTF-8 bytes.

  Windows end at character boundaries, so each one decodes on its own.
  """
  data = text.encode('utf-8')
  windows, start = [], 0
  while start < len(data):
    end = min(start + length, len(data))
    while end < len(data) and (data[end] & 0xC0) == 0x80:
      end -= 1  # Never end just before a continuation byte.
    windows.append(data[start:end])
    start = end
  return windows


def mask_texts(
  texts: Sequence[bytes],
  data: ml_collections.ConfigDict,
  seed: int,
  mask_token_prob: float,
  random_token_prob: float,
) -> dict:
  """Tokenizes and masks fixed texts (no crop); example i uses (seed, i).

  Words are selected with `eval_mask_prob(data)`; the replacement shares
  are given, so that an eval set can replace every selected word by [MASK].

  Returns:
    A dict of numpy arrays [N, S] with the batch keys.
  """
  tf = _tf()
  mask_prob = eval_mask_prob(data)
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))

  def example(index, text):
    features = tokenize(text, data.seq_len)
    return whole_word_mask(
      features,
      _example_seed(seed, index),
      mask_prob=mask_prob,
      mask_token_prob=mask_token_prob,
      random_token_prob=random_token_prob,
      leading_space=data.get('mask_leading_space', False),
    )

  ds = ds.enumerate().map(example).batch(max(len(texts), 1))
  return next(iter(ds.as_numpy_iterator()))


def eval_mask_prob(data: ml_collections.ConfigDict) -> float:
  """The share of words an eval set selects: `data.eval_mask_prob`, so
  that eval figures stay comparable when training masks more; configs
  without the key use `data.mask_prob`."""
  value = data.get('eval_mask_prob')
  return data.mask_prob if value is None else value


def eval_arrays(
  data: ml_collections.ConfigDict,
  seed: int,
  mask_token_prob: float | None = None,
  random_token_prob: float | None = None,
) -> dict[str, np.ndarray]:
  """The whole eval set, masked once with a fixed seed.

  Words are selected with `eval_mask_prob(data)`, whatever share training
  selects. Selected words are replaced as `data.eval_mask_token_prob` and
  `data.eval_random_token_prob` say (or the two arguments, when given); by
  default all by [MASK], so that `masked_accuracy` measures prediction from
  context alone (no unchanged words to copy). The same seed selects the same
  words whatever the replacement shares.

  In-memory sources: the held-out documents, joined and cut into
  consecutive windows of `seq_len` bytes. TFDS: the first
  `num_eval_examples` documents of `tfds_eval_split` of the first dataset,
  one window each.

  Returns:
    A dict of numpy arrays [N, S] with the batch keys.
  """
  if data.source == 'tfds':
    import tensorflow_datasets as tfds

    ds = tfds.load(
      data.tfds_names[0], split=data.tfds_eval_split, shuffle_files=False
    )
    texts = [
      window_text(x['text'].decode('utf-8', errors='replace'), data.seq_len)[0]
      for x in ds.take(data.num_eval_examples).as_numpy_iterator()
      if x['text']
    ]
  else:
    docs = in_memory_documents(data, 'eval')
    texts = window_text(data.document_separator.join(docs), data.seq_len)
  if not texts:
    raise ValueError('The eval split is empty.')
  return mask_texts(
    texts,
    data,
    seed,
    mask_token_prob=(
      data.eval_mask_token_prob if mask_token_prob is None else mask_token_prob
    ),
    random_token_prob=(
      data.eval_random_token_prob
      if random_token_prob is None
      else random_token_prob
    ),
  )


def batch_arrays(
  arrays: dict[str, np.ndarray],
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's share of padded global batches of fixed arrays.

  The last global batch is padded with copies of example 0 and a `mask` of 0
  (`parallel.padded_eval_batches`).
  """
  return parallel.padded_eval_batches(
    arrays, batch_size, process_index, process_count
  )


# --- Display ---


def decode_for_display(ids: Sequence[int], mask_char: str = '_') -> str:
  """Byte ids to text for people to read.

  [MASK] ids show as `mask_char`, other special ids are dropped, and bytes
  that do not form valid UTF-8 show as `\\xNN` escapes. A valid multibyte
  character is never split: decoding is done on the whole byte string.
  """
  out, chunk = [], bytearray()

  def flush():
    if chunk:
      out.append(bytes(chunk).decode('utf-8', errors='backslashreplace'))
      chunk.clear()

  for i in np.asarray(ids).reshape(-1).tolist():
    if i >= NUM_RESERVED:
      chunk.append(i - NUM_RESERVED)
    elif i == MASK_ID:
      flush()
      out.append(mask_char)
  flush()
  return ''.join(out)
