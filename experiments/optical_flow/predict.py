r"""Two image files of any size -> optical flow `.flo`, `.npy` and a picture.

  python -m experiments.optical_flow.predict \
    --checkpoint=optical_flow_checkpoint.pystate \
    --frame1=frame_0001.png --frame2=frame_0002.png --output=out/flow

writes `out/flow.flo` (Middlebury), `out/flow.npy` (float32 [H, W, 2], u and
v in pixels) and `out/flow.png` (the Middlebury colour coding, with the
colour wheel to its right as the legend: its rim is the flow length drawn at
full colour, printed by the command; `--nolegend` writes the coding alone). The frames may have any size: larger
frames are covered by overlapping tiles of the model's size whose flows are
blended, smaller ones are resized or padded (`--small_frames`); see
`perceiver_io/flow_tiling.py`.

`--checkpoint` is DeepMind's released `optical_flow_checkpoint.pystate`, a
converted `.npz`, or a workdir of `experiments.optical_flow` (its
`config.json` gives the model sizes). For a workdir trained on synthetic
pairs, the command also reads the motion range the model was trained on and
warns when the predicted flow reaches it or the frames are much larger than
the training frames: such a model does not see motions beyond that range and
predicts too short a flow for them.
"""

import json
import os

import numpy as np

from experiments import checkpointing
from experiments import runs
from experiments.optical_flow import datasets
from experiments.optical_flow import flow_files
from perceiver_io import flow_tiling
from perceiver_io import flow_viz
from perceiver_io import models


def _find_run_config(path):
  """The `config.json` of the workdir holding checkpoint `path`, or None."""
  return runs.find_config(path)


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
  if runs.is_run(checkpoint):  # Our run: its config.json has the sizes.
    run = runs.load_run(checkpoint, experiment='experiments.optical_flow.train')
    return run.model, run.params, run.state
  from perceiver_io import pretrained

  loaded = pretrained.load(checkpoint, name=models.OPTICAL_FLOW)
  return loaded.model, loaded.params, loaded.state


# Warn when the predicted flow reaches this fraction of the trained range ...
NEAR_RANGE_FRACTION = 0.8
# ... or the frames are this many times the training frames along an axis.
LARGE_FRAME_RATIO = 4.0


def training_motion(checkpoint):
  """The motion range a training workdir's model has seen, if known.

  Args:
    checkpoint: what `load_flow_model` takes.

  Returns:
    None for released or converted weights and for runs on a real dataset
    (their motion range is not recorded); else a dict of `max_motion` and
    `mean_motion` (pixels, measured by drawing the run's synthetic flows with
    `datasets.motion_statistics`) and `train_size` (H, W).
  """
  if not checkpointing.is_checkpoint_dir(checkpoint):
    return None
  config_path = _find_run_config(checkpoint)
  if config_path is None:
    return None
  with open(config_path, encoding='utf-8') as f:
    config = json.load(f)
  data = config.get('data', {})
  if data.get('name') != 'synthetic' or 'synthetic' not in data:
    return None
  synthetic = data['synthetic']
  flow_kwargs = {
    key: synthetic[key]
    for key in datasets.FLOW_FIELDS
    if key in synthetic  # Runs from before `max_motion` lack it.
  }
  train_size = tuple(config['model']['train_size'])
  stats = datasets.motion_statistics(train_size, flow_kwargs)
  return {
    'max_motion': stats['max'],
    'mean_motion': stats['mean'],
    'train_size': train_size,
  }


def motion_warning(flow, trained):
  """A one-line warning when `flow` may exceed what the model was trained on.

  Args:
    flow: float [H, W, 2] predicted flow.
    trained: a `training_motion` dict, or None (no warning).

  Returns:
    The warning, or None. It is given when the predicted flow's 99th
    percentile length reaches `NEAR_RANGE_FRACTION` of the trained maximum
    (the true motion may be longer still), or when the frames are
    `LARGE_FRAME_RATIO` times the training frames along an axis (motions
    grow with the frame, and a model trained on small ones predicts them
    too short).
  """
  if trained is None:
    return None
  magnitude = np.sqrt(np.sum(np.square(flow), axis=-1))
  predicted = float(np.percentile(magnitude, 99))
  limit = trained['max_motion']
  height, width = trained['train_size']
  ratio = max(flow.shape[0] / height, flow.shape[1] / width)
  reasons = []
  if predicted >= NEAR_RANGE_FRACTION * limit:
    reasons.append('the predicted flow nears that range')
  if ratio >= LARGE_FRAME_RATIO:
    reasons.append(
      f'these {flow.shape[0]}x{flow.shape[1]} frames are {ratio:.0f}x its '
      f'{height}x{width} training frames, where motions are often longer'
    )
  if not reasons:
    return None
  return (
    f'Warning: this model was trained on motions up to {limit:.2f} px '
    f'(mean {trained["mean_motion"]:.2f} px); '
    + ' and '.join(reasons)
    + f'. Predicted mean |flow| {magnitude.mean():.2f} px, 99th pct '
    f'{predicted:.2f} px. Motions beyond {limit:.2f} px come out too short; '
    'train with a larger --config.data.synthetic.max_motion (and frames) '
    'for them.'
  )


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


def write_outputs(prefix, flow, max_radius=None, legend=True):
  """Writes `prefix`.flo, .npy and .png; returns the three paths.

  Args:
    prefix: output path without extension.
    flow: float32 [H, W, 2], (u, v) in pixels.
    max_radius: the flow length drawn at full colour; None: the largest.
    legend: put the colour wheel (`flow_viz.with_legend`) right of the
      coding in the PNG.
  """
  folder = os.path.dirname(os.path.abspath(prefix))
  os.makedirs(folder, exist_ok=True)
  paths = (prefix + '.flo', prefix + '.npy', prefix + '.png')
  flow_files.write_flo(paths[0], flow)
  flow_files.write_npy_flow(paths[1], flow)
  image = flow_viz.flow_to_color(flow, max_radius)
  if legend:
    image = flow_viz.with_legend(image)
  flow_files.write_image(paths[2], image)
  return paths


def main(argv):
  from absl import flags

  del argv
  FLAGS = flags.FLAGS
  model, params, state = load_flow_model(FLAGS.checkpoint)
  image1 = flow_files.read_image(FLAGS.frame1)
  image2 = flow_files.read_image(FLAGS.frame2)
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
  paths = write_outputs(
    FLAGS.output, flow, FLAGS.max_radius or None, legend=FLAGS.legend
  )
  magnitude = np.sqrt(np.sum(flow**2, axis=-1))
  finite = magnitude[np.isfinite(magnitude)]
  radius = FLAGS.max_radius or (
    float(finite.max()) if finite.size and finite.max() > 0 else 1.0
  )
  print(
    f'Flow {flow.shape[0]}x{flow.shape[1]}: mean |flow| '
    f'{magnitude.mean():.3f} px, max {magnitude.max():.3f} px. Full colour '
    f"(the legend wheel's rim) is {radius:.3f} px. Wrote " + ', '.join(paths),
    flush=True,
  )
  warning = motion_warning(flow, training_motion(FLAGS.checkpoint))
  if warning:
    print(warning, flush=True)


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
  flags.DEFINE_bool(
    'legend',
    True,
    'Draw the colour wheel right of the flow coding in the PNG.',
  )
  flags.mark_flags_as_required(['checkpoint', 'frame1', 'frame2', 'output'])


if __name__ == '__main__':
  define_flags()
  from experiments import cli

  cli.run(main, tool=True)
