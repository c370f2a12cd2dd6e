"""Tiny optical-flow datasets in their standard layouts, for the tests.

Each pair is a real warped photograph with its exact flow (from
`SyntheticFlowPairs`), so a model or metric sees consistent data.
"""

import os

import numpy as np

from experiments.optical_flow import datasets
from experiments.optical_flow import flow_files


def _pairs(size, count, seed):
  generator = datasets.SyntheticFlowPairs(
    crop_size=size, split='train', scales=(0.25,), max_translation=2.0
  )
  rng = np.random.default_rng(seed)
  return [generator.sample(rng) for _ in range(count)]


def make_sintel(root, size=(12, 20), scenes=(('alley_1', 3), ('cave_2', 2))):
  """Writes training/{clean,final,flow}/<scene>/frame_XXXX.{png,flo}.

  Frame i is the first frame of pair i; only the last pair of a scene is
  consistent with its flow. The readers and metrics need nothing more.
  """
  for s, (scene, num_frames) in enumerate(scenes):
    pairs = _pairs(size, num_frames, seed=s)
    for pass_name in ('clean', 'final'):
      folder = os.path.join(root, 'training', pass_name, scene)
      os.makedirs(folder, exist_ok=True)
      for i in range(num_frames):
        image = pairs[i]['frames'][0]
        if pass_name == 'final':  # Final adds effects; a darker copy here.
          image = (image * 0.9).astype(np.uint8)
        flow_files.write_image(
          os.path.join(folder, f'frame_{i + 1:04d}.png'), image
        )
    flow_dir = os.path.join(root, 'training', 'flow', scene)
    os.makedirs(flow_dir, exist_ok=True)
    for i in range(num_frames - 1):
      flow_files.write_flo(
        os.path.join(flow_dir, f'frame_{i + 1:04d}.flo'), pairs[i]['flow']
      )
  return root


def make_kitti(root, sizes=((12, 20), (13, 22))):
  """Writes training/image_2/<id>_1{0,1}.png and training/flow_occ/<id>_10.png
  with about a third of the pixels not valid."""
  image_dir = os.path.join(root, 'training', 'image_2')
  flow_dir = os.path.join(root, 'training', 'flow_occ')
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(flow_dir, exist_ok=True)
  for i, size in enumerate(sizes):
    pair = _pairs(size, 1, seed=10 + i)[0]
    stem = f'{i:06d}'
    flow_files.write_image(
      os.path.join(image_dir, stem + '_10.png'), pair['frames'][0]
    )
    flow_files.write_image(
      os.path.join(image_dir, stem + '_11.png'), pair['frames'][1]
    )
    valid = np.random.default_rng(i).uniform(size=size) > 0.33
    flow_files.write_kitti_flow(
      os.path.join(flow_dir, stem + '_10.png'), pair['flow'], valid
    )
  return root


def make_chairs(root, labels=(1, 2, 1), size=(12, 16)):
  """Writes data/<n>_img{1,2}.ppm, <n>_flow.flo and the train/val file."""
  data = os.path.join(root, 'data')
  os.makedirs(data, exist_ok=True)
  for i, pair in enumerate(_pairs(size, len(labels), seed=20)):
    stem = f'{i + 1:05d}'
    flow_files.write_image(
      os.path.join(data, stem + '_img1.ppm'), pair['frames'][0]
    )
    flow_files.write_image(
      os.path.join(data, stem + '_img2.ppm'), pair['frames'][1]
    )
    flow_files.write_flo(os.path.join(data, stem + '_flow.flo'), pair['flow'])
  with open(os.path.join(root, 'FlyingChairs_train_val.txt'), 'w') as f:
    f.write('\n'.join(str(label) for label in labels) + '\n')
  return root


def make_autoflow(root, count=2, size=(12, 16)):
  """Writes static_40k_png_1_of_4/<sample>/{im0.png, im1.png, forward.flo}."""
  for i, pair in enumerate(_pairs(size, count, seed=30)):
    folder = os.path.join(root, 'static_40k_png_1_of_4', f'table_{i}')
    os.makedirs(folder, exist_ok=True)
    flow_files.write_image(os.path.join(folder, 'im0.png'), pair['frames'][0])
    flow_files.write_image(os.path.join(folder, 'im1.png'), pair['frames'][1])
    flow_files.write_flo(os.path.join(folder, 'forward.flo'), pair['flow'])
  return root
