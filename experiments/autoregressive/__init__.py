"""Perceiver AR (Hawthorne et al. 2022): causal modelling over long contexts.

`python -m experiments.autoregressive` (`__main__.py`) trains. Modules:
`train` (the model as pure functions, loss and eval: the `trainer.Task`),
`data` (standard-library source bytes held out by file; PG-19 and
downsampled ImageNet from TFDS) and `ngram` (the order-3 baseline).
Generation is `perceiver_io.generation.generate`.
"""

from experiments.autoregressive.train import build_task

__all__ = ['build_task']
