"""Tests of the restricted unpickler: every protocol loads, nothing runs."""

import codecs
import copyreg
import io
import os
import pickle
import struct
import warnings
from unittest import mock

import ml_dtypes
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from haiku._src import data_structures

from perceiver_io import safe_pickle

PROTOCOLS = tuple(range(pickle.HIGHEST_PROTOCOL + 1))  # 0 to 5.

# --- Writing released-format pickles -----------------------------------------


class FlatMapping(dict):
  """Pickles as Haiku's `FlatMapping(dict)`, as the released files do."""

  def __reduce__(self):
    return data_structures.FlatMapping, (dict(self),)


def released_layout(params, state=None):
  """The released trees: FlatMappings of FlatMappings of arrays.

  Args:
    params: {module: {name: array}}.
    state: as params, or None for a bare parameter file (the `.pickle` and
      the flow and video `.pystate`s); else a {'params', 'state'} dict (the
      ImageNet `.pystate`s).

  Returns:
    The tree to pickle.
  """

  def wrap(tree):
    return FlatMapping({k: FlatMapping(v) for k, v in tree.items()})

  if state is None:
    return wrap(params)
  return {'params': wrap(params), 'state': wrap(state)}


def _numpy1_whichmodule(real):
  """`pickle.whichmodule`, naming numpy 2's modules as numpy 1 did."""

  def whichmodule(obj, name):
    module = real(obj, name)
    if module.startswith('numpy._core.'):
      return 'numpy.core.' + module[len('numpy._core.') :]
    return module

  return whichmodule


class _Python2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes bytes and ASCII str as Python 2's byte strings (BINSTRING)."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def _save_py2_str(self, obj):
    data = obj.encode('ascii') if isinstance(obj, str) else obj
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = _save_py2_str
  dispatch[str] = _save_py2_str


def dumps(tree, protocol, numpy1_names=False, python2=False):
  """Pickles `tree` as a numpy 1 or 2 (and Python 2 or 3) writer would."""
  f = io.BytesIO()
  pickler_cls = _Python2Pickler if python2 else pickle._Pickler  # pylint: disable=protected-access
  if numpy1_names:
    with (
      warnings.catch_warnings(),
      mock.patch.object(
        pickle, 'whichmodule', _numpy1_whichmodule(pickle.whichmodule)
      ),
    ):
      warnings.simplefilter('ignore', DeprecationWarning)
      pickler_cls(f, protocol=protocol).dump(tree)
  else:
    pickler_cls(f, protocol=protocol).dump(tree)
  return f.getvalue()


def _arrays():
  """Leaves of the dtypes, layouts and sizes a checkpoint may hold."""
  rng = np.random.default_rng(0)
  return {
    'w': rng.normal(size=(3, 4)).astype(np.float32),
    'b': rng.normal(size=(4,)).astype(np.float32),
    'f64': rng.normal(size=(2, 2)),
    'f16': np.arange(5, dtype=np.float16),
    'i32': np.arange(-3, 3, dtype=np.int32),
    'i64': np.arange(4, dtype=np.int64),
    'u8': np.arange(256, dtype=np.uint8),  # Every byte value, in latin1.
    'bool': np.array([True, False]),
    'c64': np.array([1 + 2j], np.complex64),
    'big_endian': np.arange(3, dtype='>f4'),
    'fortran': np.asfortranarray(rng.normal(size=(2, 3)).astype(np.float32)),
    'strided': np.arange(10, dtype=np.float32)[::3],
    'permuted': np.arange(24.0).reshape(2, 3, 4).transpose(1, 0, 2),
    'zero_d': np.array(2.5, np.float32),
    'empty': np.zeros((0, 3), np.float32),
    'large': rng.normal(size=(300,)).astype(np.float32),  # BINSTRING > 255.
    'scalar_f32': np.float32(1.5),
    'scalar_i32': np.int32(-7),
  }


