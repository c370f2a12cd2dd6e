"""Loads DeepMind's released pickles without running code from them.

The released checkpoints are Python pickles of nested Haiku `FlatMapping`s of
numpy arrays. A plain `pickle.load` would run whatever a tampered file asks
for, so this module unpickles with an allow-list. `find_class` hands out only
the stand-ins below, never a real callable from the file's names; each
stand-in checks its arguments before it builds anything, and arrays are built
here from their raw bytes, so no numpy `__setstate__` sees data from the file.

What numpy arrays pickle to, by protocol (numpy 1.x names `numpy.core.*`,
numpy 2.x `numpy._core.*`; both are admitted):

- 0 to 4: `multiarray._reconstruct(numpy.ndarray, (0,), b'b')`, then BUILD
  with `(1, shape, dtype, is_fortran, raw_bytes)`.
- 5: `numeric._frombuffer(buffer, dtype, shape, order)`, the buffer in-band
  (out-of-band buffers are refused: a file has none).
- numpy scalars, any protocol: `multiarray.scalar(dtype, raw_bytes)`.
- dtypes: `numpy.dtype('f4', False, True)`, then BUILD with its byte order.
- bytes at protocols 0 to 2: `_codecs.encode(str, 'latin1')`, and
  `__builtin__.bytes()` for empty bytes.

Dtypes are limited to bool, integer, float and complex ones. Anything else
(other globals, object arrays, structured dtypes, persistent ids) raises
`UnsafePickleError` before it is called.
"""

