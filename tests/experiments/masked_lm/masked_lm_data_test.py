"""Tests for experiments.masked_lm.data: corpora, byte ops, masking and streams."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from configs import masked_lm as masked_lm_config
from experiments.masked_lm import data as task_data
from perceiver_io import bytes_tokenizer

MULTIBYTE = 'Grüße aus Köln — naïve café, 東京 and emoji 🙂 end.\n'


def make_data(**overrides):
  """The experiment's data defaults at test sizes, then `overrides`."""
  data = masked_lm_config.get_config('local').data
  data.update(
    dict(
      source='files',
      seq_len=32,
      docs_per_example=3,
      eval_seed=7,
      shuffle_buffer=8,
      num_eval_examples=4,
    )
  )
  data.update(overrides)
  return data


def features(text, length):
  return task_data.tokenize(tf.constant(text.encode('utf-8')), length)


def mask_every_word(text, length, **kwargs):
  """`whole_word_mask` selecting every word and replacing it by [MASK]."""
  return task_data.whole_word_mask(
    features(text, length),
    tf.constant([0, 1]),
    mask_prob=1.0,
    mask_token_prob=1.0,
    random_token_prob=0.0,
    **kwargs,
  )


class ConstantsTest(absltest.TestCase):
  def test_ids_agree_with_the_tokenizer(self):
    tokenizer = bytes_tokenizer.BytesTokenizer()
    self.assertEqual(task_data.PAD_ID, tokenizer.pad_token)
    self.assertEqual(task_data.MASK_ID, tokenizer.mask_token)
    self.assertEqual(task_data.VOCAB_SIZE, tokenizer.vocab_size)
    ids = features('aé', 4)['tokens'].numpy()
    np.testing.assert_array_equal(ids[:3], tokenizer.to_int('aé'))


class CorpusTest(parameterized.TestCase):
  @parameterized.parameters(0.1, 0.3, 0.5)
  def test_split_cuts_at_a_line_break(self, fraction):
    text = ''.join(f'line {i} with some words\n' for i in range(50))
    train, held = task_data.split_document(text, fraction)
    self.assertEqual(train + held, text)
    self.assertTrue(train.endswith('\n'))
    self.assertAlmostEqual(len(held) / len(text), fraction, delta=0.05)

  def test_split_without_holdout_and_bad_fraction(self):
    self.assertEqual(task_data.split_document('abc', 0.0), ('abc', ''))
    with self.assertRaisesRegex(ValueError, 'holdout_fraction'):
      task_data.split_document('abc', 1.0)

  def test_pydoc_corpus_is_split_per_topic(self):
    data = make_data(source='pydoc')
    train = task_data.in_memory_documents(data, 'train')
    held = task_data.in_memory_documents(data, 'eval')
    docs = task_data.pydoc_documents()
    self.assertLen(train, len(docs))
    total = sum(len(d) for d in docs)
    self.assertAlmostEqual(sum(len(d) for d in held) / total, 0.1, delta=0.02)
    self.assertTrue(docs[0].startswith(train[0]))

  def test_files_are_documents(self):
    tmp = self.create_tempdir()
    tmp.create_file('b.txt', content='second file\n' * 20)
    tmp.create_file('a.txt', content=MULTIBYTE * 20)
    with open(os.path.join(tmp.full_path, 'bad.txt'), 'wb') as f:
      f.write(b'latin-1 \xe9t\xe9\n' * 20)
    docs = task_data.file_documents(os.path.join(tmp.full_path, '*.txt'))
    self.assertLen(docs, 3)
    self.assertTrue(docs[0].startswith('Grüße'))  # Sorted by path.
    self.assertIn('\ufffd', docs[2])  # Invalid UTF-8 is replaced.

  def test_missing_files_and_unknown_source(self):
    with self.assertRaisesRegex(FileNotFoundError, 'No text file matches'):
      task_data.file_documents('/nonexistent/dir/*.txt')
    with self.assertRaisesRegex(ValueError, 'names no file'):
      task_data.file_documents('')
    with self.assertRaisesRegex(ValueError, 'Unknown in-memory source'):
      task_data.in_memory_documents(make_data(source='web'), 'train')


