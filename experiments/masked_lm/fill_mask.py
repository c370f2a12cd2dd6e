r"""Fill in masked bytes of text with a byte-level masked language model.

  python -m experiments.masked_lm.fill_mask --checkpoint=runs/mlm \
    --text='The "if" statement is used for conditional[[ execution]]:'

  python -m experiments.masked_lm.fill_mask \
    --checkpoint=language_perceiver_io_bytes.pickle \
    --text='This is an incomplete sentence where some words are missing.' \
    --spans=51:60

prints the text with the masked bytes replaced by the model's predictions
(the second command prints the colab's " missing."). Spans are given either
inline, `[[hidden text]]` (its bytes are masked; only their number reaches
the model), or as UTF-8 byte ranges `start:end` (end exclusive), separated
by commas. The checkpoint is one of our masked-LM workdirs (or a step
directory in it), DeepMind's `language_perceiver_io_bytes.pickle`, or an
`.npz` converted from it.

Predicted bytes that do not form valid UTF-8 are shown as `\xNN` escapes;
valid multibyte characters are never split.
"""

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.masked_lm import data as task_data
from perceiver_io import bytes_tokenizer

OPEN, CLOSE = '[[', ']]'
_TOKENIZER = bytes_tokenizer.BytesTokenizer()


# --- Text handling ---


def parse_marked(text: str, open_mark: str = OPEN, close_mark: str = CLOSE):
  """Removes span markers; returns (text, [(start, end) UTF-8 byte spans]).

  Raises:
    ValueError: on an unclosed, nested or stray marker, or an empty span.
  """
  plain, spans = [], []
  position, i = 0, 0  # Byte offset in the plain text; char index in `text`.
  while i < len(text):
    if text.startswith(close_mark, i):
      raise ValueError(f'{close_mark!r} at character {i} closes no span.')
    if text.startswith(open_mark, i):
      end = text.find(close_mark, i + len(open_mark))
      if end == -1:
        raise ValueError(f'{open_mark!r} at character {i} is never closed.')
      inner = text[i + len(open_mark) : end]
      if open_mark in inner:
        raise ValueError(f'Nested {open_mark!r} at character {i}.')
      size = len(inner.encode('utf-8'))
      if not size:
        raise ValueError(f'Empty span at character {i}.')
      spans.append((position, position + size))
      plain.append(inner)
      position += size
      i = end + len(close_mark)
    else:
      plain.append(text[i])
      position += len(text[i].encode('utf-8'))
      i += 1
  return ''.join(plain), spans


def parse_spans(spec: str) -> list[tuple[int, int]]:
  """'51:60,70:72' -> [(51, 60), (70, 72)].

  Raises:
    ValueError: on a malformed or empty range.
  """
  spans = []
  for part in spec.split(','):
    part = part.strip()
    if not part:
      continue
    try:
      start, end = (int(x) for x in part.split(':'))
    except ValueError as e:
      raise ValueError(f'Span {part!r} is not start:end.') from e
    if not 0 <= start < end:
      raise ValueError(f'Span {part!r} must satisfy 0 <= start < end.')
    spans.append((start, end))
  return spans


def mask_ids(text: str, spans: Sequence[tuple[int, int]], seq_len: int):
  """Byte ids with the spans set to [MASK], padded to `seq_len`.

  Returns:
    (inputs int32[S], input_mask int32[S], original ids int32[n]).

  Raises:
    ValueError: if a span is out of range or the text does not fit.
  """
  ids = _TOKENIZER.to_int(text)
  if len(ids) > seq_len:
    raise ValueError(
      f'The text has {len(ids)} bytes; this model reads at most {seq_len}.'
    )
  masked = ids.copy()
  for start, end in spans:
    if end > len(ids):
      raise ValueError(
        f'Span {start}:{end} is outside the text ({len(ids)} bytes).'
      )
    masked[start:end] = bytes_tokenizer.MASK
  inputs, input_mask = _TOKENIZER.pad(masked, seq_len)
  return inputs, input_mask, ids


@dataclasses.dataclass(frozen=True)
class FillResult:
  """What `fill_mask` predicted."""

  text: str  # The input with the predictions in place (for display).
  spans: tuple[tuple[int, int], ...]
  predictions: tuple[str, ...]  # One display string per span.
  filled_ids: np.ndarray  # int32[n]: the text's byte ids, spans predicted.


