"""DeepMind's six released checkpoints: safe loading, conversion, inference.

The released files (https://storage.googleapis.com/perceiver_io/):

- `language_perceiver_io_bytes.pickle`, `optical_flow_checkpoint.pystate`,
  `video_autoencoding_checkpoint.pystate`: a bare parameter mapping;
- `imagenet_fourier_position_encoding.pystate`,
  `imagenet_learned_position_encoding.pystate`,
  `imagenet_conv_preprocessing.pystate`: a dict of `params` and `state`.

They are loaded through `safe_pickle`, which executes nothing from the file.
`convert` writes them once as `.npz` (numpy arrays, no pickle at all), which
`load` reads too.

  model = pretrained.load('imagenet_fourier_position_encoding.pystate')
  logits = model(images=images)  # [B, 1000]
"""

import argparse
import json
import os
import pathlib
import pickle
import tempfile
import types
import zipfile
import zlib

import jax
import ml_collections
import numpy as np

from perceiver_io import models
from perceiver_io import safe_pickle

# Released file name (without suffix) -> architecture.
RELEASED_FILES = types.MappingProxyType(
  {
    'language_perceiver_io_bytes': models.LANGUAGE,
    'imagenet_fourier_position_encoding': models.IMAGENET_FOURIER,
    'imagenet_learned_position_encoding': models.IMAGENET_LEARNED,
    'imagenet_conv_preprocessing': models.IMAGENET_CONV,
    'optical_flow_checkpoint': models.OPTICAL_FLOW,
    'video_autoencoding_checkpoint': models.VIDEO_AUTOENCODING,
  }
)

_NPZ_FORMAT = 'perceiver_io.npz.v1'


# --- Reading and writing parameter files -------------------------------------


def _split_params_state(tree, path):
  """Released trees are bare params, or {'params': ..., 'state': ...}."""
  if not isinstance(tree, dict):
    raise ValueError(f'{path}: expected a mapping of parameters.')
  if set(tree) <= {'params', 'state'} and 'params' in tree:
    return tree['params'], tree.get('state') or {}
  return tree, {}


def _check_params_tree(tree, path, what):
  """{module: {name: numeric array}}; numpy scalars become 0-d arrays."""
  checked = {}
  for module, leaves in tree.items():
    if not isinstance(leaves, dict):
      raise ValueError(
        f'{path}: {what} entry {module!r} is not a mapping of arrays.'
      )
    checked[module] = {}
    for name, value in leaves.items():
      if isinstance(value, np.generic):
        value = np.asarray(value)
      if not isinstance(value, np.ndarray) or not (
        np.issubdtype(value.dtype, np.number)
      ):
        raise ValueError(
          f'{path}: {what} {module}:{name} is not a numeric array.'
        )
      checked[module][name] = value
  return checked


def _npz_problem(path, error):
  """What is wrong with an `.npz` file that numpy could not open."""
  with open(path, 'rb') as f:
    head = f.read(8)
  if not head:
    return 'is empty (0 bytes)'
  if head.startswith(safe_pickle.ZIP_MAGIC):
    return f'is a damaged or truncated zip archive ({error})'
  if head.startswith(safe_pickle.NPY_MAGIC):
    return 'is a single .npy array, not an .npz archive'
  if head.startswith(b'\x80'):
    return (
      'is a pickle, not an .npz archive (name a released file .pickle or '
      '.pystate)'
    )
  return f'is not an .npz (zip) archive: it starts with {head!r}'


_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error)


