"""GLUE data for byte-level fine-tuning: tfds `glue/*` to padded byte batches.

Shape letters: B batch, S sequence length in bytes.

Each example is UTF-8 bytes (ids = byte + 6): the first text, then [SEP] and
the second text for sentence-pair tasks, truncated to S (longest text first,
never inside a multibyte character) and right-padded with a mask. The paper
uses one learned decoder query instead of a [CLS] token, so none is added.

The splits are read once into memory (texts, not ids: MNLI and QQP have
~400k examples) and batches are encoded on the fly. Train batches follow a
fresh permutation per epoch drawn from (seed, epoch), so the batch of any
step is known without replaying the ones before it.

Batches are dicts of numpy arrays:
  inputs      int32[B, S]   byte ids.
  input_mask  int32[B, S]   1 for real bytes.
  label       int32[B] (classification) or float32[B] (STS-B).
  index       int32[B]      eval only: position in the eval set.
  split       int32[B]      eval only: which eval split (MNLI m / mm).
  mask        float32[B]    eval only: 1 for real, 0 for padded examples.
"""

import dataclasses
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np

from experiments import parallel
from perceiver_io import bytes_tokenizer

TFDS_VERSION = '2.0.0'


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What differs between GLUE tasks."""

  text_keys: tuple[str, ...]
  num_classes: int  # 1 for regression (STS-B).
  eval_splits: tuple[str, ...] = ('validation',)

  @property
  def is_regression(self) -> bool:
    return self.num_classes == 1


TASKS = {
  'cola': TaskInfo(('sentence',), 2),
  'sst2': TaskInfo(('sentence',), 2),
  'mrpc': TaskInfo(('sentence1', 'sentence2'), 2),
  'qqp': TaskInfo(('question1', 'question2'), 2),
  'stsb': TaskInfo(('sentence1', 'sentence2'), 1),
  'mnli': TaskInfo(
    ('premise', 'hypothesis'),
    3,
    ('validation_matched', 'validation_mismatched'),
  ),
  'qnli': TaskInfo(('question', 'sentence'), 2),
  'rte': TaskInfo(('sentence1', 'sentence2'), 2),
  'wnli': TaskInfo(('sentence1', 'sentence2'), 2),
}


def task_info(task: str) -> TaskInfo:
  if task not in TASKS:
    raise ValueError(f'Unknown GLUE task {task!r}; use one of {sorted(TASKS)}.')
  return TASKS[task]


# --- Encoding ---


def _cut(text: bytes, length: int) -> bytes:
  """The first <= `length` bytes of UTF-8 text, ending on a character."""
  if len(text) <= length:
    return text
  end = length
  while end > 0 and (text[end] & 0xC0) == 0x80:
    end -= 1
  return text[:end]


def truncate_pair(a: bytes, b: bytes | None, budget: int):
  """Shortens the longer text first until both fit in `budget` bytes."""
  if b is None:
    return _cut(a, budget), None
  if len(a) + len(b) <= budget:
    return a, b
  # Give the shorter text up to half of the budget, the longer the rest.
  short_len = min(len(a), len(b), budget // 2)
  if len(a) <= len(b):
    a = _cut(a, short_len)
    return a, _cut(b, budget - len(a))
  b = _cut(b, short_len)
  return _cut(a, budget - len(b)), b


def encode(a: bytes, b: bytes | None, seq_len: int):
  """One example -> (int32[S] ids, int32[S] mask)."""
  budget = seq_len - (1 if b is not None else 0)
  if budget <= 0:
    raise ValueError(f'seq_len {seq_len} leaves no room for text.')
  a, b = truncate_pair(a, b, budget)
  ids = (
    np.frombuffer(a, np.uint8).astype(np.int32)
    + bytes_tokenizer.NUM_SPECIAL_TOKENS
  )
  if b is not None:
    tail = (
      np.frombuffer(b, np.uint8).astype(np.int32)
      + bytes_tokenizer.NUM_SPECIAL_TOKENS
    )
    ids = np.concatenate([ids, [bytes_tokenizer.SEP], tail])
  out = np.full((seq_len,), bytes_tokenizer.PAD, np.int32)
  out[: len(ids)] = ids
  mask = np.zeros((seq_len,), np.int32)
  mask[: len(ids)] = 1
  return out, mask


# --- Splits in memory ---


@dataclasses.dataclass
class Split:
  """One split: texts (bytes) and labels."""

  text_a: list[bytes]
  text_b: list[bytes] | None
  label: np.ndarray  # int32[N] or float32[N]

  def __len__(self) -> int:
    return len(self.text_a)

  def encode(
    self, indices: Sequence[int], seq_len: int
  ) -> dict[str, np.ndarray]:
    pairs = [
      encode(
        self.text_a[i], None if self.text_b is None else self.text_b[i], seq_len
      )
      for i in indices
    ]
    return {
      'inputs': np.stack([p[0] for p in pairs]),
      'input_mask': np.stack([p[1] for p in pairs]),
      'label': self.label[np.asarray(indices, np.int64)],
    }


def load_split(task: str, split: str, data_dir: str | None = None) -> Split:
  """Reads `glue/<task>` split `split` from TFDS into memory.

  Raises:
    ValueError: if the split is empty or its labels are missing (the test
      splits have label -1).
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], 'GPU')
  info = task_info(task)
  ds = tfds.load(
    f'glue/{task}:{TFDS_VERSION}',
    split=split,
    data_dir=data_dir,
    shuffle_files=False,
  )
  columns = {k: [] for k in (*info.text_keys, 'label')}
  for example in tfds.as_numpy(ds):
    for key, values in columns.items():
      values.append(example[key])
  if not columns['label']:
    raise ValueError(f'glue/{task} split {split!r} is empty.')
  dtype = np.float32 if info.is_regression else np.int32
  label = np.asarray(columns['label'], dtype)
  if not info.is_regression and (
    label.min() < 0 or label.max() >= info.num_classes
  ):
    raise ValueError(
      f'glue/{task} split {split!r} has labels outside [0, {info.num_classes}) '
      '(test splits are unlabelled; use a validation split).'
    )
  text_b = columns[info.text_keys[1]] if len(info.text_keys) > 1 else None
  return Split(list(columns[info.text_keys[0]]), text_b, label)