class LoadsEveryProtocolTest(parameterized.TestCase):
  def assert_same_tree(self, got, want):
    self.assertIsInstance(got, dict)
    self.assertEqual(set(got), set(want))
    for key, value in want.items():
      if isinstance(value, dict):
        self.assert_same_tree(got[key], value)
        continue
      self.assertIs(type(got[key]), type(value), key)
      self.assertEqual(got[key].dtype, value.dtype, key)
      self.assertEqual(np.shape(got[key]), np.shape(value), key)
      np.testing.assert_array_equal(got[key], value, err_msg=key)
      if isinstance(value, np.ndarray):
        self.assertTrue(got[key].flags.writeable, key)

  @parameterized.product(
    protocol=PROTOCOLS, numpy1_names=(False, True), with_state=(False, True)
  )
  def test_released_layout_round_trips(
    self, protocol, numpy1_names, with_state
  ):
    params = {'linear': _arrays(), 'embed': {'embeddings': np.ones((2, 3))}}
    state = {'batchnorm/~/mean_ema': {'average': np.ones((1, 4), np.float32)}}
    tree = released_layout(params, state if with_state else None)
    data = dumps(tree, protocol, numpy1_names=numpy1_names)
    self.assertIn(b'FlatMapping', data)
    self.assertEqual(b'numpy.core.' in data, numpy1_names)
    want = {'params': params, 'state': state} if with_state else params
    self.assert_same_tree(safe_pickle.loads(data), want)

  @parameterized.parameters(0, 1, 2)
  def test_python2_byte_strings(self, protocol):
    params = {'linear': _arrays()}
    data = dumps(
      released_layout(params), protocol, numpy1_names=True, python2=True
    )
    self.assertNotIn(b'_codecs', data)
    self.assert_same_tree(safe_pickle.loads(data), params)

  @parameterized.parameters(0, 1, 2)
  def test_low_protocols_write_bytes_through_codecs_encode(self, protocol):
    # The case of the issue: this must load, not be refused.
    data = pickle.dumps({'w': np.ones(2, np.float32)}, protocol=protocol)
    self.assertIn(b'_codecs', data)
    self.assertIn(b'latin1', data)
    np.testing.assert_array_equal(safe_pickle.loads(data)['w'], np.ones(2))

  def test_numpy1_dtype_arguments(self):
    # numpy 1 pickled dtypes as dtype('f4', 0, 1); numpy 2 writes bools.
    data = pickle.dumps({'w': np.ones(2, np.float32)}, protocol=2)
    old = data.replace(b'\x89\x88\x87', b'K\x00K\x01\x87')
    self.assertNotEqual(old, data)
    np.testing.assert_array_equal(safe_pickle.loads(old)['w'], np.ones(2))

  def test_shared_references_stay_shared(self):
    w = np.ones(3, np.float32)
    tree = safe_pickle.loads(pickle.dumps({'a': w, 'b': w}, protocol=5))
    self.assertIs(tree['a'], tree['b'])


# --- Hostile files ------------------------------------------------------------


def _unicode(text):
  data = text.encode()
  return b'\x8c' + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _stack_global(module, name):
  return _unicode(module) + _unicode(name) + b'\x93'


