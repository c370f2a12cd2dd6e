"""Byte-level masked language modelling, and filling in masked text.

`python -m experiments.masked_lm` (`__main__.py`) trains;
`python -m experiments.masked_lm.fill_mask` fills in masked bytes with a
trained or released model. Modules: `train` (model, loss and eval: the
`trainer.Task`) and `data` (byte corpora, masking and batches).
"""

from experiments.masked_lm.train import build_task

__all__ = ['build_task']
