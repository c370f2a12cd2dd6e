"""Position encodings: trainable tables and N-d Fourier features.

Shape letters: B batch, M positions (the product of `index_dims`), d the
number of index dimensions, C channels, K frequency bands.
"""

from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_io.ops import concat

POSITION_ENCODING_TYPES = ('trainable', 'fourier')


def build_linear_positions(index_dims, output_range=(-1.0, 1.0)):
  """Positions on a regular grid, each axis spanning `output_range` inclusive.

  Args:
    index_dims: the grid size per axis, e.g. (H, W).
    output_range: the first and last coordinate of every axis.

  Returns:
    [*index_dims, d] float32 coordinates.
  """
  axes = [
    jnp.linspace(
      output_range[0], output_range[1], num=n, endpoint=True, dtype=jnp.float32
    )
    for n in index_dims
  ]
  return jnp.stack(jnp.meshgrid(*axes, indexing='ij'), axis=-1)


def fourier_feature_parts(
  pos, num_bands, max_resolution=(224, 224), concat_pos=True, sine_only=False
):
  """`generate_fourier_features` as the list of arrays it concatenates."""
  if pos.shape[-1] != len(max_resolution):
    raise ValueError(
      f'Positions have {pos.shape[-1]} dimensions but max_resolution '
      f'{tuple(max_resolution)} has {len(max_resolution)}.'
    )
  freq_bands = jnp.stack(
    [
      jnp.linspace(1.0, res / 2, num=num_bands, endpoint=True)
      for res in max_resolution
    ],
    axis=0,
  )  # [d, K]
  phases = pos[:, :, None] * freq_bands[None, :, :]  # [M, d, K]
  phases = jnp.pi * jnp.reshape(phases, (phases.shape[0], -1))  # [M, d*K]
  parts = [jnp.sin(phases)] if sine_only else [jnp.sin(phases), jnp.cos(phases)]
  return [pos] + parts if concat_pos else parts


def generate_fourier_features(
  pos, num_bands, max_resolution=(224, 224), concat_pos=True, sine_only=False
):
  """Fourier features of positions in [-1, 1].

  Axis i gets `num_bands` frequencies spaced linearly from 1 to the Nyquist
  frequency `max_resolution[i] / 2`.

  Args:
    pos: [M, d] positions.
    num_bands: K, the number of frequency bands per axis.
    max_resolution: d resolutions that set the top frequency of each axis.
    concat_pos: whether to prepend the raw positions.
    sine_only: whether to drop the cosines.

  Returns:
    [M, C] features with C = d * K * (1 if sine_only else 2) + (d or 0), in the
    order [pos, sin(axis-major bands), cos(axis-major bands)].
  """
  return concat.concat_channels(
    fourier_feature_parts(pos, num_bands, max_resolution, concat_pos, sine_only)
  )


def fourier_num_channels(num_dims, num_bands, concat_pos=True, sine_only=False):
  """The width of `generate_fourier_features` output."""
  width = num_dims * num_bands * (1 if sine_only else 2)
  return width + (num_dims if concat_pos else 0)


def fourier_grid_tables(
  index_dims, num_bands, max_resolution, concat_pos=True, sine_only=False
):
  """Per-axis tables of `generate_fourier_features` on the default grid.

  Args:
    index_dims: the grid, (S_0, ..., S_{d-1}).
    num_bands: K, frequency bands per axis.
    max_resolution: d resolutions that set the top frequency of each axis.
    concat_pos: whether the features start with the raw positions.
    sine_only: whether the cosines are dropped.

  Returns:
    d arrays [S_a, Cp]. Summed over the grid (`GridInputs.positions`) they
    equal `generate_fourier_features` of `build_linear_positions(index_dims)`
    bit for bit: each entry is computed by the same operations, and the other
    axes contribute exact zeros.
  """
  num_dims = len(index_dims)
  blocks = (['pos'] if concat_pos else []) + (
    ['sin'] if sine_only else ['sin', 'cos']
  )
  # The axis of every channel: [pos (d)], [sin (d*K, axis-major)], [cos].
  channel_axis = np.concatenate(
    [
      np.arange(num_dims)
      if block == 'pos'
      else np.repeat(np.arange(num_dims), num_bands)
      for block in blocks
    ]
  )
  tables = []
  for axis, size in enumerate(index_dims):
    coords = build_linear_positions((size,))[:, 0]  # [S_a]
    pos = jnp.zeros((size, num_dims), jnp.float32).at[:, axis].set(coords)
    features = generate_fourier_features(
      pos, num_bands, max_resolution, concat_pos, sine_only
    )  # [S_a, Cp]
    keep = jnp.asarray(channel_axis == axis)
    tables.append(jnp.where(keep, features, jnp.zeros_like(features)))
  return tuple(tables)


