r"""Time of `models.Model.init`: compiled (ours) against Haiku's eager init.

  python -m benchmarks.init_time

Haiku finds the parameters by running the forward pass; run eagerly, that is
one dispatch per operation. `Model.init` compiles it instead, and XLA drops
the forward computation whose results init never returns, so only the
initialisers run. Each row is measured in this process, side by side: the
first call of each (compile or tracing included) and a second call with a
new rng.

Rows: the README's small ImageNet model (546,645 parameters) and the
ImageNet Fourier model with `num_blocks=2` and 10 classes (47M parameters).
"""

import time

import haiku as hk
import jax
from absl import app
from absl import flags

from perceiver_io import models

_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timed calls after the first.')
_MODELS = flags.DEFINE_list('models', ['small', 'wide'], 'Rows: small, wide.')


def small_config():
  """The model of README's "Building models at any size"."""
  config = models.get_config(models.IMAGENET_FOURIER)
  config.image_size = (32, 32)
  config.encoder.update(
    num_blocks=1,
    num_self_attends_per_block=2,
    z_index_dim=64,
    num_z_channels=128,
  )
  config.decoder.update(num_classes=10, num_z_channels=128)
  config.decoder.trainable_position_encoding_kwargs.num_channels = 128
  return config


def wide_config():
  """The released width with two shared blocks: 47M parameters."""
  config = models.get_config(models.IMAGENET_FOURIER)
  config.encoder.num_blocks = 2
  config.decoder.num_classes = 10
  return config


def _timed(fn, rng):
  start = time.perf_counter()
  params, _ = fn(rng)
  jax.block_until_ready(params)
  return time.perf_counter() - start, params


def measure(config, repeats):
  """Seconds of (compiled first, compiled again, eager first, eager again)."""
  model = models.build(models.IMAGENET_FOURIER, config)
  inputs = models.example_inputs(model.name, config)
  transformed = hk.transform_with_state(
    models.build_forward_fn(model.name, config)
  )

  def compiled(rng):
    return model.init(rng, **inputs)

  def eager(rng):
    return transformed.init(rng, is_training=False, **inputs)

  rows = {}
  for name, fn in (('compiled', compiled), ('eager', eager)):
    first, params = _timed(fn, jax.random.PRNGKey(0))
    again = min(
      _timed(fn, jax.random.PRNGKey(i + 1))[0] for i in range(repeats)
    )
    rows[name] = (first, again)
  num_params = sum(p.size for p in jax.tree.leaves(params))
  return num_params, rows


def main(argv):
  del argv
  jax.numpy.zeros(()).block_until_ready()  # Backend start-up is not init.
  print(
    f'{"model":>12} {"params":>11} {"impl":>9} {"first s":>8} {"again s":>8}'
  )
  configs = {'small': small_config, 'wide': wide_config}
  for label in _MODELS.value:
    if label not in configs:
      raise app.UsageError(f'--models: unknown {label!r}; use small, wide.')
    config = configs[label]()
    num_params, rows = measure(config, _REPEATS.value)
    for name, (first, again) in rows.items():
      print(
        f'{label:>12} {num_params:>11,} {name:>9} {first:8.2f} {again:8.2f}'
      )
    ratio = rows['eager'][0] / rows['compiled'][0]
    print(f'{label:>12} first init: compiled is {ratio:.1f}x faster')


if __name__ == '__main__':
  app.run(main)
