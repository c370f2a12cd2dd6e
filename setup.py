"""Install script for perceiver_io."""

import pathlib

import setuptools

setuptools.setup(
  name='perceiver_io',
  version='0.1.0',
  description='Perceiver IO in JAX and Haiku: models, released checkpoints '
  'and training experiments.',
  long_description=pathlib.Path(__file__)
  .with_name('README.md')
  .read_text(encoding='utf-8'),
  long_description_content_type='text/markdown',
  license='Apache-2.0',
  python_requires='>=3.10',
  packages=setuptools.find_packages(
    include=[
      'perceiver_io',
      'perceiver_io.*',
      'experiments',
      'experiments.*',
      'configs',
      'configs.*',
    ]
  ),
  # The model library needs only these; `requirements.txt` pins the full
  # tested set, including the experiments' tensorflow data pipelines.
  install_requires=[
    'jax>=0.4.30',
    'dm-haiku>=0.0.13',
    'numpy>=1.24',
    'ml-collections>=0.1.1',
  ],
  extras_require={
    'experiments': [
      'optax',
      'orbax-checkpoint',
      'absl-py',
      'tensorflow-cpu',
      'tensorflow-datasets',
      'tensorboard',
      'scikit-learn',
      'pillow',
    ],
  },
)
