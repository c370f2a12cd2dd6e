"""How a model runs: the one switchboard for speed, memory and precision.

Every architecture's config has a `runtime` section (`models.get_config`),
and `models.build` hands the `Runtime` it describes to every layer of the
encoder and of the decoders alike. None of its fields changes the
parameters; `compute_dtype` changes the results by bf16/fp16 round-off, the
others by float32 round-off at most. So a checkpoint trained with one runtime
loads and runs under any other.

Fields:
  attention_impl: which attention `ops.attend` runs in every layer.
    'einsum': the reference; it materialises the [B, H, N, M] matrix.
    'chunked': an online softmax over key blocks (`ops.chunked`); on many
      raw inputs it projects the keys and values block by block too
      ('projected'), and on `GridInputs` it runs `ops.grid` ('grid').
    'dot_product': `jax.nn.dot_product_attention` (cuDNN's fused kernel on a
      GPU with bf16/fp16 inputs).
    'auto' (the default): cuDNN where it applies, else 'chunked' for big
      attention matrices (or many inputs, or grid inputs), else 'einsum'.
  compute_dtype: 'float32', 'bfloat16' or 'float16'. The matrix products of
    every attention layer take operands of this dtype and sum in float32;
    parameters, LayerNorm, GELU, softmax, the residual stream and the model's
    outputs stay float32 (`ops.dense`).
  grid_inputs: the image and flow preprocessors hand the encoder their
    Fourier features as per-axis tables (`ops.grid.GridInputs`) instead of a
    [B, M, C] array. Only 'auto' and 'chunked' use them without first
    building the array.
  scan_blocks: loop over the encoder's weight-shared blocks with `lax.scan`
    (compiles one block instead of all of them).
  scan_layers: also loop over the layers of a block, their weights stacked
    along a leading axis (compiles one layer; slower per step on CPU).
  remat_blocks, remat_layers: recompute each block's (each latent layer's)
    activations in the backward pass instead of storing them.
  query_chunk_size: a cross-attention to more queries than this (the flow
    decoder's 182,528) runs the whole layer over chunks of this many queries;
    None never chunks.
  q_chunk_size, kv_chunk_size: query and key blocks of the 'chunked' and
    'projected' kernels. Inputs longer than `kv_chunk_size` are projected
    block by block.
  grid_block_size: inputs per block of the 'grid' kernel (whole grid rows).
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

ATTENTION_IMPLS = ('auto', 'einsum', 'chunked', 'dot_product')
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How every layer of a model runs; see the module docstring."""

  attention_impl: str = 'auto'
  compute_dtype: str = 'float32'
  grid_inputs: bool = True
  scan_blocks: bool = True
  scan_layers: bool = False
  remat_blocks: bool = False
  remat_layers: bool = False
  query_chunk_size: int | None = 8192
  q_chunk_size: int = 1024
  kv_chunk_size: int = 2048
  grid_block_size: int = 4096

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f'runtime.attention_impl must be one of {ATTENTION_IMPLS}; got '
        f'{self.attention_impl!r}.'
      )
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(
        f'runtime.compute_dtype must be one of {COMPUTE_DTYPES}; got '
        f'{self.compute_dtype!r}.'
      )
    for name in (
      'grid_inputs',
      'scan_blocks',
      'scan_layers',
      'remat_blocks',
      'remat_layers',
    ):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(
          f'runtime.{name} must be True or False; got {getattr(self, name)!r}.'
        )
    for name in ('q_chunk_size', 'kv_chunk_size', 'grid_block_size'):
      _check_positive(name, getattr(self, name))
    if self.query_chunk_size is not None:
      _check_positive('query_chunk_size', self.query_chunk_size)

  @property
  def dtype(self) -> jnp.dtype:
    """The compute dtype."""
    return jnp.dtype(self.compute_dtype)


def _check_positive(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f'runtime.{name} must be a positive int; got {value!r}.')


# The defaults, as a value (a `Runtime` is immutable).
DEFAULT = Runtime()


def check_type(runtime) -> None:
  """Raises TypeError unless `runtime` is a `Runtime` (not a config or str)."""
  if not isinstance(runtime, Runtime):
    raise TypeError(
      f'runtime must be a perceiver_io.runtime.Runtime; got {runtime!r}.'
    )


FIELDS = tuple(field.name for field in dataclasses.fields(Runtime))


def config(**overrides) -> ml_collections.ConfigDict:
  """The default `runtime` config section, with `overrides`."""
  runtime = dataclasses.replace(Runtime(), **overrides)
  return ml_collections.ConfigDict(dataclasses.asdict(runtime))


def from_config(section) -> Runtime:
  """The `Runtime` of a config section (a ConfigDict, dict or None).

  Raises:
    ValueError: on an unknown key or a bad value, naming it.
  """
  if section is None:
    return Runtime()
  if isinstance(section, Runtime):
    return section
  values = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
  unknown = sorted(set(values) - set(FIELDS))
  if unknown:
    raise ValueError(
      f'Unknown runtime field(s) {unknown}; config.runtime takes {FIELDS}.'
    )
  return Runtime(**values)