class ByteOpsTest(parameterized.TestCase):
  def test_tokenize_pads_and_truncates(self):
    out = features('hello', 8)
    np.testing.assert_array_equal(
      out['tokens'].numpy(), [ord(c) + 6 for c in 'hello'] + [0, 0, 0]
    )
    np.testing.assert_array_equal(out['input_mask'].numpy(), [1] * 5 + [0] * 3)
    self.assertEqual(features('x' * 20, 8)['input_mask'].numpy().sum(), 8)

  @parameterized.parameters(5, 7, 16)
  def test_random_crop_never_splits_a_character(self, length):
    text = tf.constant((MULTIBYTE * 3).encode('utf-8'))
    lengths = set()
    for i in range(60):
      window = task_data.random_crop(text, length, tf.constant([i, 3])).numpy()
      self.assertLessEqual(len(window), length)
      window.decode('utf-8')  # Raises on a split character.
      lengths.add(len(window))
    self.assertGreater(len(lengths), 1)  # Edges really are trimmed.

  def test_random_crop_keeps_short_text(self):
    window = task_data.random_crop(
      tf.constant(b'short'), 16, tf.constant([1, 2])
    )
    self.assertEqual(window.numpy(), b'short')

  def test_word_ids(self):
    ids = task_data.word_ids(features('ab  cd\ne', 10)['tokens']).numpy()
    np.testing.assert_array_equal(ids, [1, 1, 0, 0, 2, 2, 0, 3, 0, 0])

  def test_word_ids_with_leading_space(self):
    # Each word takes the one whitespace byte before it, not the one after,
    # and not the first of two spaces.
    ids = task_data.word_ids(
      features('ab  cd\ne', 10)['tokens'], leading_space=True
    ).numpy()
    np.testing.assert_array_equal(ids, [1, 1, 0, 2, 2, 2, 3, 3, 0, 0])

  def test_everything_masked_with_leading_space(self):
    out = mask_every_word('the cat sat', 12, leading_space=True)
    np.testing.assert_array_equal(out['inputs'].numpy(), [3] * 11 + [0])
    np.testing.assert_array_equal(out['weights'].numpy(), [1] * 11 + [0])

  def test_everything_masked(self):
    out = mask_every_word('the cat sat', 12)
    space = ord(' ') + 6
    np.testing.assert_array_equal(
      out['inputs'].numpy(), [3, 3, 3, space, 3, 3, 3, space, 3, 3, 3, 0]
    )
    np.testing.assert_array_equal(
      out['weights'].numpy(), [1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0]
    )
    np.testing.assert_array_equal(
      out['targets'].numpy(), features('the cat sat', 12)['tokens'].numpy()
    )

  def test_masking_statistics_and_whole_words(self):
    text = ' '.join(['word'] * 60)
    base = features(text, 300)
    ids = task_data.word_ids(base['tokens']).numpy()
    selected = kinds = 0
    counts = {'mask': 0, 'random': 0, 'kept': 0}
    for i in range(200):
      out = task_data.whole_word_mask(base, tf.constant([i, 0]))
      w, x = out['weights'].numpy(), out['inputs'].numpy()
      t = out['targets'].numpy()
      self.assertTrue(np.all(w[ids == 0] == 0))  # Spaces, padding.
      for word in range(1, ids.max() + 1):
        in_word = ids == word
        self.assertIn(w[in_word].sum(), (0, in_word.sum()))  # Whole words.
        if w[in_word].all():
          selected += 1
          if (x[in_word] == task_data.MASK_ID).all():
            counts['mask'] += 1
          elif (x[in_word] == t[in_word]).all():
            counts['kept'] += 1
          else:
            counts['random'] += 1
        kinds += 1
    self.assertAlmostEqual(selected / kinds, 0.15, delta=0.015)
    self.assertAlmostEqual(counts['mask'] / selected, 0.8, delta=0.04)
    self.assertAlmostEqual(counts['random'] / selected, 0.1, delta=0.03)
    self.assertAlmostEqual(counts['kept'] / selected, 0.1, delta=0.03)

  def test_masking_inside_tf_data_matches_eager(self):
    base = features('one two three four five six', 32)
    seed = tf.constant([5, 6])
    eager = task_data.whole_word_mask(base, seed, mask_prob=0.5)
    ds = tf.data.Dataset.from_tensors(base).map(
      lambda f: task_data.whole_word_mask(f, seed, mask_prob=0.5)
    )
    graph = next(iter(ds))
    for key in eager:
      np.testing.assert_array_equal(eager[key].numpy(), graph[key].numpy())

  def test_bad_replacement_shares(self):
    with self.assertRaisesRegex(ValueError, 'exceeds 1'):
      task_data.whole_word_mask(
        features('a b', 4),
        tf.constant([0, 0]),
        mask_token_prob=0.9,
        random_token_prob=0.2,
      )


class StreamTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    tmp = self.create_tempdir()
    for i in range(4):
      tmp.create_file(f'doc{i}.txt', content=f'Document {i}. ' + MULTIBYTE * 4)
    self.data = make_data(files=os.path.join(tmp.full_path, '*.txt'))

  def batches(self, start_step, n, **kwargs):
    it = task_data.train_batches(
      self.data,
      seed=kwargs.pop('seed', 0),
      batch_size=4,
      start_step=start_step,
      **kwargs,
    )
    return [next(it) for _ in range(n)]

  def test_shapes_and_keys(self):
    (batch,) = self.batches(0, 1)
    self.assertEqual(set(batch), set(task_data.BATCH_KEYS))
    for key in task_data.BATCH_KEYS:
      self.assertEqual(batch[key].shape, (4, 32))
    self.assertEqual(batch['inputs'].dtype, np.int32)
    self.assertEqual(batch['weights'].dtype, np.float32)

  def test_resumes_exactly_and_depends_on_seed(self):
    run = self.batches(0, 3)
    resumed = self.batches(2, 1)
    for key in task_data.BATCH_KEYS:
      np.testing.assert_array_equal(run[2][key], resumed[0][key])
    other = self.batches(2, 1, seed=1)
    self.assertFalse(np.array_equal(run[2]['targets'], other[0]['targets']))

  def test_process_shares_make_the_global_batch(self):
    (whole,) = self.batches(1, 1)
    shares = [
      self.batches(1, 1, process_index=p, process_count=2)[0] for p in (0, 1)
    ]
    for key in task_data.BATCH_KEYS:
      np.testing.assert_array_equal(
        whole[key], np.concatenate([s[key] for s in shares])
      )

  def test_train_crops_decode_as_utf8(self):
    for batch in self.batches(0, 2):
      for row, mask in zip(batch['targets'], batch['input_mask'], strict=True):
        data = bytes((row[mask == 1] - 6).astype(np.uint8).tolist())
        data.decode('utf-8')

  def test_eval_set_is_fixed_padded_and_fully_masked(self):
    arrays = task_data.eval_arrays(self.data, seed=3)
    again = task_data.eval_arrays(self.data, seed=3)
    np.testing.assert_array_equal(arrays['inputs'], again['inputs'])
    selected = arrays['weights'] == 1
    self.assertGreater(selected.sum(), 0)
    self.assertTrue(np.all(arrays['inputs'][selected] == task_data.MASK_ID))
    n = len(arrays['inputs'])
    batches = list(task_data.batch_arrays(arrays, 8))
    self.assertLen(batches, -(-n // 8))
    self.assertEqual(sum(b['mask'].sum() for b in batches), n)
    self.assertTrue(all(b['inputs'].shape == (8, 32) for b in batches))

  def test_eval_selects_its_own_share_of_words(self):
    # Training may select more words; the eval set keeps eval_mask_prob.
    arrays = task_data.eval_arrays(self.data, seed=3)
    trained_harder = self.data.copy_and_resolve_references()
    trained_harder.mask_prob = 0.6
    again = task_data.eval_arrays(trained_harder, seed=3)
    for key in arrays:
      np.testing.assert_array_equal(arrays[key], again[key])
    # Without the key, the eval set follows mask_prob.
    legacy = self.data.copy_and_resolve_references()
    del legacy['eval_mask_prob']
    legacy.mask_prob = 0.6
    more = task_data.eval_arrays(legacy, seed=3)
    self.assertGreater(more['weights'].sum(), 2 * arrays['weights'].sum())

  def test_eval_spans_take_their_leading_space(self):
    arrays = task_data.eval_arrays(self.data, seed=3)
    space = ord(' ') + task_data.NUM_RESERVED
    selected = arrays['weights'] > 0
    self.assertTrue(np.any(arrays['targets'][selected] == space))
    no_space = self.data.copy_and_resolve_references()
    no_space.mask_leading_space = False
    words = task_data.eval_arrays(no_space, seed=3)
    self.assertFalse(np.any(words['targets'][words['weights'] > 0] == space))
    # The same words: the spans differ only by their leading whitespace.
    separator = np.isin(
      arrays['targets'], np.array(task_data.WHITESPACE_BYTES) + 6
    )
    np.testing.assert_array_equal(
      words['weights'], arrays['weights'] * ~separator
    )


class WindowAndDisplayTest(absltest.TestCase):
  def test_windows_end_on_characters(self):
    windows = task_data.window_text(MULTIBYTE * 2, 7)
    self.assertEqual(b''.join(windows), (MULTIBYTE * 2).encode('utf-8'))
    for w in windows:
      self.assertLessEqual(len(w), 7)
      w.decode('utf-8')

  def test_display_of_masks_and_invalid_bytes(self):
    ids = list(bytes_tokenizer.BytesTokenizer().to_int('Köln '))
    ids += [task_data.MASK_ID, task_data.MASK_ID, 0xE2 + 6, ord('!') + 6, 0]
    self.assertEqual(task_data.decode_for_display(ids), 'Köln __\\xe2!')


class TfdsTest(absltest.TestCase):
  def test_mixture_on_mock_data(self):
    import tensorflow_datasets as tfds

    data = make_data(source='tfds', seq_len=24, docs_per_example=2)
    with tfds.testing.mock_data(num_examples=20):
      it = task_data.train_batches(data, seed=0, batch_size=4)
      first = [next(it) for _ in range(3)]
      resumed = next(
        task_data.train_batches(data, seed=0, batch_size=4, start_step=2)
      )
      arrays = task_data.eval_arrays(data, seed=1)
    self.assertEqual(first[0]['inputs'].shape, (4, 24))
    np.testing.assert_array_equal(first[2]['targets'], resumed['targets'])
    self.assertEqual(arrays['inputs'].shape, (4, 24))

  def test_mismatched_weights(self):
    data = make_data(source='tfds', tfds_weights=(1.0,))
    with self.assertRaisesRegex(ValueError, 'same length'):
      task_data.tfds_train_dataset(data, seed=0, batch_size=4)


if __name__ == '__main__':
  absltest.main()
