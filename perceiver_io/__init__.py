"""Perceiver IO in JAX and Haiku (Jaegle et al. 2021, arXiv 2107.14795).

Modules: `attend` (the attention primitive), `attention` (layers),
`position_encoding`, `preprocessors`, `encoder`, `decoders`,
`postprocessors`, `perceiver` (assembly), `patching`, `bytes_tokenizer`,
`models` (the six released architectures), `pretrained` (safe loading of
DeepMind's checkpoints) and `testing.reference` (DeepMind's straightforward
formulation, the reference of the tests and benchmarks).
"""

__version__ = '0.1.0'
