"""`config.compute_dtype`: every experiment's mixed-precision switch.

'float32' (the default) or 'bfloat16'. With bfloat16 every attention layer
of the model, the decoders' included, multiplies bf16 operands into float32
sums, forward and backward (the model library's `compute_dtype_scope` and
`perceiver_io/dense.py`). Parameters, LayerNorm, GELU, softmax, the residual
stream, the model's outputs, the loss and the optimizer stay float32.

bf16 is the usual choice on GPUs and TPUs; on CPUs with bf16 matrix units
(Intel AMX) it also pays. What it gives the masked-LM and ImageNet training
steps against float32 is measured in benchmarks/README.md, "bf16 on this
CPU".
"""

import jax
import jax.numpy as jnp
import ml_collections

from perceiver_io import attention

COMPUTE_DTYPES = ('float32', 'bfloat16')


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The dtype that `config.compute_dtype` names ('float32' if absent)."""
  name = config.get('compute_dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ValueError(
      f'config.compute_dtype must be one of {COMPUTE_DTYPES}; got {name!r}.'
    )
  return jnp.dtype(name)


def _to_float32(x):
  if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x


class MixedPrecisionModel:
  """A model whose `apply` computes in a low-precision dtype.

  Everything else (`init`, attributes) is the wrapped model's. The outputs
  of `apply` come back in float32.
  """

  def __init__(self, model, dtype):
    self.model = model
    self.dtype = jnp.dtype(dtype)

  def __getattr__(self, name):
    return getattr(self.model, name)

  def apply(self, *args, **kwargs):
    # Acts while jit traces the caller.
    with attention.compute_dtype_scope(self.dtype.name):
      outputs, state = self.model.apply(*args, **kwargs)
    return jax.tree.map(_to_float32, outputs), state


def wrap(model, config: ml_collections.ConfigDict):
  """`model` itself for float32, else a `MixedPrecisionModel`."""
  dtype = compute_dtype(config)
  if dtype == jnp.float32:
    return model
  return MixedPrecisionModel(model, dtype)