import io
import math
import os
import pickle
import types

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle asked for something outside the allow-list."""


_NOT_RUN = 'The file is corrupt or malicious; nothing from it was executed.'

# Bool, signed and unsigned integers, floats, complex numbers.
_NUMERIC_KINDS = 'biufc'


# --- Stand-ins for the objects a numpy pickle builds --------------------------


def _is_flag(value):
  return type(value) in (bool, int) and value in (0, 1)


class _Dtype:
  """`numpy.dtype(spec, align, copy)`; a BUILD sets its byte order."""

  __slots__ = ('dtype', '_built')

  def __init__(self, spec, align=False, copy=True):
    # numpy 2 writes (spec, False, True); numpy 1 wrote (spec, 0, 1).
    if not isinstance(spec, str) or not (_is_flag(align) and _is_flag(copy)):
      raise UnsafePickleError(
        f'numpy.dtype{(spec, align, copy)!r} is not a numpy dtype pickle. '
        + _NOT_RUN
      )
    try:
      dtype = np.dtype(spec)
    except TypeError as e:
      raise UnsafePickleError(f'Unknown dtype {spec!r}. {_NOT_RUN}') from e
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields or dtype.subdtype:
      raise UnsafePickleError(
        f'dtype {spec!r} is not allowed: checkpoints may only hold bool, '
        f'integer, float and complex arrays. {_NOT_RUN}'
      )
    self.dtype = dtype
    self._built = False

  def __setstate__(self, state):
    # numpy writes (3, byteorder, subarray, names, fields, elsize, alignment,
    # flags); only the byte order matters for the dtypes admitted here.
    if (
      self._built
      or not isinstance(state, tuple)
      or len(state) != 8
      or state[0] != 3
      or state[1] not in ('<', '>', '|', '=')
      or state[2:5] != (None, None, None)
      or not all(type(x) is int for x in state[5:])
    ):
      raise UnsafePickleError(
        f'Unexpected state {state!r} for dtype {self.dtype}. {_NOT_RUN}'
      )
    if state[1] in '<>':
      self.dtype = self.dtype.newbyteorder(state[1])
    self._built = True


class _Array:
  """What `_reconstruct` returns; a BUILD gives it its shape and bytes."""

  __slots__ = ('array',)

  def __init__(self):
    self.array = None

  def __setstate__(self, state):
    if self.array is not None or not isinstance(state, tuple):
      raise UnsafePickleError(f'Unexpected array state. {_NOT_RUN}')
    if len(state) == 5 and state[0] == 1:
      _, shape, dtype, is_fortran, data = state
    elif len(state) == 4:  # numpy's pre-versioned layout.
      shape, dtype, is_fortran, data = state
    else:
      raise UnsafePickleError(f'Unexpected array state. {_NOT_RUN}')
    if not _is_flag(is_fortran):
      raise UnsafePickleError(f'Unexpected array state. {_NOT_RUN}')
    self.array = _array_from_bytes(
      data, dtype, shape, 'F' if is_fortran else 'C'
    )


def _check_shape(shape):
  if not isinstance(shape, tuple) or not all(
    type(n) is int and n >= 0 for n in shape
  ):
    raise UnsafePickleError(f'Array shape {shape!r} is not valid. {_NOT_RUN}')
  return shape


def _raw_bytes(data, what):
  if isinstance(data, str):
    # A Python 2 `str`, decoded as latin1 by `loads`; numpy does the same.
    data = data.encode('latin1')
  if not isinstance(data, bytes | bytearray):
    raise UnsafePickleError(
      f'{what} data is a {type(data).__name__}, not bytes. {_NOT_RUN}'
    )
  return data


def _array_from_bytes(data, dtype, shape, order, axis_order=None):
  """A fresh, writable array of `shape` read from `data` in `order`."""
  if not isinstance(dtype, _Dtype):
    raise UnsafePickleError(f'Array dtype is not a numpy dtype. {_NOT_RUN}')
  shape = _check_shape(shape)
  data = _raw_bytes(data, 'Array')
  dtype = dtype.dtype
  count = math.prod(shape)
  if len(data) != count * dtype.itemsize:
    raise pickle.UnpicklingError(
      f'Array data has {len(data)} bytes; shape {shape} of {dtype} needs '
      f'{count * dtype.itemsize}.'
    )
  array = np.frombuffer(data, dtype=dtype, count=count)
  if axis_order is None:
    array = array.reshape(shape, order=order)
  else:
    array = array.reshape(shape).transpose(axis_order)
  return array.copy(order='K')


# --- The callables that `find_class` may hand out ----------------------------


def _reconstruct(cls, shape, typecode):
  """`multiarray._reconstruct(numpy.ndarray, (0,), b'b')`: an empty array."""
  if cls is not _NDARRAY or shape != (0,) or typecode not in (b'b', 'b'):
    raise UnsafePickleError(
      f'_reconstruct{(cls, shape, typecode)!r} is not how numpy pickles '
      f'arrays. {_NOT_RUN}'
    )
  return _Array()


def _frombuffer(buf, dtype, shape, order, axis_order=None):
  """`numeric._frombuffer`, as protocol 5 writes it (buffer in-band)."""
  if order not in ('C', 'F', 'K') or (order == 'K') != (axis_order is not None):
    raise UnsafePickleError(f'_frombuffer order {order!r}. {_NOT_RUN}')
  if axis_order is not None and (
    not isinstance(axis_order, tuple)
    or sorted(axis_order) != list(range(len(_check_shape(shape))))
  ):
    raise UnsafePickleError(f'_frombuffer axes {axis_order!r}. {_NOT_RUN}')
  return _array_from_bytes(buf, dtype, shape, order, axis_order)


def _scalar(dtype, data):
  """`multiarray.scalar(dtype, raw_bytes)`: a numpy scalar."""
  if not isinstance(dtype, _Dtype):
    raise UnsafePickleError(f'Scalar dtype is not a numpy dtype. {_NOT_RUN}')
  data = _raw_bytes(data, 'Scalar')
  if len(data) != dtype.dtype.itemsize:
    raise pickle.UnpicklingError(
      f'Scalar data has {len(data)} bytes; {dtype.dtype} needs '
      f'{dtype.dtype.itemsize}.'
    )
  return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


def _latin1_encode(*args):
  """`_codecs.encode(text, 'latin1')`, how protocols 0-2 write bytes."""
  if (
    len(args) != 2
    or type(args[0]) is not str
    or type(args[1]) is not str
    or args[1] != 'latin1'
  ):
    shown = ', '.join(type(a).__name__ for a in args)
    raise UnsafePickleError(
      f'Refusing _codecs.encode({shown}): checkpoints use it only as '
      f"encode(str, 'latin1'). {_NOT_RUN}"
    )
  return args[0].encode('latin1')


def _empty_bytes(*args):
  """`bytes()`, how protocols 0-2 write b'' (the data of an empty array)."""
  if args:
    raise UnsafePickleError(
      f'Refusing bytes() with arguments: checkpoints use only bytes(). '
      f'{_NOT_RUN}'
    )
  return b''


def _flat_mapping(*args):
  """Stands in for haiku._src.data_structures.FlatMapping(mapping)."""
  if len(args) != 1 or not isinstance(args[0], dict):
    raise UnsafePickleError(
      f'FlatMapping in this file is not built from a single dict. {_NOT_RUN}'
    )
  mapping = args[0]
  for key in mapping:
    if not isinstance(key, str):
      raise UnsafePickleError(f'FlatMapping key {key!r} is not a string.')
  return dict(mapping)


class _Admitted:
  """What `find_class` returns: calls `fn`, and cannot be changed by BUILD."""

  __slots__ = ('_name', '_fn')

  def __init__(self, name, fn):
    self._name = name
    self._fn = fn

  def __call__(self, *args):
    if self._fn is None:
      raise UnsafePickleError(
        f'Refusing to call {self._name}: it may only name the array type '
        f'in _reconstruct. {_NOT_RUN}'
      )
    return self._fn(*args)

  def __setstate__(self, state):
    raise UnsafePickleError(f'Refusing BUILD on {self._name}. {_NOT_RUN}')

  def __repr__(self):
    return self._name


# numpy.ndarray only ever appears as `_reconstruct`'s first argument.
_NDARRAY = _Admitted('numpy.ndarray', None)

_MULTIARRAY = types.MappingProxyType(
  {'_reconstruct': _reconstruct, 'scalar': _scalar}
)


def _allowed_globals():
  """(module, name) -> the stand-in that the unpickler may use for it."""
  allowed = {
    ('haiku._src.data_structures', 'FlatMapping'): _Admitted(
      'FlatMapping', _flat_mapping
    ),
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _Admitted('numpy.dtype', _Dtype),
    ('_codecs', 'encode'): _Admitted('_codecs.encode', _latin1_encode),
    ('__builtin__', 'bytes'): _Admitted('bytes', _empty_bytes),
    ('builtins', 'bytes'): _Admitted('bytes', _empty_bytes),
  }
  for core in ('numpy.core', 'numpy._core'):
    for name, fn in _MULTIARRAY.items():
      allowed[(f'{core}.multiarray', name)] = _Admitted(
        f'{core}.multiarray.{name}', fn
      )
    allowed[(f'{core}.numeric', '_frombuffer')] = _Admitted(
      f'{core}.numeric._frombuffer', _frombuffer
    )
  return types.MappingProxyType(allowed)


# Read-only: what a pickle may name cannot be widened at run time.
ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only `ALLOWED_GLOBALS`."""

  def __init__(self, file):
    # latin1 reads Python 2 byte strings (array data) as numpy does.
    super().__init__(file, encoding='latin1')

  def find_class(self, module, name):
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f'Refusing to load {module}.{name}: checkpoints may only contain '
        f'numpy arrays and scalars in (FlatMapping) dicts. {_NOT_RUN}'
      ) from None

  def persistent_load(self, pid):
    raise UnsafePickleError(
      f'Persistent ids are not allowed in checkpoints. {_NOT_RUN}'
    )