class _Reduce:
  """Pickles as `fn(*args)`."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


class HostilePickleTest(parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.marker = os.path.join(self.create_tempdir().full_path, 'ran')
    self.addCleanup(
      lambda: self.assertFalse(os.path.exists(self.marker), 'payload ran')
    )

  def assert_refused(self, data, regex='Refusing'):
    with self.assertRaisesRegex(safe_pickle.UnsafePickleError, regex):
      safe_pickle.loads(data)
    self.assertFalse(os.path.exists(self.marker))

  # The payload `touch marker` through each opcode that calls something.

  def test_reduce_os_system(self):
    self.assert_refused(
      b"cos\nsystem\n(S'touch %s'\ntR." % self.marker.encode()
    )

  def test_reduce_posix_system(self):
    self.assert_refused(
      b"cposix\nsystem\n(S'touch %s'\ntR." % self.marker.encode()
    )

  def test_stack_global_builtins_eval(self):
    code = f'open({self.marker!r}, "w")'
    self.assert_refused(
      b'\x80\x04'
      + _stack_global('builtins', 'eval')
      + _unicode(code)
      + b'\x85R.'
    )

  def test_inst_opcode(self):
    self.assert_refused(b"(S'touch %s'\nios\nsystem\n." % self.marker.encode())

  def test_obj_opcode(self):
    self.assert_refused(b"(cos\nsystem\nS'touch %s'\no." % self.marker.encode())

  def test_getattr_gadget(self):
    # getattr(FlatMapping stand-in, '_fn'), then call it: refused at getattr.
    self.assert_refused(
      b'\x80\x04'
      + _stack_global('builtins', 'getattr')
      + _stack_global('haiku._src.data_structures', 'FlatMapping')
      + _unicode('_fn')
      + b'\x86R.'
    )

  def test_extension_registry_does_not_bypass(self):
    copyreg.add_extension('os', 'system', 0xF0)
    self.addCleanup(copyreg.remove_extension, 'os', 'system', 0xF0)
    self.assert_refused(
      b'\x80\x02\x82\xf0' + _unicode('touch ' + self.marker) + b'\x85R.'
    )

  def test_persistent_id(self):
    self.assert_refused(b'\x80\x02' + _unicode('x') + b'Q.', 'Persistent')

  @parameterized.parameters(*PROTOCOLS)
  def test_dumped_payloads_every_protocol(self, protocol):
    for payload in (
      _Reduce(os.system, f'touch {self.marker}'),
      _Reduce(eval, f'open({self.marker!r}, "w")'),
      _Reduce(exec, f'open({self.marker!r}, "w")'),
      _Reduce(open, self.marker, 'w'),
    ):
      tree = released_layout({'m': {'w': np.zeros(2), 'evil': payload}})
      self.assert_refused(pickle.dumps(tree, protocol=protocol))

  # _codecs.encode: only encode(str, 'latin1').

  @parameterized.parameters('rot13', 'utf-8', 'latin-1', 'base64', 'zlib')
  def test_codecs_encode_other_encoding(self, encoding):
    data = pickle.dumps(_Reduce(codecs.encode, 'abc', encoding), protocol=2)
    self.assertIn(b'_codecs', data)
    self.assert_refused(data, 'encode')

  @parameterized.parameters(b'abc', 3, None)
  def test_codecs_encode_non_str(self, argument):
    data = pickle.dumps(_Reduce(codecs.encode, argument, 'latin1'), protocol=2)
    self.assert_refused(data, 'encode')

  def test_codecs_encode_extra_arguments(self):
    data = pickle.dumps(
      _Reduce(codecs.encode, 'abc', 'latin1', 'strict'), protocol=2
    )
    self.assert_refused(data, 'encode')

  def test_codecs_encode_refused_before_the_codec_runs(self):
    marker = self.marker

    def search(name):
      if name != 'perceiver_test_marker':
        return None

      def encode(text, errors='strict'):
        with open(marker, 'w'):
          pass
        return text.encode(), len(text)

      return codecs.CodecInfo(encode, encode, name=name)

    codecs.register(search)
    self.addCleanup(codecs.unregister, search)
    data = pickle.dumps(
      _Reduce(codecs.encode, 'x', 'perceiver_test_marker'), protocol=2
    )
    self.assert_refused(data, 'encode')

  def test_codecs_encode_result_fed_to_a_gadget(self):
    # encode(...)'s bytes as os.system's command: os.system is refused.
    data = pickle.dumps(
      _Reduce(
        os.system, _Reduce(codecs.encode, f'touch {self.marker}', 'latin1')
      ),
      protocol=2,
    )
    self.assert_refused(data, 'system')
    # ... as a dtype spec ('O' as bytes): a dtype is built from a str only.
    encoded = _Reduce(codecs.encode, 'O', 'latin1')
    self.assert_refused(
      pickle.dumps(_Reduce(np.dtype, encoded, False, True), protocol=2),
      'dtype',
    )
    # ... as the mapping of a FlatMapping.
    self.assert_refused(
      pickle.dumps(_Reduce(data_structures.FlatMapping, encoded), protocol=2),
      'single dict',
    )

  # Misuse of the admitted names.

  def test_build_cannot_change_the_stand_ins(self):
    before = dict(safe_pickle.ALLOWED_GLOBALS)
    # BUILD on FlatMapping with slot state {'_fn': numpy.dtype}.
    data = (
      b'\x80\x04'
      + _stack_global('haiku._src.data_structures', 'FlatMapping')
      + b'N}'
      + _unicode('_fn')
      + _stack_global('numpy', 'dtype')
      + b's\x86b.'
    )
    self.assert_refused(data, 'BUILD on FlatMapping')
    self.assertEqual(safe_pickle.ALLOWED_GLOBALS, before)
    tree = released_layout({'m': {'w': np.ones(2)}})
    self.assertIn('m', safe_pickle.loads(pickle.dumps(tree)))

  def test_ndarray_cannot_be_called(self):
    self.assert_refused(pickle.dumps(_Reduce(np.ndarray, (4,))), 'ndarray')

  def test_newobj_needs_a_class(self):
    with self.assertRaises(pickle.UnpicklingError):
      safe_pickle.loads(
        b'\x80\x04'
        + _stack_global('numpy', 'dtype')
        + _unicode('f4')
        + b'\x85\x81.'
      )

  def test_reconstruct_of_another_class(self):
    data = pickle.dumps(
      _Reduce(
        np._core.multiarray._reconstruct,  # pylint: disable=protected-access
        data_structures.FlatMapping,
        (0,),
        b'b',
      ),
      protocol=4,
    )
    self.assert_refused(data, '_reconstruct')

  @parameterized.parameters(
    ('object', np.array([print], dtype=object), 'dtype'),
    ('structured', np.zeros(2, 'f4,i4'), 'dtype'),
    ('void', np.zeros(2, 'V8'), 'dtype'),
    ('unicode', np.array(['ab']), 'dtype'),
    ('datetime', np.array(['2021'], 'datetime64[D]'), 'dtype'),
    ('bfloat16', np.ones(2, ml_dtypes.bfloat16), 'ml_dtypes.bfloat16'),
  )
  def test_refuses_non_numeric_arrays(self, _, array, regex):
    for protocol in PROTOCOLS:
      self.assert_refused(pickle.dumps({'w': array}, protocol=protocol), regex)

  def test_refuses_dtype_state_with_fields(self):
    data = pickle.dumps({'w': np.ones(2, np.float32)}, protocol=4)
    # (3, '<', None, None, None, ...) -> fields given as a dict.
    hostile = data.replace(b'NNNJ', b'NN}J', 1)
    self.assertNotEqual(hostile, data)
    self.assert_refused(hostile, 'state')

  def test_array_data_of_the_wrong_size(self):
    data = pickle.dumps({'w': np.ones(2, np.float32)}, protocol=4)
    # Shape (2,) -> (3,): eight bytes of data no longer fit.
    hostile = data.replace(b'K\x02\x85', b'K\x03\x85', 1)
    self.assertNotEqual(hostile, data)
    with self.assertRaisesRegex(pickle.UnpicklingError, 'needs 12'):
      safe_pickle.loads(hostile)

  def test_out_of_band_buffers(self):
    data = pickle.dumps(
      {'w': np.ones(2)}, protocol=5, buffer_callback=lambda _: False
    )
    with self.assertRaisesRegex(pickle.UnpicklingError, 'out-of-band'):
      safe_pickle.loads(data)

  def test_dict_containing_itself(self):
    tree = {}
    tree['self'] = tree
    self.assert_refused(pickle.dumps(tree), 'contains itself')

  def test_lists_and_sets(self):
    self.assert_refused(pickle.dumps({'w': [1, 2]}), 'list')
    self.assert_refused(pickle.dumps({'w': {1, 2}}), 'set')


# --- Errors for files that are not checkpoints -------------------------------


class BadFileTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('empty', b'', 'is empty'),
    (
      'garbage',
      b'\x00\x01\x02garbage',
      r"not a pickle: it starts with b'\\x00",
    ),
    ('text', b'hello, world\n', "not a pickle: it starts with b'hello"),
    ('json', b'{"w": [1, 2]}', 'not a pickle'),
    ('zip', b'PK\x03\x04rest', 'zip archive'),
    ('npy', b'\x93NUMPY\x01\x00', '.npy'),
  )
  def test_names_the_file_and_the_problem(self, data, regex):
    path = self.create_tempfile('bad.pickle', content=data).full_path
    with self.assertRaisesRegex(pickle.UnpicklingError, regex) as e:
      safe_pickle.load(path)
    self.assertStartsWith(str(e.exception), path)

  @parameterized.parameters(*PROTOCOLS)
  def test_truncated(self, protocol):
    data = pickle.dumps(released_layout({'m': _arrays()}), protocol=protocol)
    for end in (1, 40, len(data) // 2, len(data) - 1):
      path = self.create_tempfile(content=data[:end]).full_path
      with self.assertRaisesRegex(pickle.UnpicklingError, 'truncated') as e:
        safe_pickle.load(path)
      self.assertStartsWith(str(e.exception), path)


if __name__ == '__main__':
  absltest.main()
