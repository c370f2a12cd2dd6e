"""Optical-flow datasets: standard folder layouts and synthetic warped photos.

Shape letters: B batch, H height, W width. An example is a dict with
`frames` uint8 [2, H, W, 3], `flow` float32 [H, W, 2] (u, v in pixels, from the
first frame to the second) and `valid` bool [H, W].

Expected layouts (the ones the datasets ship with):

MPI-Sintel (`sintel_examples(root, pass_name='clean' | 'final')`):
  root/training/{clean,final}/<scene>/frame_0001.png ...
  root/training/flow/<scene>/frame_0001.flo ...
  root/test/{clean,final}/<scene>/frame_0001.png ...   (no flow)
  Pair i is (frame_i, frame_{i+1}) with flow frame_i.flo.

KITTI 2015 (`kitti_examples(root)`):
  root/training/image_2/000000_10.png, 000000_11.png ...
  root/training/flow_occ/000000_10.png ...   (16-bit PNG with validity)
  root/testing/image_2/...                   (no flow)

FlyingChairs (`chairs_examples(root, split='train' | 'val')`):
  root/data/00001_img1.ppm, 00001_img2.ppm, 00001_flow.flo ...
  root/FlyingChairs_train_val.txt   (one line per pair: 1 train, 2 val)

AutoFlow (`autoflow_examples(root)`):
  root/<part>/<sample>/im0.png, im1.png, forward.flo
  where <part> is e.g. static_40k_png_1_of_4.

Synthetic pairs (`SyntheticFlowPairs`): a crop of one of scikit-learn's sample
photographs is the second frame; the first frame samples the photograph at
x + flow(x) with bilinear interpolation, so frame1(x) = frame2(x + flow(x))
holds exactly and the flow is known everywhere. The flow is smooth and
different for every pair: a global translation, an affine part and a smooth
local deformation (a sum of a few low-frequency sinusoids), scaled down where
needed so that no vector is longer than `max_motion` pixels. A model trained
on these pairs has seen motions up to `max_motion` only; `motion_statistics`
measures what a generator draws.
"""

import dataclasses
import glob
import os

import numpy as np

from experiments.optical_flow import flow_files


@dataclasses.dataclass(frozen=True)
class FlowExample:
  """Paths of one frame pair; `flow` is None for test splits."""

  image1: str
  image2: str
  flow: str | None
  name: str


def load_example(example):
  """Reads a `FlowExample` into arrays.

  Returns:
    dict with `frames` uint8 [2, H, W, 3], `flow` float32 [H, W, 2] and
    `valid` bool [H, W] (both zeros/False when the example has no flow), and
    `name`.

  Raises:
    ValueError: if the frames differ in size or the flow does not match them.
  """
  image1 = flow_files.read_image(example.image1)
  image2 = flow_files.read_image(example.image2)
  if image1.shape != image2.shape:
    raise ValueError(
      f'{example.name}: frames differ in size ({image1.shape} vs '
      f'{image2.shape}).'
    )
  if example.flow is None:
    flow = np.zeros(image1.shape[:2] + (2,), np.float32)
    valid = np.zeros(image1.shape[:2], bool)
  else:
    flow, valid = flow_files.read_flow(example.flow)
    if flow.shape[:2] != image1.shape[:2]:
      raise ValueError(
        f'{example.name}: flow {flow.shape[:2]} does not match frames '
        f'{image1.shape[:2]} ({example.flow}).'
      )
  return {
    'frames': np.stack([image1, image2]),
    'flow': flow,
    'valid': valid,
    'name': example.name,
  }


def _require_dir(path, dataset, layout):
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f'{dataset}: no folder {path}. Expected the layout {layout}; see the '
      'docstring of experiments/optical_flow/datasets.py.'
    )


def _nonempty(examples, dataset, root):
  if not examples:
    raise FileNotFoundError(f'{dataset}: no frame pairs found under {root}.')
  return examples


# --- MPI-Sintel ---

SINTEL_PASSES = ('clean', 'final')


