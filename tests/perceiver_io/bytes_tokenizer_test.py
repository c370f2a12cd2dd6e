"""Tests of the UTF-8 byte tokenizer."""

import numpy as np
from absl.testing import absltest

from perceiver_io import bytes_tokenizer


class BytesTokenizerTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tokenizer = bytes_tokenizer.BytesTokenizer()

  def test_round_trip_multibyte(self):
    text = 'Perceiver IO: naïve café, 東京, 🙂.'
    ids = self.tokenizer.to_int(text)
    self.assertEqual(ids.dtype, np.int32)
    self.assertLen(ids, len(text.encode('utf-8')))
    self.assertEqual(self.tokenizer.to_string(ids), text)

  def test_ids_and_specials(self):
    self.assertEqual(self.tokenizer.vocab_size, 262)
    np.testing.assert_array_equal(self.tokenizer.to_int('Ab'), [65 + 6, 98 + 6])
    ids = [
      bytes_tokenizer.CLS,
      65 + 6,
      bytes_tokenizer.MASK,
      98 + 6,
      bytes_tokenizer.PAD,
    ]
    self.assertEqual(self.tokenizer.to_string(ids), 'Ab')

  def test_cut_multibyte_is_replaced_not_raised(self):
    ids = self.tokenizer.to_int('é')[:1]
    self.assertEqual(self.tokenizer.to_string(ids), '\ufffd')

  def test_pad(self):
    ids, mask = self.tokenizer.pad(self.tokenizer.to_int('abc'), 5)
    np.testing.assert_array_equal(ids[3:], [0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])
    with self.assertRaisesRegex(ValueError, 'do not fit'):
      self.tokenizer.pad(ids, 2)

  def test_bad_input(self):
    with self.assertRaises(TypeError):
      self.tokenizer.to_int(123)
    with self.assertRaisesRegex(ValueError, r'\[0, 262\)'):
      self.tokenizer.to_string([300])


if __name__ == '__main__':
  absltest.main()