# --- Loading -------------------------------------------------------------------

ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')
NPY_MAGIC = b'\x93NUMPY'
# PROTO (protocols 2-5); MARK, EMPTY_DICT or GLOBAL (a dict or FlatMapping
# at protocols 0 and 1).
_FIRST_OPCODES = (b'\x80', b'(', b'}', b'c')


def _not_a_pickle(data):
  """Why `data` is plainly not a pickle, or None."""
  if not data:
    return 'is empty (0 bytes), not a checkpoint pickle'
  if data.startswith(ZIP_MAGIC):
    return 'is a zip archive (an .npz? its name must end in .npz), not a pickle'
  if data.startswith(NPY_MAGIC):
    return 'is a .npy array file, not a pickle'
  if data[:1] not in _FIRST_OPCODES:
    return (
      f'is not a pickle: it starts with {data[:8]!r}, and a checkpoint '
      "pickle starts with b'\\x80' (protocols 2-5), '(', '}' or 'c'"
    )
  return None


def loads(data: bytes, name: str = 'The checkpoint data'):
  """Unpickles `data` with the allow-list; returns nested dicts of arrays.

  Args:
    data: the pickle's bytes.
    name: how error messages name the data (`load` passes the path).

  Returns:
    Nested dicts with string keys, whose leaves are numpy arrays, numpy
    scalars, or plain Python numbers, strings and None.

  Raises:
    UnsafePickleError: if the pickle names anything outside the allow-list.
    pickle.UnpicklingError: if the data is not a valid pickle.
  """
  problem = _not_a_pickle(data)
  if problem:
    raise pickle.UnpicklingError(f'{name} {problem}.')
  try:
    tree = RestrictedUnpickler(io.BytesIO(data)).load()
    return _finish(tree, path='', visiting=set())
  except UnsafePickleError as e:
    raise UnsafePickleError(f'{name}: {e}') from None
  except RecursionError as e:
    raise pickle.UnpicklingError(f'{name} is nested too deeply.') from e
  except (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
    MemoryError,
    pickle.UnpicklingError,
  ) as e:
    message = str(e)
    if isinstance(e, EOFError) or 'truncated' in message:
      problem = 'is truncated: the pickle ends before it is complete'
    elif 'invalid load key' in message:
      problem = f'is not a pickle: it starts with {data[:8]!r}'
    else:
      problem = 'is not a valid checkpoint pickle'
    raise pickle.UnpicklingError(
      f'{name} {problem} ({type(e).__name__}: {e}).'
    ) from e


def load(path):
  """`loads` of a file; errors name the file."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    return loads(f.read(), name=path)


def _finish(tree, path, visiting):
  """Checks the tree and swaps each `_Array` for the array it built."""
  where = path or '/'
  if isinstance(tree, dict):
    if id(tree) in visiting:
      raise UnsafePickleError(f'The dict at {where} contains itself.')
    visiting.add(id(tree))
    out = {}
    for key, value in tree.items():
      if not isinstance(key, str):
        raise UnsafePickleError(f'Non-string key {key!r} at {where}.')
      out[key] = _finish(value, f'{path}/{key}', visiting)
    visiting.discard(id(tree))
    return out
  if isinstance(tree, _Array):
    if tree.array is None:
      raise UnsafePickleError(f'The array at {where} has no data.')
    return tree.array
  if isinstance(tree, np.ndarray | np.generic):
    if tree.dtype.kind not in _NUMERIC_KINDS:
      raise UnsafePickleError(f'Array of {tree.dtype} at {where}.')
    return tree
  if isinstance(tree, int | float | str | bool | type(None)):
    return tree
  raise UnsafePickleError(
    f'Unexpected {type(tree).__name__} at {where} in checkpoint.'
  )
