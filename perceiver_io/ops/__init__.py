"""Numerical kernels of the model library, without Haiku.

Pure functions of arrays, most with a hand-written backward pass:

  attend.py       `attend`, the one attention entry point, and `resolve`,
                  which picks one of the attention kernels below.
  einsum.py       the reference attention (the whole [B, H, N, M] matrix).
  dot_product.py  `jax.nn.dot_product_attention` (cuDNN on GPUs).
  chunked.py      online-softmax attention over key blocks, and its variant
                  that projects keys and values block by block.
  grid.py         attention to inputs whose Fourier features are per-axis
                  tables (`GridInputs`).
  dense.py        linear maps in a compute dtype with float32 sums.
  layer_norm.py   LayerNorm with a backward pass linear in depth.
  residuals.py    how the backward passes store what they keep.
  concat.py       channel concatenation that fuses into its writes.

Which kernel runs, in what dtype, and with what block sizes is set by a
`perceiver_io.runtime.Runtime`.
"""
