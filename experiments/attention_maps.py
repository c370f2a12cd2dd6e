r"""Which inputs a few latents read: the encoder's cross-attention as a PNG.

  python -m experiments.attention_maps --checkpoint=runs/digits \
    --out=attention_digits.png

  python -m experiments.attention_maps --checkpoint=runs/mlm \
    '--text=The "if" statement is used for conditional execution:' \
    --out=attention_mlm.png

The first writes, for a held-out digit of the run's own split (`--example`),
the image and then one heat map per latent (`--latents`) of its weights over
the pixels, averaged over heads (`perceiver_io.attention_plots.image_grid`).
The second writes one row per latent over the bytes of the text, each byte
on a background as dark as that latent's weight on it (`text_heat_map`).
`--image=photo.png` puts an image file through an ImageNet model instead
(centre crop, resize to the model's size, ImageNet normalisation).

`--checkpoint` is one of our runs of `experiments.image_classification` or
`experiments.masked_lm` (a workdir, its `checkpoints/` or a step directory),
or a DeepMind release file of an ImageNet or the language model. The
weights are read by `perceiver_io.attention_maps.capture`, which does not
change the parameters or the outputs; the command prints how the weights of
each latent sum over the inputs (1) and the layer it read.
"""

import os
from collections.abc import Sequence

import jax
import numpy as np

from perceiver_io import attention_maps
from perceiver_io import attention_plots
from perceiver_io import models

ENCODER = 'perceiver_encoder/~/cross_attention'


def load(checkpoint: str):
  """(architecture, model config, params, state, run config or None)."""
  from experiments import runs

  if runs.is_run(checkpoint):
    run = runs.load_run(checkpoint)
    model = getattr(run.model, 'model', run.model)  # masked_lm: ReinitModel.
    if not isinstance(model, models.Model):
      raise ValueError(
        f'{checkpoint} is a run of {run.experiment}; attention maps read '
        'runs of experiments.image_classification and experiments.masked_lm.'
      )
    return model.name, model.config, run.params, run.state, run.config
  from perceiver_io import pretrained

  loaded = pretrained.load(checkpoint)
  return loaded.name, loaded.config, loaded.params, loaded.state, None


def encoder_maps(name, model_config, params, state, **inputs) -> np.ndarray:
  """The encoder cross-attention of example 0: float32 [heads, N, M]."""
  transformed = attention_maps.transform_with_maps(name, model_config)
  (_, maps), _ = jax.jit(transformed.apply)(params, state, None, **inputs)
  return np.asarray(maps[ENCODER])[0]


def image_inputs(path: str, size) -> tuple[np.ndarray, np.ndarray]:
  """(model input float32 [1, H, W, 3], the shown image [H, W, 3] in 0..1)."""
  from PIL import Image

  from experiments.image_classification import augment

  try:
    with Image.open(path) as f:
      image = np.asarray(f.convert('RGB'), np.float32)
  except (OSError, ValueError) as e:
    raise ValueError(f'Cannot read the image {path!r}: {e}') from e
  side = min(image.shape[:2])
  top = (image.shape[0] - side) // 2
  left = (image.shape[1] - side) // 2
  square = image[top : top + side, left : left + side]
  resized = np.asarray(
    jax.image.resize(square, (*size, 3), 'bilinear'), np.float32
  )
  normalised = (resized - np.array(augment.MEAN_RGB)) / np.array(
    augment.STDDEV_RGB
  )
  return normalised[None].astype(np.float32), np.clip(resized / 255, 0, 1)


def digits_inputs(run_config, example: int):
  """A held-out digit of the run's split: ([1, 8, 8, 1], shown [8, 8])."""
  from experiments.image_classification import data

  arrays = data.load_digits(
    run_config.data.test_fraction, run_config.data.split_seed
  )
  images = arrays['test_images']
  if not 0 <= example < len(images):
    raise ValueError(
      f'--example={example}: the held-out split has {len(images)} digits.'
    )
  label = int(arrays['test_labels'][example])
  return images[example : example + 1], images[example, ..., 0], label