def sintel_examples(root, split='training', pass_name='clean'):
  """Lists MPI-Sintel frame pairs in the standard layout (see module doc)."""
  if pass_name not in SINTEL_PASSES:
    raise ValueError(
      f'Sintel pass must be one of {SINTEL_PASSES}; got {pass_name!r}.'
    )
  if split not in ('training', 'test'):
    raise ValueError(
      f"Sintel split must be 'training' or 'test'; got {split!r}."
    )
  image_root = os.path.join(root, split, pass_name)
  _require_dir(image_root, 'MPI-Sintel', f'<root>/{split}/{pass_name}/<scene>/')
  examples = []
  for scene in sorted(os.listdir(image_root)):
    frames = sorted(glob.glob(os.path.join(image_root, scene, 'frame_*.png')))
    for first, second in zip(frames[:-1], frames[1:], strict=True):
      stem = os.path.splitext(os.path.basename(first))[0]
      flow = None
      if split == 'training':
        flow = os.path.join(root, split, 'flow', scene, stem + '.flo')
        if not os.path.exists(flow):
          raise FileNotFoundError(f'MPI-Sintel: missing flow {flow}.')
      examples.append(
        FlowExample(first, second, flow, f'{pass_name}/{scene}/{stem}')
      )
  return _nonempty(examples, 'MPI-Sintel', image_root)


# --- KITTI 2015 ---


def kitti_examples(root, split='training', flow_dir='flow_occ'):
  """Lists KITTI 2015 pairs `<id>_10.png`, `<id>_11.png` (see module doc).

  Args:
    root: dataset root.
    split: 'training' (with flow) or 'testing'.
    flow_dir: 'flow_occ' (all pixels, the benchmark's default) or 'flow_noc'.
  """
  if split not in ('training', 'testing'):
    raise ValueError(
      f"KITTI split must be 'training' or 'testing'; got {split!r}."
    )
  image_root = os.path.join(root, split, 'image_2')
  _require_dir(image_root, 'KITTI 2015', f'<root>/{split}/image_2/')
  examples = []
  for first in sorted(glob.glob(os.path.join(image_root, '*_10.png'))):
    stem = os.path.basename(first)[: -len('_10.png')]
    second = os.path.join(image_root, stem + '_11.png')
    if not os.path.exists(second):
      raise FileNotFoundError(f'KITTI 2015: missing second frame {second}.')
    flow = None
    if split == 'training':
      flow = os.path.join(root, split, flow_dir, stem + '_10.png')
      if not os.path.exists(flow):
        raise FileNotFoundError(f'KITTI 2015: missing flow {flow}.')
    examples.append(FlowExample(first, second, flow, stem))
  return _nonempty(examples, 'KITTI 2015', image_root)


# --- FlyingChairs ---


def chairs_examples(root, split='train'):
  """Lists FlyingChairs pairs; `split` is 'train', 'val' or 'all'."""
  if split not in ('train', 'val', 'all'):
    raise ValueError(
      f"Chairs split must be 'train', 'val' or 'all'; got {split!r}."
    )
  data = os.path.join(root, 'data')
  _require_dir(data, 'FlyingChairs', '<root>/data/00001_img1.ppm ...')
  flows = sorted(glob.glob(os.path.join(data, '*_flow.flo')))
  labels = None
  split_file = os.path.join(root, 'FlyingChairs_train_val.txt')
  if split != 'all':
    if not os.path.exists(split_file):
      raise FileNotFoundError(f'FlyingChairs: missing split file {split_file}.')
    labels = np.loadtxt(split_file, dtype=np.int64).reshape(-1)
    if len(labels) != len(flows):
      raise ValueError(
        f'FlyingChairs: {split_file} lists {len(labels)} pairs but '
        f'{len(flows)} flow files were found.'
      )
  examples = []
  for i, flow in enumerate(flows):
    if labels is not None and labels[i] != (1 if split == 'train' else 2):
      continue
    stem = os.path.basename(flow)[: -len('_flow.flo')]
    examples.append(
      FlowExample(
        os.path.join(data, stem + '_img1.ppm'),
        os.path.join(data, stem + '_img2.ppm'),
        flow,
        stem,
      )
    )
  return _nonempty(examples, 'FlyingChairs', data)