def _read_npz(path):
  try:
    arrays = np.load(path, allow_pickle=False)
  except _NPZ_ERRORS as e:
    raise ValueError(f'{path} {_npz_problem(path, e)}.') from e
  if not isinstance(arrays, np.lib.npyio.NpzFile):
    raise ValueError(f'{path} is a single .npy array, not an .npz archive.')
  with arrays:
    if 'meta/format' not in arrays.files:
      raise ValueError(
        f'{path} is not a perceiver_io parameter file (no meta/format entry).'
      )
    trees = {'params': {}, 'state': {}}
    meta = {}
    for key in arrays.files:
      kind, _, rest = key.partition('/')
      if kind != 'meta' and (kind not in trees or ':' not in rest):
        raise ValueError(f'{path}: unexpected entry {key!r}.')
      try:
        value = arrays[key]
      except _NPZ_ERRORS as e:
        raise ValueError(
          f'{path}: entry {key!r} is damaged ({type(e).__name__}: {e}).'
        ) from e
      if kind == 'meta':
        meta[rest] = str(value)
        continue
      module, name = rest.rsplit(':', 1)
      trees[kind].setdefault(module, {})[name] = value
  return trees['params'], trees['state'], meta


def load_params(path):
  """Reads a released pickle or a converted `.npz`.

  Args:
    path: a `.pickle`/`.pystate` file from DeepMind, or a `.npz` written by
      `convert` or `save_params`.

  Returns:
    (params, state): nested dicts {module: {name: np.ndarray}}.

  Raises:
    safe_pickle.UnsafePickleError: if a pickle asks to run anything.
    pickle.UnpicklingError: if a pickle is empty, truncated or not a pickle
      (the message names the file and the problem).
    ValueError: if an `.npz` cannot be read, or the file does not hold a
      parameter mapping.
    FileNotFoundError: if there is no such file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No checkpoint file at {path}.')
  if path.endswith('.npz'):
    params, state, _ = _read_npz(path)
  else:
    params, state = _split_params_state(safe_pickle.load(path), path)
  params = _check_params_tree(params, path, 'parameter')
  state = _check_params_tree(state, path, 'state')
  return params, state


def save_params(path, params, state=None, name=None, config=None):
  """Writes params (and state) as a pickle-free `.npz`, atomically."""
  arrays = {'meta/format': np.array(_NPZ_FORMAT)}
  if name is not None:
    arrays['meta/architecture'] = np.array(name)
  if config is not None:
    arrays['meta/config'] = np.array(config.to_json())
  for kind, tree in (('params', params), ('state', state or {})):
    for module, leaves in tree.items():
      for leaf, value in leaves.items():
        arrays[f'{kind}/{module}:{leaf}'] = np.asarray(value)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.npz.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def convert(src, dst, name=None):
  """Converts a released pickle to `.npz` once; later loads need no pickle."""
  params, state = load_params(src)
  name = name or infer_architecture(src, params)
  save_params(dst, params, state, name=name)
  return dst


# --- Architectures -----------------------------------------------------------


def infer_architecture(path, params):
  """The architecture of a checkpoint, from its file name or its parameters."""
  stem = pathlib.Path(path).name.split('.')[0]
  if stem in RELEASED_FILES:
    return RELEASED_FILES[stem]
  if str(path).endswith('.npz'):
    with np.load(path, allow_pickle=False) as arrays:
      if 'meta/architecture' in arrays.files:
        return str(arrays['meta/architecture'])
  modules = set(params)
  if 'embed' in modules:
    return models.LANGUAGE
  if any(m.startswith('flow_decoder/') for m in modules):
    return models.OPTICAL_FLOW
  if any(m.startswith('multimodal_decoder/') for m in modules):
    return models.VIDEO_AUTOENCODING
  if any('conv2_d_downsample' in m for m in modules):
    return models.IMAGENET_CONV
  if 'image_preprocessor/~/conv2_d' in modules:
    return models.IMAGENET_LEARNED
  if any(m.startswith('classification_decoder/') for m in modules):
    return models.IMAGENET_FOURIER
  raise ValueError(
    f'Cannot tell the architecture of {path}; pass name= (one of '
    f'{models.ARCHITECTURES}).'
  )


def check_params_match(model, params, state, config=None, source='checkpoint'):
  """Raises ValueError naming the first difference from the model's tree."""
  inputs = models.example_inputs(model.name, config or model.config)
  want_params, want_state = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), **inputs)
  )
  for what, want, got in (
    ('parameter', want_params, params),
    ('state', want_state, state),
  ):
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
      raise ValueError(
        f'The {source} does not match {model.name}: missing {what} modules '
        f'{missing[:5]}, unexpected {unexpected[:5]}.'
      )
    for module in sorted(want):
      for name in sorted(set(want[module]) | set(got[module])):
        if name not in want[module] or name not in got[module]:
          raise ValueError(
            f'The {source} does not match {model.name}: {what} '
            f'{module}:{name} is only in one of them.'
          )
        want_shape = tuple(want[module][name].shape)
        got_shape = tuple(np.shape(got[module][name]))
        if want_shape != got_shape:
          raise ValueError(
            f'The {source} does not match {model.name}: {what} '
            f'{module}:{name} has shape {got_shape}, the model expects '
            f'{want_shape}. Is the config right?'
          )


