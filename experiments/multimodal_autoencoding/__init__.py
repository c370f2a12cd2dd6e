"""Multimodal (video + audio + label) autoencoding with Perceiver IO.

`python -m experiments.multimodal_autoencoding` (`__main__.py`) trains and
evaluates. Modules: `model` (the released architecture with a maskable label
input and chunked full decoding), `train` (loss and eval: the
`trainer.Task`), `data` (moving sklearn digits with a sound track) and
`kinetics` (Kinetics-700 video folders and annotation CSV, read with PyAV).
"""

from experiments.multimodal_autoencoding.train import build_task

__all__ = ['build_task']