# --- AutoFlow ---


def autoflow_examples(root):
  """Lists AutoFlow samples `<root>/<part>/<sample>/{im0,im1}.png, forward.flo`."""
  _require_dir(root, 'AutoFlow', '<root>/<part>/<sample>/im0.png')
  examples = []
  for sample in sorted(glob.glob(os.path.join(root, '*', '*', 'forward.flo'))):
    folder = os.path.dirname(sample)
    image1 = os.path.join(folder, 'im0.png')
    image2 = os.path.join(folder, 'im1.png')
    if not (os.path.exists(image1) and os.path.exists(image2)):
      raise FileNotFoundError(f'AutoFlow: {folder} lacks im0.png or im1.png.')
    name = os.path.relpath(folder, root)
    examples.append(FlowExample(image1, image2, sample, name))
  return _nonempty(examples, 'AutoFlow', root)


DATASETS = {
  'sintel_clean': lambda root: sintel_examples(root, pass_name='clean'),
  'sintel_final': lambda root: sintel_examples(root, pass_name='final'),
  'kitti': kitti_examples,
  'chairs': lambda root: chairs_examples(root, 'train'),
  'chairs_val': lambda root: chairs_examples(root, 'val'),
  'autoflow': autoflow_examples,
}


def list_examples(name, root):
  """Lists the pairs of dataset `name` (a key of `DATASETS`) under `root`."""
  if name not in DATASETS:
    raise ValueError(
      f'Unknown flow dataset {name!r}; expected one of {sorted(DATASETS)}.'
    )
  return DATASETS[name](root)


# --- Synthetic warped photographs ---


def bilinear_sample(image, y, x):
  """Samples float [h, w, C] `image` at float coordinates y, x of shape [H, W].

  Coordinates must lie inside [0, h - 1] x [0, w - 1].
  """
  h, w = image.shape[:2]
  y0 = np.clip(np.floor(y).astype(np.int64), 0, h - 2)
  x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 2)
  dy = (y - y0)[..., None]
  dx = (x - x0)[..., None]
  top = image[y0, x0] * (1 - dx) + image[y0, x0 + 1] * dx
  bottom = image[y0 + 1, x0] * (1 - dx) + image[y0 + 1, x0 + 1] * dx
  return top * (1 - dy) + bottom * dy


# The `random_smooth_flow` arguments that set the motion: the fields of
# `config.data.synthetic` that a run's config.json records.
FLOW_FIELDS = (
  'max_translation',
  'max_affine',
  'local_amplitude',
  'local_cycles',
  'num_waves',
  'max_motion',
)