class PretrainedModel:
  """A model with loaded weights; calling it runs jitted inference."""

  def __init__(self, name, config, params, state):
    self.name = name
    self.config = config
    self.model = models.build(name, config)
    self.params = jax.tree.map(np.asarray, params)
    self.state = jax.tree.map(np.asarray, state)
    self._apply = jax.jit(self.model.apply, static_argnames=('is_training',))

  def init(self, rng, **inputs):
    return self.model.init(rng, **inputs)

  def apply(self, params, state, rng, *, is_training=False, **inputs):
    return self.model.apply(
      params, state, rng, is_training=is_training, **inputs
    )

  def __call__(self, **inputs):
    """Inference with the loaded weights; see `models.INPUT_NAMES`."""
    outputs, _ = self._apply(self.params, self.state, None, **inputs)
    return outputs


def load(
  path, name: str | None = None, config: ml_collections.ConfigDict | None = None
) -> PretrainedModel:
  """Loads a released checkpoint (or our `.npz`) as a ready model.

  Args:
    path: checkpoint file.
    name: architecture; inferred from the file name or parameters if None.
    config: model config; defaults to the released sizes (or the config
      stored in an `.npz`).

  Returns:
    A `PretrainedModel` with `.params`, `.state`, `.config` and `.model`.

  Raises:
    ValueError: if the checkpoint does not match the architecture and config.
  """
  params, state = load_params(path)
  name = name or infer_architecture(path, params)
  if name not in models.ARCHITECTURES:
    raise ValueError(
      f'Unknown architecture {name!r}; expected one of {models.ARCHITECTURES}.'
    )
  if config is None and os.fspath(path).endswith('.npz'):
    _, _, meta = _read_npz(path)
    if 'config' in meta:
      config = ml_collections.ConfigDict(json.loads(meta['config']))
  config = config or models.get_config(name)
  pretrained = PretrainedModel(name, config, params, state)
  check_params_match(pretrained.model, params, state, source=f'file {path}')
  return pretrained


def main(argv=None):
  parser = argparse.ArgumentParser(
    description='Convert a released Perceiver IO pickle to a safe .npz.'
  )
  parser.add_argument('src', help='a .pickle or .pystate file from DeepMind')
  parser.add_argument('dst', help='the .npz file to write')
  parser.add_argument(
    '--name', default=None, help=f'architecture, one of {models.ARCHITECTURES}'
  )
  parser.add_argument(
    '--verbose_errors',
    action='store_true',
    help='show the traceback of an unreadable or unwritable file',
  )
  args = parser.parse_args(argv)
  try:
    convert(args.src, args.dst, name=args.name)
  except (OSError, ValueError, pickle.UnpicklingError) as e:
    if args.verbose_errors:
      raise
    parser.exit(1, f'{parser.prog}: error: {e}\n')  # One line, no traceback.
  print(f'Wrote {args.dst}')


if __name__ == '__main__':
  main()
