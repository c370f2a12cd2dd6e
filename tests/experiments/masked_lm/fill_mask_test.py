"""Tests for experiments.masked_lm.fill_mask: spans, display, our and DeepMind's models."""

import json
import os

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import masked_lm as masked_lm_config
from experiments import trainer
from experiments.masked_lm import data as task_data
from experiments.masked_lm import fill_mask
from experiments.masked_lm import train
from perceiver_io import models

COLAB_TEXT = 'This is an incomplete sentence where some words are missing.'
# Set to a directory holding DeepMind's language_perceiver_io_bytes.pickle
# (https://storage.googleapis.com/perceiver_io/) to run the released test.
CHECKPOINT_DIR = os.environ.get('PERCEIVER_CHECKPOINT_DIR', '')
RELEASED = os.path.join(CHECKPOINT_DIR, 'language_perceiver_io_bytes.pickle')
PARITY_DIR = os.path.join(
  os.path.dirname(__file__), '..', '..', 'testdata', 'parity'
)


class ParseTest(parameterized.TestCase):
  def test_marked_spans_are_byte_ranges(self):
    text, spans = fill_mask.parse_marked(
      'This is an incomplete sentence where some words are[[ missing.]]'
    )
    self.assertEqual(text, COLAB_TEXT)
    self.assertEqual(spans, [(51, 60)])

  def test_multibyte_spans(self):
    text, spans = fill_mask.parse_marked('Köln [[café]] und [[東京]]!')
    self.assertEqual(text, 'Köln café und 東京!')
    data = text.encode('utf-8')
    self.assertEqual(
      [data[s:e].decode('utf-8') for s, e in spans], ['café', '東京']
    )

  @parameterized.parameters(
    ('a [[b', 'never closed'),
    ('a ]] b', 'closes no span'),
    ('a [[]] b', 'Empty span'),
    ('a [[b [[c]] d]]', 'Nested'),
  )
  def test_bad_markers(self, text, message):
    with self.assertRaisesRegex(ValueError, message):
      fill_mask.parse_marked(text)

  def test_parse_spans(self):
    self.assertEqual(fill_mask.parse_spans('51:60, 3:4'), [(51, 60), (3, 4)])
    for bad in ('5', '6:5', 'a:b'):
      with self.assertRaises(ValueError):
        fill_mask.parse_spans(bad)

  def test_mask_ids(self):
    inputs, mask, ids = fill_mask.mask_ids('abcdef', [(1, 3)], 8)
    np.testing.assert_array_equal(inputs[:6], [103, 3, 3, 106, 107, 108])
    np.testing.assert_array_equal(mask, [1] * 6 + [0, 0])
    self.assertEqual(ids[1], ord('b') + 6)
    with self.assertRaisesRegex(ValueError, 'outside the text'):
      fill_mask.mask_ids('abc', [(2, 5)], 8)
    with self.assertRaisesRegex(ValueError, 'at most 4'):
      fill_mask.mask_ids('abcdef', [(0, 1)], 4)


class _FixedModel:
  """Predicts fixed byte ids, to test the filling and the display."""

  def __init__(self, predicted):
    self.predicted = np.asarray(predicted)

  def apply(self, params, state, rng, *, is_training, inputs, input_mask):
    del params, rng, is_training, input_mask
    logits = np.full((*inputs.shape, 262), -10.0, np.float32)
    for i, b in enumerate(self.predicted):
      logits[0, i, b] = 10.0
    return logits, state


