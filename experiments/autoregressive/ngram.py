"""The honest baseline of Perceiver AR: an order-3 token n-gram.

Shape letters: V vocabulary, L stream length.

Each order interpolates with the one below it by a Dirichlet prior of
strength `alpha` (MacKay and Peto 1995; add-k smoothing whose prior is the
lower order rather than uniform):

  p0(c)      = 1 / V
  p1(c)      = (n(c)     + alpha p0(c))    / (n()     + alpha)
  p2(c | b)  = (n(b c)   + alpha p1(c))    / (n(b)    + alpha)
  p3(c | ab) = (n(a b c) + alpha p2(c | b)) / (n(a b) + alpha)

where n(.) counts the training streams and n(h) = sum over c of n(h c). The
first tokens of a stream, with a shorter history, use the lower orders.
The task fits it on the training files and scores it in the same eval as the
model, on the same targets (`eval/ngram_bits_per_byte`).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

MAX_ORDER = 3


@dataclasses.dataclass(frozen=True)
class NGram:
  """Counts of an n-gram model; see the module docstring.

  Attributes:
    counts: counts[k] is the int64 table of (k+1)-grams, of shape [V] * (k+1).
    alpha: the strength of the prior on the next lower order.
  """

  counts: tuple[np.ndarray, ...]
  alpha: float

  @property
  def order(self) -> int:
    return len(self.counts)

  @property
  def vocab_size(self) -> int:
    return self.counts[0].shape[0]


def fit(
  streams: Sequence[np.ndarray],
  vocab_size: int = 256,
  order: int = MAX_ORDER,
  alpha: float = 1.0,
) -> NGram:
  """Counts the n-grams (up to `order`) inside each stream.

  Args:
    streams: token arrays (ints in [0, V)); n-grams never span two.
    vocab_size: V.
    order: 1, 2 or 3.
    alpha: see the module docstring; > 0.

  Raises:
    ValueError: on a bad order, alpha or token.
  """
  if not 1 <= order <= MAX_ORDER:
    raise ValueError(f'n-gram order must be in [1, {MAX_ORDER}]; got {order}.')
  if alpha <= 0:
    raise ValueError(f'n-gram alpha must be > 0; got {alpha}.')
  counts = [np.zeros((vocab_size,) * (k + 1), np.int64) for k in range(order)]
  for stream in streams:
    stream = np.asarray(stream, np.int64)
    if stream.size and (stream.min() < 0 or stream.max() >= vocab_size):
      raise ValueError(f'Tokens must be in [0, {vocab_size}).')
    for k in range(order):
      if len(stream) <= k:
        continue
      index = np.zeros(len(stream) - k, np.int64)
      for j in range(k + 1):
        index = index * vocab_size + stream[j : len(stream) - k + j]
      counts[k] += np.bincount(index, minlength=vocab_size ** (k + 1)).reshape(
        counts[k].shape
      )
  return NGram(counts=tuple(counts), alpha=float(alpha))


def probabilities(model: NGram, history: Sequence[int]) -> np.ndarray:
  """float64[V]: p(. | history), using its last order - 1 tokens."""
  history = list(history)[-(model.order - 1) :] if model.order > 1 else []
  p = np.full(model.vocab_size, 1.0 / model.vocab_size)
  for k in range(len(history) + 1):
    h = tuple(history[len(history) - k :])
    table = model.counts[k][h]  # [V]
    p = (table + model.alpha * p) / (table.sum() + model.alpha)
  return p


def bits(model: NGram, stream: np.ndarray) -> np.ndarray:
  """float64[L]: -log2 p(stream[t] | stream[:t]) for every position t."""
  stream = np.asarray(stream, np.int64)
  V, alpha = model.vocab_size, model.alpha
  out = np.zeros(len(stream))
  for t0 in range(min(model.order, len(stream))):
    # Positions with exactly t0 tokens of history use orders up to t0 + 1;
    # positions t >= order - 1 all use the full order.
    positions = (
      np.arange(t0, len(stream))
      if t0 == model.order - 1
      else np.array([t0], np.int64)
    )
    p = np.full(len(positions), 1.0 / V)
    target = stream[positions]
    for k in range(t0 + 1):
      context = np.zeros(len(positions), np.int64)
      for j in range(k):
        context = context * V + stream[positions - k + j]
      table = model.counts[k].reshape(-1, V)  # [V^k, V]
      hit = table[context, target]
      total = model.counts[k].reshape(-1, V).sum(axis=1)[context]
      p = (hit + alpha * p) / (total + alpha)
    out[positions] = -np.log2(p)
  return out