# --- Batches ---


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(
  split: Split,
  *,
  seq_len: int,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches from step `start_step` (this process's share).

  Position k of the example stream is `permutation(seed, k // N)[k % N]`;
  global batch s is positions [s * B, (s + 1) * B).
  """
  n = len(split)
  rows = parallel.process_slice(batch_size, process_index, process_count)
  perms = {}
  step = start_step
  while True:
    first = step * batch_size
    positions = np.arange(first + rows.start, first + rows.stop)
    indices = []
    for k in positions.tolist():
      epoch = k // n
      if epoch not in perms:
        perms = {e: p for e, p in perms.items() if e >= epoch - 1}
        perms[epoch] = epoch_permutation(seed, epoch, n)
      indices.append(int(perms[epoch][k % n]))
    yield split.encode(indices, seq_len)
    step += 1


def eval_batches(
  splits: Sequence[Split],
  *,
  seq_len: int,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `splits` once, in order, in padded global batches.

  `index` numbers the examples of all splits together (split j's examples
  come after those of splits < j); `split` is j.
  """
  sizes = [len(s) for s in splits]
  total = sum(sizes)
  offsets = np.cumsum([0, *sizes])
  for index, mask in parallel.padded_eval_indices(
    total, batch_size, process_index, process_count
  ):
    which = np.searchsorted(offsets, index, side='right') - 1
    parts = [
      splits[j].encode([int(i - offsets[j])], seq_len)
      for i, j in zip(index.tolist(), which.tolist(), strict=True)
    ]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    batch['index'] = index.astype(np.int32)
    batch['split'] = which.astype(np.int32)
    batch['mask'] = mask
    yield batch
