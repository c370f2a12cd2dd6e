"""The GLUE classifier: the language encoder plus a one-query decoder and head.

Shape letters: B batch, S sequence length in bytes, E query channels
(`d_model`), K outputs (classes, or 1 for STS-B regression).

The encoder side is the masked language model's, with the same parameter
names (`embed`, `trainable_position_encoding`, `perceiver_encoder/...`), so
that our MLM checkpoints and DeepMind's `language_perceiver_io_bytes.pickle`
load into it (`transfer_pretrained`). The decoder is a
`ClassificationDecoder` with one learned query of E channels and no final
projection; a 2-layer MLP with hidden size E and tanh maps its output to
the K logits (paper, App. F.4).
"""

from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_io import decoders
from perceiver_io import encoder as encoder_lib
from perceiver_io import models
from perceiver_io import perceiver
from perceiver_io import preprocessors

NAME = 'glue_classifier'
# Modules taken from a pretrained masked language model.
PRETRAINED_MODULES = ('embed', 'trainable_position_encoding')
PRETRAINED_SCOPE = 'perceiver_encoder/'


class ClassificationHead(hk.Module):
  """Linear(E) -> tanh -> Linear(K)."""

  def __init__(
    self, hidden: int, num_outputs: int, name: str = 'classification_head'
  ):
    super().__init__(name=name)
    self._hidden = hidden
    self._num_outputs = num_outputs

  def __call__(self, x):
    """[B, E] -> [B, K]."""
    x = jnp.tanh(hk.Linear(self._hidden)(x))
    return hk.Linear(self._num_outputs)(x)


def get_config(num_outputs: int, base: ml_collections.ConfigDict | None = None):
  """The classifier config: a language config plus `num_outputs`.

  Args:
    num_outputs: K (2 or 3 classes, 1 for regression).
    base: a `models.get_config(models.LANGUAGE)`-style config; default the
      released sizes. It may be locked (as `--config` from the command line
      is); it is not changed, and the copy keeps its lock.
  """
  config = (
    models.get_config(models.LANGUAGE)
    if base is None
    else base.copy_and_resolve_references()
  )
  # The copy keeps a locked base's lock; `num_outputs` is this model's own key.
  with config.unlocked():
    config.num_outputs = num_outputs
  return config


def _forward(config, runtime, inputs, input_mask, *, is_training):
  """int32[B, S] bytes and [B, S] mask -> [B, K] logits."""
  if input_mask.shape != inputs.shape:
    raise ValueError(
      f'input_mask {input_mask.shape} must match inputs {inputs.shape}.'
    )
  prep = preprocessors.BytesPreprocessor(
    vocab_size=config.vocab_size,
    d_model=config.d_model,
    max_seq_len=config.max_seq_len,
  )
  encoder = encoder_lib.PerceiverEncoder(
    **config.encoder.to_dict(), runtime=runtime
  )
  decoder_kwargs = config.decoder.to_dict()
  decoder = decoders.ClassificationDecoder(
    num_classes=config.num_outputs,
    position_encoding_type='trainable',
    trainable_position_encoding_kwargs=dict(
      num_channels=config.d_model, init_scale=0.02
    ),
    v_channels=config.d_model,
    final_project=False,
    runtime=runtime,
    **decoder_kwargs,
  )
  embedded, _, _ = prep(inputs, is_training=is_training)  # [B, S, E]
  features = perceiver.Perceiver(encoder=encoder, decoder=decoder)(
    embedded, is_training=is_training, input_mask=input_mask
  )  # [B, E]
  return ClassificationHead(config.d_model, config.num_outputs)(features)


def build(config: ml_collections.ConfigDict) -> models.Model:
  """The pure `init`/`apply` of the classifier at `config`."""
  if 'num_outputs' not in config:
    raise ValueError(
      'The GLUE model config needs num_outputs (see get_config).'
    )

  runtime = models.runtime_of(config)

  def forward_fn(*, is_training, inputs, input_mask):
    logits = _forward(
      config, runtime, inputs, input_mask, is_training=is_training
    )
    return logits.astype(jnp.float32)

  return models.Model(
    name=NAME,
    config=config,
    transformed=hk.transform_with_state(forward_fn),
    input_names=('inputs', 'input_mask'),
  )


def is_pretrained_module(name: str) -> bool:
  """Whether module `name` comes from the pretrained language model."""
  return name in PRETRAINED_MODULES or name.startswith(PRETRAINED_SCOPE)


def transfer_pretrained(
  params: Mapping[str, Any],
  pretrained: Mapping[str, Any],
  source: str = 'checkpoint',
) -> dict[str, Any]:
  """`params` with the encoder-side modules replaced by `pretrained`'s.

  Args:
    params: the classifier's (freshly initialised) parameters.
    pretrained: a masked language model's parameters (ours or DeepMind's).
    source: names the checkpoint in errors.

  Returns:
    A new parameter dict; the decoder and head keep their fresh values.

  Raises:
    ValueError: if a pretrained module is missing or differs in shape,
      naming the module, the parameter and both shapes.
  """
  out = {k: dict(v) for k, v in params.items()}
  for module, leaves in params.items():
    if not is_pretrained_module(module):
      continue
    if module not in pretrained:
      raise ValueError(
        f'{source} has no module {module!r}; is it a Perceiver IO language '
        'model with the same number of layers?'
      )
    for name, value in leaves.items():
      if name not in pretrained[module]:
        raise ValueError(f'{source} has no parameter {module}/{name}.')
      new = np.asarray(pretrained[module][name])
      if new.shape != tuple(np.shape(value)):
        raise ValueError(
          f'{source}: {module}/{name} has shape {new.shape}; the model '
          f'expects {tuple(np.shape(value))} (check d_model, max_seq_len '
          'and the encoder sizes in the config).'
        )
      out[module][name] = new.astype(np.asarray(value).dtype)
  return out


def init_params(model: models.Model, seq_len: int, seed: int):
  """Fresh (params, state) as numpy, from a [1, S] dummy batch."""
  inputs = jnp.zeros((1, seq_len), jnp.int32)
  params, state = jax.jit(
    lambda rng: model.init(
      rng, is_training=True, inputs=inputs, input_mask=jnp.ones_like(inputs)
    )
  )(jax.random.PRNGKey(seed))
  return jax.device_get(params), jax.device_get(state)