def random_smooth_flow(
  rng,
  size,
  max_translation=2.0,
  max_affine=1.0,
  local_amplitude=0.5,
  local_cycles=1.0,
  num_waves=4,
  max_motion=None,
):
  """Draws a smooth random flow field.

  flow(p) = t + A p + sum_k a_k sin(2 pi <f_k, p> + phi_k), with p the pixel
  position scaled to [-1, 1] over the frame (so sizes are in pixels whatever
  the frame size), t uniform in a disc of radius `max_translation`, the
  entries of A uniform in +-`max_affine` (pixels at the frame edge), and
  `num_waves` sinusoids of up to `local_cycles` cycles across the frame with
  N(0, local_amplitude / sqrt(num_waves)) amplitudes. If the longest vector
  exceeds `max_motion`, the whole field is scaled down to that length (which
  keeps it smooth).

  Args:
    rng: a `np.random.Generator`.
    size: (H, W).
    max_translation, max_affine, local_amplitude: sizes in pixels.
    local_cycles: highest frequency of the local deformation, in cycles across
      the frame (<= 1 keeps it smooth at the frame scale).
    num_waves: number of sinusoids.
    max_motion: the longest flow vector in pixels, or None for no limit.

  Returns:
    float32 [H, W, 2] flow (u, v).
  """
  height, width = size
  py = np.linspace(-1.0, 1.0, height)[:, None] * np.ones((1, width))
  px = np.ones((height, 1)) * np.linspace(-1.0, 1.0, width)[None, :]
  radius = max_translation * np.sqrt(rng.uniform())
  angle = rng.uniform(0, 2 * np.pi)
  translation = radius * np.array([np.cos(angle), np.sin(angle)])
  affine = rng.uniform(-max_affine, max_affine, (2, 2))
  flow = np.empty((height, width, 2))
  for d in range(2):
    flow[..., d] = translation[d] + affine[d, 0] * px + affine[d, 1] * py
  if local_amplitude > 0 and num_waves > 0:
    # Cycles across the [-1, 1] frame: phase = pi * f * p.
    freqs = rng.uniform(-local_cycles, local_cycles, (num_waves, 2))
    phases = rng.uniform(0, 2 * np.pi, num_waves)
    amps = rng.normal(0, local_amplitude / np.sqrt(num_waves), (num_waves, 2))
    for k in range(num_waves):
      wave = np.sin(np.pi * (freqs[k, 0] * px + freqs[k, 1] * py) + phases[k])
      flow += wave[..., None] * amps[k]
  if max_motion is not None:
    longest = np.sqrt(np.sum(flow**2, axis=-1)).max()
    if longest > max_motion:
      flow *= max_motion / longest
  return flow.astype(np.float32)


def motion_statistics(size, flow_kwargs, num_pairs=200, seed=0):
  """The flow lengths `random_smooth_flow` draws, over `num_pairs` fields.

  Args:
    size: (H, W) of the frames.
    flow_kwargs: `random_smooth_flow` arguments, e.g. a generator's
      `flow_kwargs`.
    num_pairs: number of fields drawn.
    seed: seed of the draws.

  Returns:
    dict of `mean`, `median`, `p95` and `max` of |flow| over every pixel, and
    `mean_translation`: the mean over pairs of the length of each pair's mean
    flow (all in pixels).
  """
  rng = np.random.default_rng(seed)
  flows = np.stack(
    [random_smooth_flow(rng, size, **flow_kwargs) for _ in range(num_pairs)]
  )
  lengths = np.sqrt(np.sum(flows**2, axis=-1))
  return {
    'mean': float(lengths.mean()),
    'median': float(np.median(lengths)),
    'p95': float(np.percentile(lengths, 95)),
    'max': float(lengths.max()),
    'mean_translation': float(
      np.sqrt(np.sum(flows.mean(axis=(1, 2)) ** 2, axis=-1)).mean()
    ),
  }


def load_sample_photos():
  """scikit-learn's sample photographs (china, flower) as uint8 [427, 640, 3]."""
  from sklearn import datasets

  return list(datasets.load_sample_images().images)


def _resize(image, scale):
  from PIL import Image

  h, w = image.shape[:2]
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


