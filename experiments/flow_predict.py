r"""Two image files of any size -> optical flow `.flo`, `.npy` and a picture.

  python -m experiments.flow_predict \
    --checkpoint=optical_flow_checkpoint.pystate \
    --frame1=frame_0001.png --frame2=frame_0002.png --output=out/flow

writes `out/flow.flo` (Middlebury), `out/flow.npy` (float32 [H, W, 2], u and
v in pixels) and `out/flow.png` (the Middlebury colour coding; the colour
legend is in docs/optical_flow.md). The frames may have any size: larger
frames are covered by overlapping tiles of the model's size whose flows are
blended, smaller ones are resized or padded (`--small_frames`); see
`perceiver_io/flow_tiling.py`.

`--checkpoint` is DeepMind's released `optical_flow_checkpoint.pystate`, a
converted `.npz`, or a workdir of `experiments.optical_flow` (its
`config.json` gives the model sizes).
"""

import json
import os

import ml_collections
import numpy as np

from experiments import checkpointing
from experiments import flow_io
from perceiver_io import flow_tiling
from perceiver_io import flow_viz
from perceiver_io import models


def _find_run_config(path):
  """The `config.json` of the workdir holding checkpoint `path`."""
  path = os.path.abspath(path)
  for _ in range(4):
    candidate = os.path.join(path, 'config.json')
    if os.path.exists(candidate):
      return candidate
    path = os.path.dirname(path)
  return None


def load_flow_model(checkpoint):
  """Loads a flow model and its weights.

  Args:
    checkpoint: a released `.pystate`, a `.npz`, or our workdir (or its
      `checkpoints/` or a step directory).

  Returns:
    (model, params, state) with `model` a `perceiver_io.models.Model`.

  Raises:
    FileNotFoundError: if nothing is at `checkpoint`.
    ValueError: if the weights do not fit the model.
  """
  if checkpointing.is_checkpoint_dir(checkpoint):
    checkpoint = os.path.abspath(checkpoint)  # Orbax needs absolute paths.
    config_path = _find_run_config(checkpoint)
    if config_path is None:
      raise FileNotFoundError(
        f'No config.json next to the checkpoint {checkpoint}; it gives the '
        'model sizes.'
      )
    with open(config_path, encoding='utf-8') as f:
      model_config = ml_collections.ConfigDict(json.load(f)['model'])
    model_config.train_size = tuple(model_config.train_size)
    model = models.build(models.OPTICAL_FLOW, model_config)
    params, state = checkpointing.load_params_and_state(checkpoint)
    return model, params, state
  from perceiver_io import pretrained

  loaded = pretrained.load(checkpoint, name=models.OPTICAL_FLOW)
  return loaded.model, loaded.params, loaded.state


def default_min_overlap(tile_size):
  """DeepMind's 20 px, or a quarter of a tile too small for that."""
  if min(tile_size) >= 4 * flow_tiling.DEFAULT_MIN_OVERLAP:
    return flow_tiling.DEFAULT_MIN_OVERLAP
  return max(1, min(tile_size) // 4)


def predict_flow(
  model,
  params,
  state,
  image1,
  image2,
  *,
  tile_batch_size=4,
  min_overlap=None,
  small_frames='resize',
):
  """Flow from uint8 [H, W, 3] `image1` to `image2`: float32 [H, W, 2].

  `min_overlap` defaults to `default_min_overlap(tile size)`.
  """
  if image1.shape != image2.shape:
    raise ValueError(
      f'The frames differ in size: {image1.shape} and {image2.shape}.'
    )
  frames = np.stack([image1, image2]).astype(np.float32) * (2.0 / 255.0) - 1.0
  tile_size = tuple(model.config.train_size)
  if min_overlap is None:
    min_overlap = default_min_overlap(tile_size)
  flow_fn = flow_tiling.make_flow_fn(model, params, state)
  return flow_tiling.compute_flow(
    frames,
    flow_fn,
    tile_size=tile_size,
    min_overlap=min_overlap,
    tile_batch_size=tile_batch_size,
    small_frames=small_frames,
  )


def write_outputs(prefix, flow, max_radius=None):
  """Writes `prefix`.flo, .npy and .png; returns the three paths."""
  folder = os.path.dirname(os.path.abspath(prefix))
  os.makedirs(folder, exist_ok=True)
  paths = (prefix + '.flo', prefix + '.npy', prefix + '.png')
  flow_io.write_flo(paths[0], flow)
  flow_io.write_npy_flow(paths[1], flow)
  flow_io.write_image(paths[2], flow_viz.flow_to_color(flow, max_radius))
  return paths


def main(argv):
  from absl import flags

  del argv
  FLAGS = flags.FLAGS
  model, params, state = load_flow_model(FLAGS.checkpoint)
  image1 = flow_io.read_image(FLAGS.frame1)
  image2 = flow_io.read_image(FLAGS.frame2)
  flow = predict_flow(
    model,
    params,
    state,
    image1,
    image2,
    tile_batch_size=FLAGS.tile_batch_size,
    min_overlap=FLAGS.min_overlap if FLAGS.min_overlap >= 0 else None,
    small_frames=FLAGS.small_frames,
  )
  paths = write_outputs(FLAGS.output, flow, FLAGS.max_radius or None)
  magnitude = np.sqrt(np.sum(flow**2, axis=-1))
  print(
    f'Flow {flow.shape[0]}x{flow.shape[1]}: mean |flow| '
    f'{magnitude.mean():.3f} px, max {magnitude.max():.3f} px. Wrote '
    + ', '.join(paths),
    flush=True,
  )


def define_flags():
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'Released .pystate, .npz or workdir.')
  flags.DEFINE_string('frame1', None, 'First image file.')
  flags.DEFINE_string('frame2', None, 'Second image file.')
  flags.DEFINE_string('output', None, 'Output path without extension.')
  flags.DEFINE_integer('tile_batch_size', 4, 'Tiles per model call.')
  flags.DEFINE_integer(
    'min_overlap',
    -1,
    'Minimum tile overlap in pixels; -1: 20, or a quarter of a tile '
    'smaller than 80 pixels.',
  )
  flags.DEFINE_enum(
    'small_frames',
    'resize',
    list(flow_tiling.SMALL_FRAME_MODES),
    'How frames smaller than a tile are handled.',
  )
  flags.DEFINE_float(
    'max_radius',
    0.0,
    'Flow length drawn at full colour (0: the largest in the frame).',
  )
  flags.mark_flags_as_required(['checkpoint', 'frame1', 'frame2', 'output'])


if __name__ == '__main__':
  define_flags()
  from absl import app

  app.run(main)
