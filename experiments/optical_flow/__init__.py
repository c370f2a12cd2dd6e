"""Optical flow: training, Sintel/KITTI evaluation and prediction.

`python -m experiments.optical_flow` (`__main__.py`) trains and evaluates;
`python -m experiments.optical_flow.predict` computes the flow of two image
files. Modules: `train` (model, loss, batches, benchmarks), `datasets`
(synthetic pairs, AutoFlow, Sintel, KITTI), `augment` (the training
augmentation) and `flow_files` (.flo, KITTI PNG and image files).
"""

from experiments.optical_flow.train import build_task

__all__ = ['build_task']