class SyntheticFlowPairs:
  """Frame pairs made by warping photographs with known smooth flow.

  Each photograph is split into two disjoint horizontal bands: pairs of the
  'train' split come only from the top `1 - holdout_fraction` of every photo,
  pairs of the 'eval' split only from the bottom band, so evaluation pixels are
  never seen in training. Crops with too little texture (flat sky, blurred
  background), where motion is unobservable, are redrawn.
  """

  def __init__(
    self,
    crop_size=(32, 32),
    split='train',
    photos=None,
    scales=(1.0, 0.5),
    holdout_fraction=0.25,
    max_translation=2.0,
    max_affine=1.0,
    local_amplitude=0.5,
    local_cycles=1.0,
    num_waves=4,
    max_motion=None,
    min_texture=4.0,
    max_tries=20,
  ):
    """Builds the generator.

    Args:
      crop_size: (H, W) of the frames.
      split: 'train' or 'eval' (disjoint photo bands).
      photos: list of uint8 [h, w, 3]; defaults to scikit-learn's samples.
      scales: photo resampling factors; each pair uses one at random.
      holdout_fraction: fraction of each photo's rows kept for 'eval'.
      max_translation, max_affine, local_amplitude, local_cycles, num_waves:
        flow sizes, see `random_smooth_flow`.
      max_motion: the longest flow vector in pixels (None: no limit beyond
        what the sizes above can reach).
      min_texture: minimum mean absolute horizontal plus vertical intensity
        difference (0-255 scale) of an accepted crop.
      max_tries: crops drawn before accepting a flat one.
    """
    if split not in ('train', 'eval'):
      raise ValueError(f"split must be 'train' or 'eval'; got {split!r}.")
    if not 0 < holdout_fraction < 1:
      raise ValueError(
        f'holdout_fraction must be in (0, 1); got {holdout_fraction}.'
      )
    self.crop_size = tuple(int(s) for s in crop_size)
    self.flow_kwargs = dict(
      max_translation=max_translation,
      max_affine=max_affine,
      local_amplitude=local_amplitude,
      local_cycles=local_cycles,
      num_waves=num_waves,
      max_motion=max_motion,
    )
    self.min_texture = min_texture
    self.max_tries = max_tries
    # The largest displacement the flow can reach, plus a pixel of margin.
    reach = (
      max_translation
      + 2 * max_affine
      + abs(local_amplitude) * 4 * np.sqrt(num_waves)
    )
    if max_motion is not None:
      if max_motion <= 0:
        raise ValueError(
          f'max_motion must be positive (pixels) or None; got {max_motion}.'
        )
      reach = min(reach, max_motion)
    self._margin = int(np.ceil(reach)) + 1
    photos = load_sample_photos() if photos is None else photos
    self.regions = []
    for photo in photos:
      cut = int(round(photo.shape[0] * (1 - holdout_fraction)))
      band = photo[:cut] if split == 'train' else photo[cut:]
      for scale in scales:
        region = _resize(band, scale).astype(np.float32)
        if all(
          r >= c + 2 * self._margin + 2
          for r, c in zip(region.shape[:2], self.crop_size, strict=True)
        ):
          self.regions.append(region)
    if not self.regions:
      raise ValueError(
        f'No photo band is large enough for {self.crop_size} crops with a '
        f'{self._margin}px flow margin; lower the scales or the flow sizes.'
      )

  def _texture(self, crop):
    grey = crop.mean(axis=-1)
    return (
      np.abs(np.diff(grey, axis=0)).mean()
      + np.abs(np.diff(grey, axis=1)).mean()
    )

  def sample(self, rng):
    """Draws one pair: dict of `frames` uint8 [2, H, W, 3], `flow`, `valid`."""
    height, width = self.crop_size
    m = self._margin
    for _ in range(self.max_tries):
      region = self.regions[rng.integers(len(self.regions))]
      top = rng.integers(m, region.shape[0] - height - m)
      left = rng.integers(m, region.shape[1] - width - m)
      second = region[top : top + height, left : left + width]
      if self._texture(second) >= self.min_texture:
        break
    flow = random_smooth_flow(rng, self.crop_size, **self.flow_kwargs)
    ys, xs = np.mgrid[top : top + height, left : left + width].astype(
      np.float64
    )
    sy = np.clip(ys + flow[..., 1], 0, region.shape[0] - 1)
    sx = np.clip(xs + flow[..., 0], 0, region.shape[1] - 1)
    first = bilinear_sample(region, sy, sx)
    frames = np.stack([first, second])
    frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
    return {
      'frames': frames,
      'flow': flow,
      'valid': np.ones(self.crop_size, bool),
    }

  def batch(self, rng, batch_size):
    """Stacks `batch_size` pairs into a dict of [B, ...] arrays."""
    pairs = [self.sample(rng) for _ in range(batch_size)]
    return {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}
