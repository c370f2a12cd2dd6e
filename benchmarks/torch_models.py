"""HuggingFace's PyTorch port at the released sizes, for the PyTorch column.

Needs `torch` and `transformers`, which are not requirements of this
repository: `available()` says whether they import, and the harness skips the
column with a note when they don't. Models get random weights, no dropout,
and the same losses as our training step.
"""

import contextlib
import importlib.util
import statistics
import time

import numpy as np

from perceiver_io import models

# HuggingFace's config for each architecture we can build (their hub configs).
_HF_CONFIGS = {
  models.LANGUAGE: dict(
    num_latents=256,
    d_latents=1280,
    d_model=768,
    num_blocks=1,
    num_self_attends_per_block=26,
    num_self_attention_heads=8,
    num_cross_attention_heads=8,
    qk_channels=256,
    v_channels=1280,
    vocab_size=262,
    max_position_embeddings=2048,
  ),
  models.IMAGENET_FOURIER: dict(
    num_latents=512,
    d_latents=1024,
    d_model=261,
    num_blocks=8,
    num_self_attends_per_block=6,
    num_self_attention_heads=8,
    num_cross_attention_heads=1,
    num_labels=1000,
    image_size=224,
  ),
  models.IMAGENET_LEARNED: dict(
    num_latents=512,
    d_latents=1024,
    d_model=512,
    num_blocks=8,
    num_self_attends_per_block=6,
    num_self_attention_heads=8,
    num_cross_attention_heads=1,
    num_labels=1000,
    image_size=224,
  ),
  models.IMAGENET_CONV: dict(
    num_latents=512,
    d_latents=1024,
    d_model=322,
    num_blocks=8,
    num_self_attends_per_block=6,
    num_self_attention_heads=8,
    num_cross_attention_heads=1,
    num_labels=1000,
    image_size=224,
  ),
  models.OPTICAL_FLOW: dict(
    num_latents=2048,
    d_latents=512,
    d_model=322,
    num_blocks=1,
    num_self_attends_per_block=24,
    num_self_attention_heads=16,
    num_cross_attention_heads=1,
    train_size=(368, 496),
  ),
}
ARCHITECTURES = tuple(_HF_CONFIGS)


def available():
  """'' if torch and transformers import, else why the column is skipped."""
  missing = [
    m for m in ('torch', 'transformers') if importlib.util.find_spec(m) is None
  ]
  if missing:
    return (
      f'PyTorch column skipped: {" and ".join(missing)} not installed '
      '(pip install torch transformers).'
    )
  return ''


def _torch_dtype(compute_dtype):
  """None for float32, else the torch dtype that autocast computes in."""
  import torch

  if compute_dtype in (None, 'float32'):
    return None
  if compute_dtype not in ('bfloat16', 'float16'):
    raise ValueError(f'Unknown compute_dtype {compute_dtype!r}.')
  return getattr(torch, compute_dtype)


def matmul_peak_gflops(size=2048, repeats=5, compute_dtype=None):
  """PyTorch's matrix-product throughput, in GFLOP/s.

  Measured like `measure.matmul_peak_gflops` measures XLA's: the median of
  `repeats` products of two [size, size] matrices, after two warm-up calls,
  in float32 or in `compute_dtype`.
  """
  import torch

  generator = torch.Generator().manual_seed(0)
  dtype = _torch_dtype(compute_dtype) or torch.float32
  a = torch.randn(size, size, generator=generator).to(dtype)
  b = torch.randn(size, size, generator=generator).to(dtype)
  times = []
  for i in range(repeats + 2):
    start = time.perf_counter()
    torch.matmul(a, b)
    if i >= 2:
      times.append(time.perf_counter() - start)
  return 2.0 * size**3 / statistics.median(times) / 1e9


class TorchBench:
  """One HuggingFace model with its inputs, a forward and a train step.

  With a 16-bit `compute_dtype` the forward passes (and the losses) run
  under `torch.autocast`, PyTorch's mixed precision: float32 parameters and
  optimizer, matrix products in the low-precision dtype.
  """

  def __init__(self, name, batch_size, seed=0, compute_dtype=None):
    import torch
    import transformers

    if name not in _HF_CONFIGS:
      raise ValueError(
        f'No PyTorch port wired for {name!r}; have {ARCHITECTURES}.'
      )
    torch.manual_seed(seed)
    config = transformers.PerceiverConfig(
      attention_probs_dropout_prob=0.0, **_HF_CONFIGS[name]
    )
    rng = np.random.default_rng(seed)
    b = batch_size
    if name == models.LANGUAGE:
      self.model = transformers.PerceiverForMaskedLM(config)
      ids = rng.integers(0, 262, (b, 2048))
      self.inputs = dict(
        input_ids=torch.tensor(ids),
        attention_mask=torch.ones(b, 2048, dtype=torch.long),
      )
      self.target = torch.tensor(rng.integers(0, 262, (b, 2048)))
    elif name == models.OPTICAL_FLOW:
      self.model = transformers.PerceiverForOpticalFlow(config)
      patches = rng.normal(size=(b, 2, 27, 368, 496)).astype(np.float32)
      self.inputs = dict(inputs=torch.tensor(patches))
      self.target = torch.zeros(b, 368, 496, 2)
    else:
      cls = {
        models.IMAGENET_FOURIER: transformers.PerceiverForImageClassificationFourier,
        models.IMAGENET_LEARNED: transformers.PerceiverForImageClassificationLearned,
        models.IMAGENET_CONV: transformers.PerceiverForImageClassificationConvProcessing,
      }[name]
      self.model = cls(config)
      images = rng.normal(size=(b, 3, 224, 224)).astype(np.float32)
      self.inputs = dict(inputs=torch.tensor(images))
      self.target = torch.tensor(rng.integers(0, 1000, (b,)))
    self.name = name
    self.torch = torch
    self.autocast_dtype = _torch_dtype(compute_dtype)
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    self.num_params = sum(p.numel() for p in self.model.parameters())

  def _loss(self, logits):
    functional = self.torch.nn.functional
    if self.name == models.OPTICAL_FLOW:
      return functional.mse_loss(logits, self.target)
    if self.name == models.LANGUAGE:
      return functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), self.target.reshape(-1)
      )
    return functional.cross_entropy(logits, self.target)

  def _autocast(self):
    if self.autocast_dtype is None:
      return contextlib.nullcontext()
    return self.torch.autocast('cpu', dtype=self.autocast_dtype)

  def forward(self):
    self.model.eval()
    with self.torch.no_grad(), self._autocast():
      return self.model(**self.inputs).logits

  def train_step(self):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self._autocast():
      loss = self._loss(self.model(**self.inputs).logits.float())
    loss.backward()
    self.optimizer.step()
    return loss.detach()
