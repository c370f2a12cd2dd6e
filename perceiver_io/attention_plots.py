"""Pictures of which inputs a few latents read (see `attention_maps`).

`image_grid(image, weights, latents, path)`: the image, then one panel per
latent with its cross-attention weights over the pixels (mean over heads),
as a heat map of the image's height x width.
`text_heat_map(text_bytes, weights, latents, path)`: one row per latent,
each byte of the text on a background whose darkness is that latent's
weight on it.
"""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def image_grid(image, weights, latents, path):
  """Writes a PNG of the weights of `latents` over the pixels.

  Args:
    image: [H, W, C] or [H, W], any range (shown rescaled).
    weights: [heads, N, H * W] one example's encoder cross-attention.
    latents: indices into N.
    path: the PNG to write.
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  maps = np.asarray(weights).mean(0)[list(latents)].reshape(-1, h, w)
  fig, axes = plt.subplots(
    1, len(latents) + 1, figsize=(2.2 * (len(latents) + 1), 2.4)
  )
  shown = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
  axes[0].imshow(
    shown.squeeze(),
    cmap='gray' if shown.ndim == 2 or shown.shape[-1] == 1 else None,
  )
  axes[0].set_title('input')
  for ax, latent, m in zip(axes[1:], latents, maps, strict=True):
    ax.imshow(m, cmap='viridis')
    ax.set_title(f'latent {latent}')
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def text_heat_map(text_bytes, weights, latents, path):
  """Writes a PNG of the weights of `latents` over the bytes of a text.

  Args:
    text_bytes: the M input bytes (padding included, shown as '.').
    weights: [heads, N, M] one example's encoder cross-attention.
    latents: indices into N.
    path: the PNG to write.
  """
  maps = np.asarray(weights).mean(0)[list(latents)]  # [L, M]
  chars = [chr(b) if 32 <= b < 127 else '.' for b in bytes(text_bytes)]
  m = len(chars)
  fig, ax = plt.subplots(
    figsize=(max(6.0, 0.14 * m), 0.45 * len(latents) + 0.6)
  )
  ax.imshow(maps / maps.max(axis=1, keepdims=True), cmap='Reds', aspect='auto')
  for row in range(len(latents)):
    for col, c in enumerate(chars):
      ax.text(
        col, row, c, ha='center', va='center', fontsize=7, family='monospace'
      )
  ax.set_yticks(range(len(latents)), [f'latent {i}' for i in latents])
  ax.set_xticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
