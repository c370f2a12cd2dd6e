"""Loads DeepMind's released pickles without running code from them.

The released checkpoints are Python pickles of nested Haiku `FlatMapping`s of
numpy arrays. A plain `pickle.load` would run whatever a tampered file asks
for, so this module unpickles with an allow-list: the numpy array machinery
and `FlatMapping` (rebuilt as a plain dict, so Haiku is not even needed).
Anything else raises `UnsafePickleError` before it is called.
"""

import io
import pickle

import numpy as np
from numpy._core import multiarray as _multiarray


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle asked for something outside the allow-list."""


def _flat_mapping(*args):
  """Stands in for haiku._src.data_structures.FlatMapping(mapping)."""
  if len(args) != 1 or not isinstance(args[0], dict):
    raise UnsafePickleError(
      'FlatMapping in this file is not built from a single dict.'
    )
  mapping = args[0]
  for key in mapping:
    if not isinstance(key, str):
      raise UnsafePickleError(f'FlatMapping key {key!r} is not a string.')
  return dict(mapping)


def _dtype(*args):
  """np.dtype, refusing object dtypes (their payload would be objects)."""
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise UnsafePickleError('Object arrays are not allowed in checkpoints.')
  return dtype


# (module, name) -> the callable that the unpickler may use for it.
ALLOWED_GLOBALS = {
  ('haiku._src.data_structures', 'FlatMapping'): _flat_mapping,
  ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
  ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
  ('numpy', 'ndarray'): np.ndarray,
  ('numpy', 'dtype'): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only `ALLOWED_GLOBALS`."""

  def find_class(self, module, name):
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f'Refusing to load {module}.{name}: checkpoints may only contain '
        'numpy arrays in (FlatMapping) dicts. The file is corrupt or '
        'malicious; nothing from it was executed.'
      ) from None

  def persistent_load(self, pid):
    raise UnsafePickleError('Persistent ids are not allowed in checkpoints.')


def loads(data: bytes):
  """Unpickles `data` with the allow-list; returns nested dicts of arrays.

  Raises:
    UnsafePickleError: if the pickle names anything outside the allow-list.
    pickle.UnpicklingError: if the data is not a valid pickle.
  """
  try:
    tree = RestrictedUnpickler(io.BytesIO(data)).load()
  except UnsafePickleError:
    raise
  except (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    pickle.UnpicklingError,
  ) as e:
    raise pickle.UnpicklingError(
      f'Not a valid checkpoint pickle ({type(e).__name__}: {e}).'
    ) from e
  _check_tree(tree, path='')
  return tree


def load(path):
  """`loads` of a file."""
  with open(path, 'rb') as f:
    return loads(f.read())


def _check_tree(tree, path):
  """Only dicts with string keys, numeric arrays and plain scalars."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      if not isinstance(key, str):
        raise UnsafePickleError(f'Non-string key {key!r} at {path or "/"}.')
      _check_tree(value, f'{path}/{key}')
  elif isinstance(tree, np.ndarray):
    if tree.dtype.hasobject:
      raise UnsafePickleError(f'Object array at {path}.')
  elif not isinstance(tree, int | float | str | bool | type(None)):
    raise UnsafePickleError(
      f'Unexpected {type(tree).__name__} at {path or "/"} in checkpoint.'
    )