class TrainablePositionEncoding(hk.Module):
  """A learned [M, C] table, parameter `pos_embs`."""

  def __init__(
    self,
    index_dim: int,
    num_channels: int = 128,
    init_scale: float = 0.02,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if index_dim <= 0 or num_channels <= 0:
      raise ValueError(
        'TrainablePositionEncoding needs positive index_dim and '
        f'num_channels; got {index_dim} and {num_channels}.'
      )
    self._index_dim = int(index_dim)
    self._num_channels = int(num_channels)
    self._init_scale = init_scale

  def __call__(self, batch_size, pos=None, indices=None):
    """Returns the table, optionally at some rows, broadcast over the batch.

    Args:
      batch_size: B, or None for an unbatched [M, C] table.
      pos: ignored (a learned table has no coordinates).
      indices: optional [O] flat row indices, for subsampled decoder queries.

    Returns:
      [B, M, C] (or [B, O, C] with `indices`; no B when `batch_size` is None).
    """
    del pos
    pos_embs = hk.get_parameter(
      'pos_embs',
      [self._index_dim, self._num_channels],
      init=hk.initializers.TruncatedNormal(stddev=self._init_scale),
    )
    if indices is not None:
      pos_embs = jnp.take(pos_embs, indices, axis=0)
    if batch_size is not None:
      pos_embs = jnp.broadcast_to(
        pos_embs[None], (batch_size,) + pos_embs.shape
      )
    return pos_embs


class FourierPositionEncoding(hk.Module):
  """Fourier features over a grid of `index_dims`, or of given positions."""

  def __init__(
    self,
    index_dims,
    num_bands: int,
    concat_pos: bool = True,
    max_resolution=None,
    sine_only: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if num_bands <= 0:
      raise ValueError(f'num_bands must be positive; got {num_bands}.')
    if index_dims is not None:
      index_dims = tuple(int(d) for d in _as_tuple(index_dims))
    if max_resolution is None:
      if index_dims is None:
        raise ValueError(
          'FourierPositionEncoding needs index_dims or max_resolution.'
        )
      max_resolution = index_dims
    self._index_dims = index_dims
    self._num_bands = num_bands
    self._concat_pos = concat_pos
    self._max_resolution = tuple(_as_tuple(max_resolution))
    self._sine_only = sine_only
    if index_dims is not None and len(index_dims) != len(self._max_resolution):
      raise ValueError(
        f'index_dims {index_dims} and max_resolution {self._max_resolution} '
        'must have the same number of dimensions.'
      )

  @property
  def num_channels(self):
    return fourier_num_channels(
      len(self._max_resolution),
      self._num_bands,
      self._concat_pos,
      self._sine_only,
    )

  def __call__(self, batch_size, pos=None, indices=None):
    """Returns Fourier features.

    Args:
      batch_size: B.
      pos: optional [B, M, d] positions in [-1, 1]; by default the full grid.
      indices: ignored when `pos` is given (the caller mapped them already).

    Returns:
      [B, M, C] features.
    """
    return concat.concat_channels(
      self.parts(batch_size, pos=pos, indices=indices)
    )

  def parts(self, batch_size, pos=None, indices=None):
    """The features as the [B, M, C_i] arrays they concatenate.

    A preprocessor that concatenates them to its inputs with
    `concat_channels` never holds them apart from its result.
    """
    del indices
    if pos is None:
      if self._index_dims is None:
        raise ValueError(
          'FourierPositionEncoding was built without '
          'index_dims, so it needs explicit positions.'
        )
      pos = build_linear_positions(self._index_dims)
      pos = jnp.reshape(pos, (-1, len(self._index_dims)))
      return [
        jnp.broadcast_to(part[None], (batch_size,) + part.shape)
        for part in self._parts(pos)
      ]
    if pos.ndim != 3 or pos.shape[-1] != len(self._max_resolution):
      raise ValueError(
        f'Positions must have shape [B, M, {len(self._max_resolution)}]; got '
        f'{pos.shape}.'
      )
    return jax.vmap(self._parts)(pos)

  def grid_tables(self):
    """`fourier_grid_tables` of the default grid: d arrays [S_a, C]."""
    if self._index_dims is None:
      raise ValueError(
        'FourierPositionEncoding was built without index_dims, so it has no '
        'grid.'
      )
    return fourier_grid_tables(
      self._index_dims,
      self._num_bands,
      self._max_resolution,
      self._concat_pos,
      self._sine_only,
    )

  def _parts(self, pos):
    return fourier_feature_parts(
      pos,
      num_bands=self._num_bands,
      max_resolution=self._max_resolution,
      concat_pos=self._concat_pos,
      sine_only=self._sine_only,
    )


class PositionEncodingProjector(hk.Module):
  """A linear projection of another position encoding."""

  def __init__(
    self, output_size: int, base_position_encoding, name: str | None = None
  ):
    super().__init__(name=name)
    self._output_size = output_size
    self._base_position_encoding = base_position_encoding

  def __call__(self, batch_size, pos=None, indices=None):
    base_pos = self._base_position_encoding(
      batch_size, pos=pos, indices=indices
    )
    return hk.Linear(output_size=self._output_size)(base_pos)


def build_position_encoding(
  position_encoding_type: str,
  index_dims,
  project_pos_dim: int = -1,
  trainable_position_encoding_kwargs=None,
  fourier_position_encoding_kwargs=None,
  name: str | None = None,
):
  """Builds a trainable or Fourier position encoding, optionally projected.

  Args:
    position_encoding_type: 'trainable' or 'fourier'.
    index_dims: the grid the encoding covers, e.g. (H, W).
    project_pos_dim: if > 0, a linear projection to this many channels.
    trainable_position_encoding_kwargs: kwargs of TrainablePositionEncoding.
    fourier_position_encoding_kwargs: kwargs of FourierPositionEncoding.
    name: module name.

  Returns:
    A module called as `(batch_size, pos=None, indices=None)`.

  Raises:
    ValueError: for an unknown type or missing kwargs.
  """
  if position_encoding_type == 'trainable':
    if trainable_position_encoding_kwargs is None:
      raise ValueError(
        'position_encoding_type="trainable" needs '
        'trainable_position_encoding_kwargs.'
      )
    if index_dims is None:
      raise ValueError('A trainable position encoding needs index_dims.')
    encoding = TrainablePositionEncoding(
      index_dim=int(np.prod(_as_tuple(index_dims))),
      **trainable_position_encoding_kwargs,
      name=name,
    )
  elif position_encoding_type == 'fourier':
    if fourier_position_encoding_kwargs is None:
      raise ValueError(
        'position_encoding_type="fourier" needs '
        'fourier_position_encoding_kwargs.'
      )
    encoding = FourierPositionEncoding(
      index_dims=index_dims, **fourier_position_encoding_kwargs, name=name
    )
  else:
    raise ValueError(
      f'Unknown position_encoding_type {position_encoding_type!r}; expected '
      f'one of {POSITION_ENCODING_TYPES}.'
    )
  if project_pos_dim > 0:
    encoding = PositionEncodingProjector(
      output_size=project_pos_dim, base_position_encoding=encoding
    )
  return encoding


def _as_tuple(x) -> tuple:
  if isinstance(x, Sequence | np.ndarray):
    return tuple(x)
  return (x,)
