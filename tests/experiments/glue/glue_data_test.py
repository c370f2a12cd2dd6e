"""Tests for experiments.glue.data: encoding, splits and batches."""

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from absl.testing import parameterized

from experiments.glue import data as task_data
from perceiver_io import bytes_tokenizer

SEP = bytes_tokenizer.SEP


def ids(text: bytes):
  return list(np.frombuffer(text, np.uint8).astype(np.int32) + 6)


class EncodeTest(parameterized.TestCase):
  def test_single_sentence(self):
    out, mask = task_data.encode(b'hi', None, 4)
    np.testing.assert_array_equal(out, ids(b'hi') + [0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])

  def test_pair_has_a_separator(self):
    out, mask = task_data.encode(b'ab', b'cd', 8)
    np.testing.assert_array_equal(
      out, ids(b'ab') + [SEP] + ids(b'cd') + [0, 0, 0]
    )
    self.assertEqual(mask.sum(), 5)

  def test_longest_text_is_cut_first(self):
    a, b = task_data.truncate_pair(b'a' * 10, b'bb', 8)
    self.assertEqual((a, b), (b'a' * 6, b'bb'))
    a, b = task_data.truncate_pair(b'a' * 10, b'b' * 10, 8)
    self.assertEqual((len(a), len(b)), (4, 4))
    out, mask = task_data.encode(b'a' * 100, b'b' * 100, 16)
    self.assertEqual(mask.sum(), 16)
    self.assertEqual(list(out).count(SEP), 1)

  def test_truncation_never_splits_a_character(self):
    text = 'é東京🙂'.encode()
    for budget in range(1, len(text) + 1):
      cut, _ = task_data.truncate_pair(text, None, budget)
      self.assertLessEqual(len(cut), budget)
      cut.decode('utf-8')
    a, b = task_data.truncate_pair(text * 3, text, 9)
    a.decode('utf-8')
    b.decode('utf-8')

  def test_unknown_task(self):
    with self.assertRaisesRegex(ValueError, 'Unknown GLUE task'):
      task_data.task_info('squad')


def _split(n, pair=True):
  a = [f'first {i}'.encode() for i in range(n)]
  b = [f'second {i}'.encode() for i in range(n)] if pair else None
  return task_data.Split(a, b, np.arange(n, dtype=np.int32) % 2)


class BatchTest(absltest.TestCase):
  def test_train_batches_cover_each_epoch_and_resume(self):
    split = _split(10)
    it = task_data.train_batches(split, seq_len=16, batch_size=5, seed=0)
    batches = [next(it) for _ in range(4)]
    seen = [b['inputs'][:, 6] - 6 - ord('0') for b in batches]  # The digit.
    self.assertEqual(sorted(np.concatenate(seen[:2]).tolist()), list(range(10)))
    self.assertEqual(sorted(np.concatenate(seen[2:]).tolist()), list(range(10)))
    self.assertFalse(
      np.array_equal(np.concatenate(seen[:2]), np.concatenate(seen[2:]))
    )
    resumed = next(
      task_data.train_batches(
        split, seq_len=16, batch_size=5, seed=0, start_step=3
      )
    )
    for key in batches[3]:
      np.testing.assert_array_equal(batches[3][key], resumed[key])

  def test_process_shares(self):
    split = _split(12)
    whole = next(
      task_data.train_batches(split, seq_len=16, batch_size=4, seed=1)
    )
    parts = [
      next(
        task_data.train_batches(
          split,
          seq_len=16,
          batch_size=4,
          seed=1,
          process_index=p,
          process_count=2,
        )
      )
      for p in (0, 1)
    ]
    np.testing.assert_array_equal(
      whole['inputs'], np.concatenate([p['inputs'] for p in parts])
    )

  def test_eval_batches_pad_and_index_two_splits(self):
    splits = [_split(5), _split(2)]
    batches = list(task_data.eval_batches(splits, seq_len=16, batch_size=4))
    self.assertLen(batches, 2)
    mask = np.concatenate([b['mask'] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 7 + [0])
    index = np.concatenate([b['index'] for b in batches])[:7]
    np.testing.assert_array_equal(index, range(7))
    which = np.concatenate([b['split'] for b in batches])[:7]
    np.testing.assert_array_equal(which, [0] * 5 + [1] * 2)
    self.assertTrue(all(b['inputs'].shape == (4, 16) for b in batches))


class TfdsTest(parameterized.TestCase):
  @parameterized.parameters('cola', 'stsb', 'mnli', 'qqp')
  def test_load_on_mock_data(self, task):
    info = task_data.task_info(task)
    with tfds.testing.mock_data(num_examples=6):
      split = task_data.load_split(task, info.eval_splits[0])
    self.assertLen(split, 6)
    self.assertEqual(split.text_b is None, len(info.text_keys) == 1)
    batch = split.encode([0, 1], 32)
    self.assertEqual(batch['inputs'].shape, (2, 32))
    expected = np.float32 if info.is_regression else np.int32
    self.assertEqual(batch['label'].dtype, expected)


if __name__ == '__main__':
  absltest.main()