# --- Models ---


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """A masked LM with weights: `apply(params, state, rng, **inputs)`."""

  model: object
  params: object
  state: object
  seq_len: int
  source: str


def load_language_model(
  path: str, config: ml_collections.ConfigDict | None = None
) -> LanguageModel:
  """Loads one of our masked-LM workdirs or DeepMind's language checkpoint.

  Args:
    path: our workdir (or its checkpoints or a step directory), a released
      `.pickle`, or an `.npz` converted from one.
    config: model config of a released-format file; default the released
      sizes. Our workdirs carry their own config.

  Raises:
    FileNotFoundError: if `path` does not exist, or is a directory without
      a run's config.json or checkpoint (see `runs.load_run`).
    ValueError: if it is not a byte-level language model of that config.
  """
  path = os.path.abspath(os.path.expanduser(path))  # orbax needs absolute.
  if not os.path.exists(path):
    raise FileNotFoundError(f'No checkpoint at {path!r}.')
  from experiments import runs

  if runs.is_run(path):
    run = runs.load_run(path, experiment='experiments.masked_lm.train')
    model, params, state = run.model, run.params, run.state
    seq_len = int(run.config.data.seq_len)
  else:
    from perceiver_io import models
    from perceiver_io import pretrained

    loaded = pretrained.load(path, name=models.LANGUAGE, config=config)
    model, params, state = loaded.model, loaded.params, loaded.state
    seq_len = int(loaded.config.max_seq_len)
  return LanguageModel(model, params, state, seq_len, path)


def fill_mask(
  lm: LanguageModel, text: str, spans: Sequence[tuple[int, int]] | None = None
) -> FillResult:
  """Predicts the masked bytes of `text`.

  Args:
    lm: from `load_language_model`.
    text: the text; with `spans=None`, spans are marked inline `[[...]]`.
    spans: UTF-8 byte ranges (start, end) of `text` to mask.

  Returns:
    A `FillResult`; `.text` is the text with the predictions in place.

  Raises:
    ValueError: on bad markers or spans, or text longer than the model's
      input.
  """
  if spans is None:
    text, spans = parse_marked(text)
  if not spans:
    raise ValueError('Nothing to fill: mark spans with [[...]] or give spans.')
  inputs, input_mask, ids = mask_ids(text, spans, lm.seq_len)
  logits, _ = _apply(lm, inputs[None], input_mask[None])  # [1, S, V]
  predicted = np.asarray(jnp.argmax(logits[0], axis=-1))  # [S]
  filled = ids.copy()
  for start, end in spans:
    filled[start:end] = predicted[start:end]
  # A special id predicted inside a span has no byte: it is dropped.
  return FillResult(
    text=task_data.decode_for_display(filled),
    spans=tuple(tuple(s) for s in spans),
    predictions=tuple(
      task_data.decode_for_display(filled[s:e]) for s, e in spans
    ),
    filled_ids=filled,
  )


def _apply(lm, inputs, input_mask):
  # DeepMind's code draws an rng even at zero dropout; ours does not, but
  # a key costs nothing and keeps either kind of model happy.
  return lm.model.apply(
    lm.params,
    lm.state,
    jax.random.PRNGKey(0),
    is_training=False,
    inputs=jnp.asarray(inputs),
    input_mask=jnp.asarray(input_mask),
  )


# --- Command ---


def main(argv):
  from absl import flags

  del argv
  flags_ = flags.FLAGS
  lm = load_language_model(flags_.checkpoint)
  spans = parse_spans(flags_.spans) if flags_.spans else None
  result = fill_mask(lm, flags_.text, spans)
  print(result.text)
  for (start, end), prediction in zip(
    result.spans, result.predictions, strict=True
  ):
    print(f'  bytes {start}:{end} -> {prediction!r}')


def define_flags():
  from absl import flags

  flags.DEFINE_string(
    'checkpoint', None, 'Our MLM workdir or a released language checkpoint.'
  )
  flags.DEFINE_string(
    'text', None, 'Text with spans marked as [[...]] (or see --spans).'
  )
  flags.DEFINE_string(
    'spans', '', 'Comma-separated UTF-8 byte ranges start:end to mask.'
  )
  flags.mark_flags_as_required(['checkpoint', 'text'])


if __name__ == '__main__':
  define_flags()
  from experiments import cli

  cli.run(main, tool=True)
