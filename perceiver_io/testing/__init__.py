"""Helpers for testing and benchmarking the library; imports no torch nor tf.

`reference`: DeepMind's straightforward formulation of the encoder and the
attention blocks, the reference the library's layers are tested against and
the 'straightforward' side of `benchmarks/`.
"""
