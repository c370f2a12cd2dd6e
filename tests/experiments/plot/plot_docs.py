"""Docs registry entries for docs/training.md's pictures of runs.

Merged into `docs_commands_test.REGISTRY` (see `_merge_task_fragments`);
they run after the quick start's `runs/digits` and the masked LM's
`runs/mlm` exist in the scratch directory.
"""

import doc_commands

Names = doc_commands.Names
Run = doc_commands.Run
steps = doc_commands.steps

NOSHIFT = (
  'python -m experiments.image_classification '
  '--config=configs/image_classification.py:digits '
  '--workdir=runs/digits_noshift --config.data.max_shift=0'
)

REGISTRY = {
  'python -m experiments.attention_maps': Names('experiments.attention_maps'),
  'python -m experiments.multiprocess': Names('experiments.multiprocess'),
  NOSHIFT: Run(steps(2)),
  'python -m experiments.plot runs/digits runs/digits_noshift --out=plots': Run(
    needs=NOSHIFT, expect=r'plots/loss\.png[\s\S]*plots/eval\.png'
  ),
  'python -m experiments.attention_maps --checkpoint=runs/digits '
  '--out=attention_digits.png': Run(
    expect=r"\(1, 16, 64\), each latent's sum over the inputs 1\.0000\.\.1\.0000"
  ),
  'python -m experiments.attention_maps --checkpoint=runs/mlm '
  '\'--text=The "if" statement is used for conditional execution:\' '
  '--out=attention_mlm.png': Run(expect=r'drawn to attention_mlm\.png'),
}
