"""GLUE fine-tuning of a pretrained byte-level Perceiver IO.

`python -m experiments.glue` (`__main__.py`) runs it. Modules: `train`
(loss, eval, the task grid and the summary), `data` (the GLUE tasks as
bytes), `model` (the classifier and the pretrained-weight transfer) and
`metrics` (the GLUE scores).
"""

from experiments.glue.train import build_task

__all__ = ['build_task']
