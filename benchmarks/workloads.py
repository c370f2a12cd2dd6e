"""What the harness measures: a model, its inputs, a forward and a train step.

Shape letters: B batch, S sequence, H height, W width, K classes.

`build_workload(spec)` turns a plain dict (picklable, so it can cross into a
worker process) into jitted `forward()` and `train_step()` closures over one
set of random parameters, for our implementation ('ours') or the
straightforward one ('straightforward', `perceiver_io.testing.reference`).
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from perceiver_io import models
from perceiver_io.testing import reference

IMPLS = ('ours', 'straightforward', 'pytorch')


# The architecture of experiment configs whose model config does not name one.
_EXPERIMENT_ARCHITECTURES = {
  'masked_lm': models.LANGUAGE,
  'optical_flow': models.OPTICAL_FLOW,
}


def load_experiment_model(path_and_arg):
  """(architecture, model config) from `configs/x.py[:arg]`'s config.model."""
  path, _, arg = path_and_arg.partition(':')
  module_spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  model = config.model.to_dict()
  stem = os.path.splitext(os.path.basename(path))[0]
  name = model.pop('architecture', None) or _EXPERIMENT_ARCHITECTURES.get(stem)
  if name is None:
    raise ValueError(
      f'{path}: config.model has no `architecture` key, and the harness '
      f'knows the architecture of {sorted(_EXPERIMENT_ARCHITECTURES)} only.'
    )
  return name, ml_collections.ConfigDict(model)


def model_config(spec):
  """The model config a workload spec describes."""
  if spec.get('experiment_config'):
    name, config = load_experiment_model(spec['experiment_config'])
  else:
    name, config = spec['arch'], models.get_config(spec['arch'])
  if spec.get('image_size'):
    size = tuple(spec['image_size'])
    if name not in models.IMAGENET_ARCHITECTURES:
      raise ValueError('--image_size applies to the ImageNet architectures.')
    config.image_size = size  # The Fourier max_resolution follows.
  config.runtime.attention_impl = spec.get('attention_impl', 'einsum')
  config.runtime.compute_dtype = spec.get('compute_dtype') or 'float32'
  for key, value in spec.get('overrides', {}).items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise ValueError(f'Unknown config key {key!r}.')
    node[leaf] = value
  return name, config


def random_inputs(name, config, batch_size, seed=0):
  """Random inputs of the shapes `config` expects (numpy)."""
  rng = np.random.default_rng(seed)
  inputs = models.example_inputs(name, config, batch_size)
  for key, value in inputs.items():
    if key == 'inputs':
      inputs[key] = rng.integers(
        0, config.vocab_size, value.shape, dtype=np.int32
      )
    elif value.dtype == np.float32:
      inputs[key] = rng.uniform(-1, 1, value.shape).astype(np.float32)
  return inputs


def loss_fn(name, outputs, targets):
  """Cross-entropy for classifiers and the MLM, mean squares otherwise."""
  if name == models.LANGUAGE or name in models.IMAGENET_ARCHITECTURES:
    log_probs = jax.nn.log_softmax(outputs.astype(jnp.float32))
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)
    return -jnp.mean(picked)
  leaves = jax.tree.leaves(outputs)
  return sum(jnp.mean(jnp.square(x.astype(jnp.float32))) for x in leaves)


def targets_for(name, config, batch_size, seed=1):
  rng = np.random.default_rng(seed)
  if name == models.LANGUAGE:
    return rng.integers(
      0, config.vocab_size, (batch_size, config.max_seq_len), dtype=np.int32
    )
  if name in models.IMAGENET_ARCHITECTURES:
    return rng.integers(
      0, config.decoder.num_classes, (batch_size,), dtype=np.int32
    )
  return None


@dataclasses.dataclass
class Workload:
  """Jitted closures over one model's parameters and inputs."""

  name: str
  batch_size: int
  num_params: int
  forward: Callable
  train_step: Callable
  compile_forward: Callable
  compile_train: Callable


def build_workload(spec):
  """A `Workload` for spec['impl'] in ('ours', 'straightforward')."""
  name, config = model_config(spec)
  batch_size = spec['batch_size']
  build = models.build if spec['impl'] == 'ours' else reference.build
  model = build(name, config)
  inputs = jax.tree.map(jnp.asarray, random_inputs(name, config, batch_size))
  targets = targets_for(name, config, batch_size)
  # The parameters are initialised on the host and then moved: on an H100
  # the stage that built the model and its parameters took 33-87 s per
  # variant; on 2 CPU cores it takes 11-13 s (MLM, flow).
  with jax.default_device(jax.devices('cpu')[0]):
    params, state = jax.jit(lambda r: model.init(r, **inputs))(
      jax.random.PRNGKey(0)
    )
  params, state = jax.device_put((params, state), jax.devices()[0])
  optimizer = optax.adam(1e-4)

  def forward_fn(params, state, inputs):
    return model.apply(params, state, None, is_training=False, **inputs)[0]

  def update(train_state, inputs, targets):
    params, state, opt_state = train_state

    def loss(params):
      outputs, new_state = model.apply(
        params, state, None, is_training=True, **inputs
      )
      return loss_fn(name, outputs, targets), new_state

    (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_state, opt_state), value

  forward_jit = jax.jit(forward_fn)
  update_jit = jax.jit(update, donate_argnums=(0,))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  # One copy of the parameters: the train step takes them over (and donates
  # them), so measure the forward first.
  holder = {'params': params, 'train_state': None}
  del params

  def compile_forward():
    holder['forward'] = forward_jit.lower(
      holder['params'], state, inputs
    ).compile()
    return holder['forward']

  def compile_train():
    params = holder.pop('params')
    train_state = (params, state, optimizer.init(params))
    holder['update'] = update_jit.lower(train_state, inputs, targets).compile()
    holder['train_state'] = train_state
    return holder['update']

  def forward():
    return holder['forward'](holder['params'], state, inputs)

  def train_step():
    holder['train_state'], value = holder['update'](
      holder['train_state'], inputs, targets
    )
    return value

  return Workload(
    name=name,
    batch_size=batch_size,
    num_params=num_params,
    forward=forward,
    train_step=train_step,
    compile_forward=compile_forward,
    compile_train=compile_train,
  )
