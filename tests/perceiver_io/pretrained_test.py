"""Tests of checkpoint loading: safety, formats, conversion, mismatches."""

import contextlib
import io
import os
import pickle
import pickletools

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import parity_test
import safe_pickle_test
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


# The two released-format files of testdata/parity, and their parity cases.
RELEASED_FORMAT_FILES = (
  ('language_small.pickle', 'language_small', models.LANGUAGE),
  ('imagenet_conv_small.pystate', 'imagenet_conv_small', models.IMAGENET_CONV),
)


_PAYLOADS = {
  'os_system': lambda m: _RunsCode(os.system, f'touch {m}'),
  'eval': lambda m: _RunsCode(eval, f'open({m!r}, "w")'),
  'exec': lambda m: _RunsCode(exec, f'open({m!r}, "w")'),
  'open': lambda m: _RunsCode(open, m, 'w'),
}


class HostilePickleTest(parameterized.TestCase):
  @parameterized.product(
    payload=tuple(_PAYLOADS), protocol=safe_pickle_test.PROTOCOLS
  )
  def test_refuses_code_and_runs_nothing(self, payload, protocol):
    marker = self.create_tempfile().full_path + '.ran'
    tree = {
      'embed': {'embeddings': np.zeros(2)},
      'evil': _PAYLOADS[payload](marker),
    }
    path = self.create_tempfile(content=b'').full_path
    with open(path, 'wb') as f:
      pickle.dump(tree, f, protocol=protocol)
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
    with self.assertRaisesRegex(pickle.UnpicklingError, 'truncated') as e:
      pretrained.load_params(path)
    self.assertStartsWith(str(e.exception), path)

  def test_missing_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'No checkpoint'):
      pretrained.load_params('/nonexistent/language.pickle')


def _write(test, name, data):
  return test.create_tempfile(name, content=data).full_path


class BadFileTest(parameterized.TestCase):
  """Files that are not checkpoints: the error names the file and why."""

  @parameterized.named_parameters(
    ('empty', b'', pickle.UnpicklingError, 'is empty'),
    ('garbage', b'\x00\xffgarbage', pickle.UnpicklingError, 'not a pickle'),
    ('text', b'weights: 1 2 3\n', pickle.UnpicklingError, 'not a pickle'),
    ('zip', None, pickle.UnpicklingError, 'zip archive'),
  )
  def test_pickle_path(self, data, error, regex):
    if data is None:  # A converted .npz under a pickle's name.
      data = (PARITY_DIR / 'language_small.npz').read_bytes()
    path = _write(self, 'model.pickle', data)
    with self.assertRaisesRegex(error, regex) as e:
      pretrained.load_params(path)
    self.assertStartsWith(str(e.exception), path)

  @parameterized.named_parameters(
    ('empty', lambda npz, pkl: b'', 'is empty'),
    ('garbage', lambda npz, pkl: b'\x00\xffgarbage', 'not an .npz'),
    ('truncated', lambda npz, pkl: npz[: len(npz) // 2], 'truncated zip'),
    ('pickle', lambda npz, pkl: pkl, 'is a pickle'),
  )
  def test_npz_path(self, make_data, regex):
    npz = (PARITY_DIR / 'language_small.npz').read_bytes()
    pkl = (PARITY_DIR / 'language_small.pickle').read_bytes()
    path = _write(self, 'model.npz', make_data(npz, pkl))
    with self.assertRaisesRegex(ValueError, regex) as e:
      pretrained.load_params(path)
    self.assertStartsWith(str(e.exception), path)

  def test_npy_under_an_npz_name(self):
    path = os.path.join(self.create_tempdir().full_path, 'model.npz')
    with open(path, 'wb') as f:
      np.save(f, np.ones(3))
    with self.assertRaisesRegex(ValueError, 'single .npy array') as e:
      pretrained.load_params(path)
    self.assertStartsWith(str(e.exception), path)


class OtherProtocolsTest(parameterized.TestCase):
  """A protocol-2 copy of a released-format file is the same checkpoint."""

  @parameterized.parameters(*RELEASED_FORMAT_FILES)
  def test_protocol2_copy_gives_the_same_outputs(self, file, case, name):
    original = PARITY_DIR / file
    params, state = pretrained.load_params(original)
    with_state = file.endswith('.pystate') and bool(state)
    tree = safe_pickle_test.released_layout(
      params, state if with_state else None
    )
    data = safe_pickle_test.dumps(tree, protocol=2)
    self.assertEqual(data[:2], b'\x80\x02')
    self.assertIn(b'_codecs\nencode', data)  # What issue 15 was refused on.
    self.assertEqual(
      _flat_mapping_calls(data), _flat_mapping_calls(original.read_bytes())
    )
    copy = _write(self, file, data)

    description, _, _, inputs, expected = parity_test.load_case(case)
    config = parity_test.config_for_case(name, description)
    inputs = parity_test.model_inputs(name, inputs)
    want = pretrained.load(original, config=config)(**inputs)
    got = pretrained.load(copy, config=config)(**inputs)
    np.testing.assert_array_equal(got, want)
    if len(expected) == 1:
      expected = next(iter(expected.values()))
    parity_test.assert_matches(self, got, expected)

  def test_numpy_scalar_leaf_is_a_0d_array(self):
    tree = safe_pickle_test.released_layout(
      {'m': {'w': np.ones(2, np.float32), 'count': np.int32(3)}}
    )
    path = _write(self, 'scalar.pickle', pickle.dumps(tree, protocol=2))
    params, _ = pretrained.load_params(path)
    self.assertIsInstance(params['m']['count'], np.ndarray)
    self.assertEqual(params['m']['count'].shape, ())
    self.assertEqual(params['m']['count'], 3)


def _flat_mapping_calls(data):
  """How many FlatMappings loading `data` builds."""
  calls = []

  class CountingUnpickler(safe_pickle.RestrictedUnpickler):
    def find_class(self, module, name):
      found = super().find_class(module, name)
      if name != 'FlatMapping':
        return found
      return lambda *args: calls.append(args) or found(*args)

  CountingUnpickler(io.BytesIO(data)).load()
  return len(calls)


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

  def test_convert_command_names_a_bad_file_in_one_line(self):
    src = _write(self, 'model.pickle', b'garbage')
    npz = os.path.join(self.create_tempdir().full_path, 'out.npz')
    stderr = io.StringIO()
    with (
      contextlib.redirect_stderr(stderr),
      self.assertRaises(SystemExit) as e,
    ):
      pretrained.main([src, npz])
    self.assertEqual(e.exception.code, 1)
    lines = stderr.getvalue().splitlines()
    self.assertLen(lines, 1)
    self.assertIn(src, lines[0])
    self.assertIn('not a pickle', lines[0])
    self.assertFalse(os.path.exists(npz))
    with self.assertRaises(pickle.UnpicklingError):  # The traceback on request.
      pretrained.main([src, npz, '--verbose_errors'])

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
