"""The UTF-8 byte tokenizer of the released language model.

Ids 0..5 are special tokens; byte b has id b + 6; the vocabulary has 262 ids.
"""

import numpy as np

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
NUM_SPECIAL_TOKENS = 6
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


class BytesTokenizer:
  """Text <-> int32 ids, one id per UTF-8 byte."""

  pad_token = PAD
  bos_token = BOS
  eos_token = EOS
  mask_token = MASK
  cls_token = CLS
  sep_token = SEP
  vocab_size = VOCAB_SIZE
  num_special_tokens = NUM_SPECIAL_TOKENS

  def to_int(self, text: str | bytes) -> np.ndarray:
    """UTF-8 encodes `text` (str) or takes `text` (bytes) -> int32[len]."""
    if isinstance(text, str):
      text = text.encode('utf-8')
    if not isinstance(text, bytes | bytearray):
      raise TypeError(f'to_int takes str or bytes; got {type(text).__name__}.')
    return np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int32) + (
      NUM_SPECIAL_TOKENS
    )

  def to_bytes(self, ids) -> bytes:
    """The bytes of `ids`, dropping special tokens."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f'to_bytes takes a 1-D id array; got shape {ids.shape}.')
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
      raise ValueError(f'Token ids must be in [0, {VOCAB_SIZE}).')
    ids = ids[ids >= NUM_SPECIAL_TOKENS] - NUM_SPECIAL_TOKENS
    return ids.astype(np.uint8).tobytes()

  def to_string(self, ids, errors: str = 'replace') -> str:
    """Decodes `ids` to text, dropping special tokens.

    Invalid UTF-8 (e.g. a multibyte character cut by a crop) becomes U+FFFD
    with the default `errors='replace'`; it never raises.
    """
    return self.to_bytes(ids).decode('utf-8', errors=errors)

  def pad(self, ids, length: int):
    """Right-pads (or rejects) ids -> (int32[length] ids, int32[length] mask).

    Raises:
      ValueError: if `ids` is longer than `length`.
    """
    ids = np.asarray(ids, dtype=np.int32)
    if ids.shape[0] > length:
      raise ValueError(f'{ids.shape[0]} tokens do not fit in {length}.')
    padded = np.full((length,), PAD, dtype=np.int32)
    padded[: ids.shape[0]] = ids
    mask = np.zeros((length,), dtype=np.int32)
    mask[: ids.shape[0]] = 1
    return padded, mask
