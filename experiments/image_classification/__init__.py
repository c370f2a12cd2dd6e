"""Image classification: ImageNet, and digits on a laptop.

`python -m experiments.image_classification` (`__main__.py`) runs it.
Modules: `train` (model, loss and eval: the `trainer.Task`), `data` (the
tf.data pipelines: ImageNet, digits) and `augment` (the image ops).
"""

from experiments.image_classification.train import build_task

__all__ = ['build_task']
