"""Tests of checkpoint loading: safety, formats, conversion, mismatches."""

import os
import pickle
import pickletools

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import parity_test
from perceiver_io import models
from perceiver_io import pretrained
from perceiver_io import safe_pickle

PARITY_DIR = parity_test.PARITY_DIR


class _RunsCode:
  """Unpickling this would call os.system (or another callable)."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _language_case_config():
  description, _, _, inputs, outputs = parity_test.load_case('language_small')
  config = parity_test.config_for_case(models.LANGUAGE, description)
  return config, inputs, outputs


class HostilePickleTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('os_system', lambda m: _RunsCode(os.system, f'touch {m}')),
    ('eval', lambda m: _RunsCode(eval, f'open({m!r}, "w")')),
    ('exec', lambda m: _RunsCode(exec, f'open({m!r}, "w")')),
    ('open', lambda m: _RunsCode(open, m, 'w')),
  )
  def test_refuses_code_and_runs_nothing(self, make_payload):
    marker = self.create_tempfile().full_path + '.ran'
    payload = {
      'embed': {'embeddings': np.zeros(2)},
      'evil': make_payload(marker),
    }
    path = self.create_tempfile(content=b'').full_path
    with open(path, 'wb') as f:
      pickle.dump(payload, f)
    with self.assertRaisesRegex(safe_pickle.UnsafePickleError, 'Refusing'):
      pretrained.load_params(path)
    self.assertFalse(os.path.exists(marker))

  def test_refuses_object_arrays(self):
    data = pickle.dumps({'m': {'w': np.array([print], dtype=object)}})
    with self.assertRaises(safe_pickle.UnsafePickleError):
      safe_pickle.loads(data)

  def test_released_formats_use_only_allowed_globals(self):
    for name in ('language_small.pickle', 'imagenet_conv_small.pystate'):
      data = (PARITY_DIR / name).read_bytes()
      strings = [
        arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)
      ]
      self.assertIn('FlatMapping', strings)
      tree = safe_pickle.loads(data)
      self.assertIsInstance(tree, dict)

  def test_corrupt_file(self):
    data = (PARITY_DIR / 'language_small.pickle').read_bytes()
    path = self.create_tempfile(content=data[: len(data) // 2]).full_path
    with self.assertRaisesRegex(pickle.UnpicklingError, 'Not a valid'):
      pretrained.load_params(path)

  def test_missing_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'No checkpoint'):
      pretrained.load_params('/nonexistent/language.pickle')


class LoadTest(absltest.TestCase):
  def test_bare_params_and_params_state_formats(self):
    params, state = pretrained.load_params(PARITY_DIR / 'language_small.pickle')
    self.assertIn('embed', params)
    self.assertEqual(state, {})
    params, state = pretrained.load_params(
      PARITY_DIR / 'imagenet_conv_small.pystate'
    )
    self.assertIn('image_preprocessor/~/conv2_d_downsample/~/conv', params)
    self.assertEqual(
      state['image_preprocessor/~/conv2_d_downsample/~/batchnorm/~/mean_ema'][
        'average'
      ].shape,
      (1, 1, 1, 64),
    )

  def test_load_call_and_convert_round_trip(self):
    config, inputs, outputs = _language_case_config()
    model = pretrained.load(PARITY_DIR / 'language_small.pickle', config=config)
    self.assertEqual(model.name, models.LANGUAGE)
    logits = model(**inputs)
    parity_test.assert_matches(self, logits, outputs['logits'])

    npz = os.path.join(self.create_tempdir().full_path, 'language.npz')
    pretrained.save_params(
      npz, model.params, model.state, name=model.name, config=config
    )
    reloaded = pretrained.load(npz)  # Name and config come from the file.
    self.assertEqual(reloaded.name, models.LANGUAGE)
    np.testing.assert_array_equal(reloaded(**inputs), logits)
    with open(npz, 'rb') as f:
      self.assertNotIn(b'FlatMapping', f.read())

  def test_convert_command(self):
    npz = os.path.join(self.create_tempdir().full_path, 'conv.npz')
    pretrained.main([str(PARITY_DIR / 'imagenet_conv_small.pystate'), npz])
    params, state = pretrained.load_params(npz)
    want_params, want_state = pretrained.load_params(
      PARITY_DIR / 'imagenet_conv_small.pystate'
    )
    self.assertEqual(set(params), set(want_params))
    self.assertEqual(set(state), set(want_state))
    self.assertEqual(
      pretrained.infer_architecture(npz, params), models.IMAGENET_CONV
    )

  def test_mismatched_checkpoint_names_the_parameter(self):
    config, _, _ = _language_case_config()
    config.encoder.num_z_channels = 64
    config.encoder.v_channels = 64
    with self.assertRaisesRegex(ValueError, r'has shape .* expects'):
      pretrained.load(PARITY_DIR / 'language_small.pickle', config=config)

  def test_released_config_rejects_small_checkpoint(self):
    with self.assertRaisesRegex(ValueError, 'does not match'):
      pretrained.load(PARITY_DIR / 'language_small.pickle')

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, 'Unknown architecture'):
      pretrained.load(PARITY_DIR / 'language_small.pickle', name='bert')


if __name__ == '__main__':
  absltest.main()