def write_map(
  checkpoint: str,
  out: str,
  latents: Sequence[int] = (0, 1, 2, 3),
  text: str | None = None,
  image: str | None = None,
  example: int = 0,
) -> dict:
  """Writes the PNG; returns what was plotted (for the printout and tests).

  Raises:
    ValueError: an input that does not fit the model (text for an image
      model, a latent index beyond N, an unreadable image, ...).
  """
  name, model_config, params, state, run_config = load(checkpoint)
  folder = os.path.dirname(os.path.abspath(out))
  os.makedirs(folder, exist_ok=True)
  info = {'architecture': name, 'layer': ENCODER}
  if name == models.LANGUAGE:
    if text is None or image is not None:
      raise ValueError(f'{checkpoint} is a language model: pass --text.')
    from experiments.masked_lm import fill_mask

    seq_len = int(model_config.max_seq_len)
    inputs, input_mask, ids = fill_mask.mask_ids(text, [], seq_len)
    weights = encoder_maps(
      name,
      model_config,
      params,
      state,
      inputs=inputs[None],
      input_mask=input_mask[None],
    )
    weights = weights[..., : len(ids)]
    info['sums'] = weights.sum(-1)
    _check_latents(latents, weights.shape[1])
    shown = weights / weights.sum(-1, keepdims=True)  # Over the text only.
    attention_plots.text_heat_map(text.encode('utf-8'), shown, latents, out)
  elif name in models.IMAGENET_ARCHITECTURES:
    if text is not None:
      raise ValueError(f'{checkpoint} is an image model: pass --image.')
    size = tuple(model_config.image_size)
    if image is not None:
      inputs, shown = image_inputs(image, size)
    elif run_config is not None and run_config.data.get('name') == 'digits':
      inputs, shown, info['label'] = digits_inputs(run_config, example)
    else:
      raise ValueError(f'{checkpoint} is an ImageNet model: pass --image.')
    weights = encoder_maps(name, model_config, params, state, images=inputs)
    info['sums'] = weights.sum(-1)
    _check_latents(latents, weights.shape[1])
    attention_plots.image_grid(
      _to_input_grid(shown, weights.shape[-1]), weights, latents, out
    )
  else:
    raise ValueError(
      f'{checkpoint} is a {name} model; this command draws image '
      'classifiers and the language model.'
    )
  info['shape'] = weights.shape
  return info


def _to_input_grid(shown, num_inputs):
  """`shown` [H, W(, C)] resized to the grid of the encoder's inputs.

  The conv preprocessing downsamples by 4 along each axis: its cross-attention
  reads (H / 4) * (W / 4) positions, not H * W pixels.
  """
  height, width = shown.shape[:2]
  if height * width == num_inputs:
    return shown
  factor = int(round(np.sqrt(height * width / num_inputs)))
  grid = (height // factor, width // factor)
  if grid[0] * grid[1] != num_inputs:
    raise ValueError(
      f'The encoder reads {num_inputs} inputs; cannot lay them out over a '
      f'{height}x{width} image.'
    )
  return np.asarray(
    jax.image.resize(shown, grid + shown.shape[2:], 'bilinear'), np.float32
  )


def _check_latents(latents, num_latents):
  bad = [i for i in latents if not 0 <= i < num_latents]
  if bad:
    raise ValueError(
      f'--latents {bad} out of range: the model has {num_latents} latents.'
    )


def main(argv):
  from absl import flags

  del argv
  FLAGS = flags.FLAGS
  latents = [int(i) for i in FLAGS.latents.split(',') if i.strip()]
  info = write_map(
    FLAGS.checkpoint,
    FLAGS.out,
    latents,
    text=FLAGS.text,
    image=FLAGS.image,
    example=FLAGS.example,
  )
  sums = info['sums']
  label = f', digit {info["label"]}' if 'label' in info else ''
  print(
    f'{info["architecture"]}{label}: {info["layer"]} weights '
    f"[heads, latents, inputs] {tuple(info['shape'])}, each latent's sum "
    f'over the inputs {sums.min():.4f}..{sums.max():.4f}; latents '
    f'{latents} drawn to {FLAGS.out}',
    flush=True,
  )


def define_flags():
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'Our run or a released file.')
  flags.DEFINE_string('out', None, 'The PNG to write.')
  flags.DEFINE_string('latents', '0,1,2,3', 'Comma-separated latent indices.')
  flags.DEFINE_string('text', None, 'Text for the language model.')
  flags.DEFINE_string('image', None, 'An image file for an ImageNet model.')
  flags.DEFINE_integer('example', 0, 'Held-out digit index (digits runs).')
  flags.mark_flags_as_required(['checkpoint', 'out'])


if __name__ == '__main__':
  define_flags()
  from experiments import cli

  cli.run(main, tool=True)