class FillTest(absltest.TestCase):
  def lm(self, predicted, seq_len=16):
    return fill_mask.LanguageModel(_FixedModel(predicted), {}, {}, seq_len, 'x')

  def test_only_spans_are_replaced(self):
    predicted = [ord('z') + 6] * 8
    result = fill_mask.fill_mask(self.lm(predicted), 'ab[[cd]]ef')
    self.assertEqual(result.text, 'abzzef')
    self.assertEqual(result.predictions, ('zz',))
    self.assertEqual(result.spans, ((2, 4),))

  def test_invalid_predicted_utf8_is_escaped_not_split(self):
    # The model fills a 2-byte span with a lead byte and an ASCII byte.
    predicted = [0] * 3 + [0xC3 + 6, ord('x') + 6] + [0] * 3
    result = fill_mask.fill_mask(self.lm(predicted), 'né[[é!]]')
    self.assertEqual(result.text, 'né\\xc3x')
    # A valid multibyte prediction stays one character.
    predicted = [0] * 3 + [0xC3 + 6, 0xA9 + 6] + [0] * 3
    self.assertEqual(
      fill_mask.fill_mask(self.lm(predicted), 'né[[é]]').text, 'néé'
    )

  def test_nothing_to_fill(self):
    with self.assertRaisesRegex(ValueError, 'Nothing to fill'):
      fill_mask.fill_mask(self.lm([]), 'no spans here')


class CheckpointTest(absltest.TestCase):
  def test_our_workdir(self):
    tmp = self.create_tempdir()
    tmp.create_file('a.txt', content='the cat sat on the mat. ' * 40)
    config = masked_lm_config.get_config('local,tiny')
    config.data.source = 'files'
    config.data.files = os.path.join(tmp.full_path, '*.txt')
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(config, workdir, train.build_task(config))
    lm = fill_mask.load_language_model(workdir)
    self.assertEqual(lm.seq_len, 32)
    result = fill_mask.fill_mask(lm, 'the cat [[sat]] on the mat.')
    # The filled text is what the model's argmax says at the span.
    inputs, input_mask, _ = fill_mask.mask_ids(
      'the cat sat on the mat.', [(8, 11)], 32
    )
    logits, _ = lm.model.apply(
      lm.params,
      lm.state,
      None,
      inputs=inputs[None],
      input_mask=input_mask[None],
    )
    expected = np.asarray(jax.numpy.argmax(logits[0], -1))[8:11]
    self.assertEqual(
      result.predictions[0], task_data.decode_for_display(expected)
    )

  def test_released_format_file(self):
    # DeepMind's pickle format at small sizes, with the official outputs.
    name = os.path.join(PARITY_DIR, 'language_small')
    with open(name + '.json', encoding='utf-8') as f:
      case = json.load(f)['case']
    config = models.get_config(models.LANGUAGE)
    config.d_model = case['d_model']
    config.max_seq_len = case['max_seq_len']
    config.encoder.update(case['encoder'])
    config.decoder.update(case['decoder'])
    lm = fill_mask.load_language_model(name + '.pickle', config=config)
    self.assertEqual(lm.seq_len, 64)
    arrays = np.load(name + '.npz')
    logits, _ = lm.model.apply(
      lm.params,
      lm.state,
      None,
      inputs=arrays['inputs/inputs'],
      input_mask=arrays['inputs/input_mask'],
    )
    np.testing.assert_allclose(logits, arrays['outputs/logits'], atol=1e-4)
    result = fill_mask.fill_mask(lm, 'Grüße aus [[Köln]]!')
    self.assertEqual(result.spans, ((12, 17),))  # ü, ß: 2 bytes each.
    self.assertTrue(result.text.startswith('Grüße aus '))
    self.assertTrue(result.text.endswith('!'))

  def test_missing_checkpoint(self):
    with self.assertRaises(FileNotFoundError):
      fill_mask.load_language_model('/nonexistent/checkpoint.pickle')

  @absltest.skipUnless(
    os.path.isfile(RELEASED),
    'Set PERCEIVER_CHECKPOINT_DIR to a folder with '
    'language_perceiver_io_bytes.pickle to run this test.',
  )
  def test_released_checkpoint_fills_the_colab_example(self):
    lm = fill_mask.load_language_model(RELEASED)
    self.assertEqual(lm.seq_len, 2048)
    result = fill_mask.fill_mask(lm, COLAB_TEXT, [(51, 60)])
    self.assertEqual(result.predictions, (' missing.',))
    self.assertEqual(result.text, COLAB_TEXT)


if __name__ == '__main__':
  absltest.main()
