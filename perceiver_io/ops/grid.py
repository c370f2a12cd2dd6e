"""Cross-attention to grid inputs whose position features are separable.

Shape letters: B batch, N queries, M inputs on a grid of d axes of sizes
S_0 x ... x S_{d-1} (row-major, M = S_0 * ... * S_{d-1}), H heads, D and Dv
channels per head of the keys and values, Cc content channels, Cp position
channels, C = Cc + Cp, R grid rows (along axis 0) per block.

The image and flow models build their encoder inputs as
`x[b, m] = [c[b, m], p[m]]`: a few content channels per pixel (3 colours, or
64 flow features) followed by Fourier features of the pixel's position. Each
Fourier channel depends on one grid axis only, so the position features are
a sum of per-axis tables, `p[m] = sum_a E_a[i_a(m)]`, where `E_a` is
[S_a, Cp] and zero in the channels of the other axes (`GridInputs`).

The cross-attention reads x through a LayerNorm and two linear maps. With r
and mu the LayerNorm's reciprocal deviation and mean of input m, and G the
key weights scaled by the LayerNorm scale:

  k[m] = r[m] * (c[m] G_c + sum_a (E_a G_p)[i_a(m)] - mu[m] * 1G) + const.

So a query's logit against every input is a product with the Cc content
channels plus a sum of per-axis terms, and the attention output is a
weighted sum of the content plus weighted sums over each axis of small
tables. `attend` computes exactly that: the [B, M, C] inputs and their
[B, M, H, D] keys and values never exist, and the work per query and input
drops from about 2 * (D + Dv) multiply-adds to about 2 * Cc + 10 operations
(Cc = 3, C = 261 in the ImageNet model; Cc = 64, C = 322 in the optical-flow
model). What that saves of a forward pass's matrix products (counted from
the jaxprs) is in benchmarks/README.md, in its opening paragraph on FLOPs;
the times it gives are in its section "ImageNet and optical flow with
`grid_attend`".

The inputs are visited in blocks of whole grid rows with an online softmax
(as in `ops.chunked`), and the hand-written backward pass recomputes each
block's weights from the saved log-sum-exp, so memory grows with
B * H * N * R * S_1 * ... rather than with B * H * N * M.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from perceiver_io.ops import chunked
from perceiver_io.ops import concat
from perceiver_io.ops import layer_norm as layer_norm_lib

# Inputs per block of `attend` (whole grid rows, at least one row), and
# at most this many logits (B * H * N * inputs) per block: 4096 inputs for the
# 512 ImageNet latents, 2048 for the 2048 optical-flow ones.
DEFAULT_BLOCK_SIZE = 4096
MAX_BLOCK_LOGITS = 2**22


class GridInputs(NamedTuple):
  """Inputs [B, M, Cc + Cp] held as content and per-axis position tables.

  The preprocessors build them for Fourier features
  (`position_encoding.fourier_grid_tables`). `materialize()` returns the
  inputs themselves: the content followed by `sum_a E_a[i_a(m)]`. They have
  `shape`, `ndim` and `dtype` like the array they stand for, so that code
  that only reads those needs no change.
  """

  content: jax.Array  # [B, M, Cc]
  tables: tuple[jax.Array, ...]  # d arrays [S_a, Cp]

  @property
  def grid_shape(self):
    return tuple(table.shape[0] for table in self.tables)

  @property
  def shape(self):
    batch, num_inputs, channels = self.content.shape
    return (batch, num_inputs, channels + self.tables[0].shape[-1])

  @property
  def ndim(self):
    return 3

  @property
  def dtype(self):
    return jnp.result_type(self.content, *self.tables)

  def positions(self):
    """The position features [M, Cp]."""
    return _grid_sum(self.tables).reshape((-1, self.tables[0].shape[-1]))

  def materialize(self):
    """The [B, M, Cc + Cp] inputs."""
    batch = self.content.shape[0]
    pos = self.positions()
    pos = jnp.broadcast_to(pos[None], (batch,) + pos.shape)
    return concat.concat_channels(
      [self.content.astype(self.dtype), pos.astype(self.dtype)]
    )


def check_grid_inputs(x):
  """Raises ValueError unless `x` is a consistent `GridInputs`."""
  if x.content.ndim != 3:
    raise ValueError(
      f'GridInputs.content must have shape [B, M, Cc]; got {x.content.shape}.'
    )
  if not x.tables or any(t.ndim != 2 for t in x.tables):
    raise ValueError(
      'GridInputs.tables must be one or more [S_a, Cp] arrays; got shapes '
      f'{[t.shape for t in x.tables]}.'
    )
  widths = {t.shape[1] for t in x.tables}
  if len(widths) != 1:
    raise ValueError(
      f'GridInputs.tables must share their width Cp; got {sorted(widths)}.'
    )
  if math.prod(x.grid_shape) != x.content.shape[1]:
    raise ValueError(
      f'GridInputs: the grid {x.grid_shape} holds {math.prod(x.grid_shape)} '
      f'inputs but the content has {x.content.shape[1]}.'
    )


def _grid_sum(arrays, num_lead=0):
  """sum_a arrays[a] broadcast over the grid.

  Each `arrays[a]` is [*lead, S_a, *rest] with `num_lead` leading axes; the
  result is [*lead, S_0, ..., S_{d-1}, *rest].
  """
  num_dims = len(arrays)
  total = None
  for axis, x in enumerate(arrays):
    shape = list(x.shape)
    expanded = shape[:num_lead] + [1] * num_dims + shape[num_lead + 1 :]
    expanded[num_lead + axis] = shape[num_lead]
    x = jnp.reshape(x, expanded)
    total = x if total is None else total + x
  return total


def _position_statistics(tables):
  """Sum and sum of squares of the position channels, [S_0, ..., ] each."""
  sums = [jnp.sum(t, axis=-1) for t in tables]  # [S_a]
  squares = [jnp.sum(t * t, axis=-1) for t in tables]  # [S_a]
  total = _grid_sum(sums)
  total_sq = _grid_sum(squares)
  num_dims = len(tables)
  for a in range(num_dims):
    for b in range(a + 1, num_dims):
      cross = tables[a] @ tables[b].T  # [S_a, S_b]; 0 for Fourier tables.
      shape = [1] * num_dims
      shape[a], shape[b] = cross.shape
      total_sq = total_sq + 2.0 * jnp.reshape(cross, shape)
  return total, total_sq


def _rows_per_block(grid_shape, block_size, logits_per_input):
  """Grid rows per block: up to `block_size` inputs and MAX_BLOCK_LOGITS."""
  inputs = min(block_size, MAX_BLOCK_LOGITS // max(logits_per_input, 1))
  return max(1, min(grid_shape[0], inputs // math.prod(grid_shape[1:])))


class _Grid(NamedTuple):
  """Static layout of the block loop: the grid and its rows per block."""

  shape: tuple[int, ...]
  rows: int

  @property
  def row(self):
    return math.prod(self.shape[1:])


def _separable(x_c, x_axes, x_u, c, mu, start, size):
  """x_c . c[k] + sum_a x_a[i_a(k)] - x_u * mu[k] for the inputs k of a block.

  Args:
    x_c: [B, H, N, Cc].
    x_axes: d arrays [B, H, N, S_a].
    x_u: [B, H, N].
    c: [B, K, Cc] content of the block's K inputs.
    mu: [B, K].
    start: the block's first grid row.
    size: its number of grid rows.

  Returns:
    [B, H, N, K].
  """
  rows = lax.dynamic_slice_in_dim(x_axes[0], start, size, axis=3)
  axis_terms = _grid_sum((rows,) + tuple(x_axes[1:]), num_lead=3)
  axis_terms = axis_terms.reshape(x_u.shape + (c.shape[1],))
  out = jnp.einsum('bhnc,bkc->bhnk', x_c, c) + axis_terms
  return out - mu[:, None, None, :] * x_u[..., None]


def _block_inputs(content, rstd, mean, kv_mask, grid, start, size):
  """The content [B, K, Cc], 1 / std, mean and validity [B, K] of a block."""
  lo, n = start * grid.row, size * grid.row
  c = lax.dynamic_slice_in_dim(content, lo, n, axis=1)
  r = lax.dynamic_slice_in_dim(rstd, lo, n, axis=1)
  mu = lax.dynamic_slice_in_dim(mean, lo, n, axis=1)
  valid = None
  if kv_mask is not None:
    valid = lax.dynamic_slice_in_dim(kv_mask, lo, n, axis=1) != 0
  return c, r, mu, valid


def _block_logits(q_side, block, start, size):
  """Logits s = r * t [B, H, N, K] of a block, and t."""
  c, r, mu, valid = block
  t = _separable(*q_side, c, mu, start, size)
  s = r[:, None, None, :] * t
  if valid is not None:
    s = jnp.where(valid[:, None, None, :], s, jnp.float32(chunked.MASK_VALUE))
  return s, t


def _axis_sums(x, grid, size):
  """Sums of [B, H, N, K] over a block's inputs that share a grid index.

  Returns d arrays: [B, H, N, size] for the block's rows (axis 0), then
  [B, H, N, S_a] for each other axis.
  """
  x = x.reshape(x.shape[:3] + (size,) + grid.shape[1:])
  grid_axes = tuple(range(3, x.ndim))
  return [
    jnp.sum(x, axis=tuple(g for g in grid_axes if g != axis))
    for axis in grid_axes
  ]


def _add_axis_sums(accs, sums, start):
  """Adds `_axis_sums` to accumulators [B, H, N, S_a]; rows at `start`."""
  rows = lax.dynamic_slice_in_dim(accs[0], start, sums[0].shape[3], axis=3)
  first = lax.dynamic_update_slice_in_dim(accs[0], rows + sums[0], start, 3)
  return (first,) + tuple(
    acc + new for acc, new in zip(accs[1:], sums[1:], strict=True)
  )


def _over_blocks(step, carry, grid):
  """Runs step(carry, start, size) -> (carry, out) over the grid's blocks.

  Returns the final carry and the outputs of all blocks, each [B, K, ...],
  joined along their axis 1 into [B, M, ...].
  """
  num_full = grid.shape[0] // grid.rows
  carry, outs = lax.scan(
    lambda carry, i: step(carry, i * grid.rows, grid.rows),
    carry,
    jnp.arange(num_full),
  )  # outs: [num_full, B, K, ...] each.
  outs = jax.tree.map(
    lambda x: jnp.reshape(
      jnp.swapaxes(x, 0, 1), (x.shape[1], -1) + x.shape[3:]
    ),
    outs,
  )
  rest = grid.shape[0] - num_full * grid.rows
  if rest:
    carry, last = step(carry, num_full * grid.rows, rest)
    outs = jax.tree.map(
      lambda x, y: jnp.concatenate([x, y], axis=1), outs, last
    )
  return carry, outs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _weighted_sums(grid, q_side, content, rstd, mean, kv_mask):
  """The softmax-weighted sums that the attention output is linear in.

  With s[n, k] = r[k] * (q_c[n] . c[k] + sum_a q_a[n, i_a(k)] - q_u[n] *
  mu[k]), P = softmax over k and w = P * r:

  Args:
    grid: the static `_Grid`.
    q_side: (q_c [B, H, N, Cc], d arrays q_a [B, H, N, S_a], q_u [B, H, N]).
    content: [B, M, Cc].
    rstd: [B, M] 1 / std of each input.
    mean: [B, M] mean of each input.
    kv_mask: optional [B, M].

  Returns:
    (sum_k w c [B, H, N, Cc], d arrays sum_{k: i_a(k) = s} w [B, H, N, S_a],
    sum_k w mu [B, H, N]).
  """
  return _weighted_sums_fwd(grid, q_side, content, rstd, mean, kv_mask)[0]


def _weighted_sums_fwd(grid, q_side, content, rstd, mean, kv_mask):
  q_c, q_axes, q_u = q_side
  lead = q_u.shape
  f32 = jnp.float32

  def step(carry, start, size):
    m_run, l_run, acc_c, acc_axes, acc_mu = carry
    block = _block_inputs(content, rstd, mean, kv_mask, grid, start, size)
    c, r, mu, _ = block
    s, _ = _block_logits(q_side, block, start, size)
    m_new = jnp.maximum(m_run, jnp.max(s, axis=-1))
    p = jnp.exp(s - m_new[..., None])  # [B, H, N, K]
    alpha = jnp.exp(m_run - m_new)  # [B, H, N]
    l_run = alpha * l_run + jnp.sum(p, axis=-1)
    w = p * r[:, None, None, :]
    acc_c = alpha[..., None] * acc_c + jnp.einsum('bhnk,bkc->bhnc', w, c)
    acc_mu = alpha * acc_mu + jnp.einsum('bhnk,bk->bhn', w, mu)
    acc_axes = _add_axis_sums(
      tuple(alpha[..., None] * acc for acc in acc_axes),
      _axis_sums(w, grid, size),
      start,
    )
    return (m_new, l_run, acc_c, acc_axes, acc_mu), ()

  carry = (
    jnp.full(lead, -jnp.inf, f32),
    jnp.zeros(lead, f32),
    jnp.zeros(q_c.shape, f32),
    tuple(jnp.zeros(x.shape, f32) for x in q_axes),
    jnp.zeros(lead, f32),
  )
  carry, _ = _over_blocks(step, carry, grid)
  m_run, l_run, acc_c, acc_axes, acc_mu = carry
  inv = 1.0 / l_run
  sums = (
    acc_c * inv[..., None],
    tuple(acc * inv[..., None] for acc in acc_axes),
    acc_mu * inv,
  )
  lse = m_run + jnp.log(l_run)  # [B, H, N]
  return sums, (q_side, content, rstd, mean, kv_mask, lse, sums)


def _weighted_sums_bwd(grid, residuals, d_sums):
  q_side, content, rstd, mean, kv_mask, lse, sums = residuals
  q_c, q_axes, q_u = q_side
  d_c, d_axes, d_mu = d_sums
  s_c, s_axes, s_mu = sums
  # sum_k w * dw for each query: the softmax's correction term.
  delta = jnp.sum(d_c * s_c, -1) + d_mu * s_mu  # [B, H, N]
  for d, s in zip(d_axes, s_axes, strict=True):
    delta = delta + jnp.sum(d * s, -1)

  def step(carry, start, size):
    g_c, g_axes, g_u = carry
    block = _block_inputs(content, rstd, mean, kv_mask, grid, start, size)
    c, r, mu, _ = block
    s, t = _block_logits(q_side, block, start, size)
    p = jnp.exp(s - lse[..., None])  # [B, H, N, K]; 0 where masked.
    dw = _separable(d_c, d_axes, -d_mu, c, mu, start, size)
    r_ = r[:, None, None, :]
    ds = p * (r_ * dw - delta[..., None])  # d loss / d s.
    g = ds * r_  # d loss / d t.
    w = p * r_
    g_c = g_c + jnp.einsum('bhnk,bkc->bhnc', g, c)
    g_u = g_u - jnp.einsum('bhnk,bk->bhn', g, mu)
    g_axes = _add_axis_sums(g_axes, _axis_sums(g, grid, size), start)
    dc = jnp.einsum('bhnk,bhnc->bkc', w, d_c) + jnp.einsum(
      'bhnk,bhnc->bkc', g, q_c
    )
    dr = jnp.einsum('bhnk->bk', p * dw + ds * t)
    dmu = jnp.einsum('bhnk,bhn->bk', w, d_mu) - jnp.einsum(
      'bhnk,bhn->bk', g, q_u
    )
    return (g_c, g_axes, g_u), (dc, dr, dmu)

  carry = (
    jnp.zeros_like(q_c),
    tuple(jnp.zeros_like(x) for x in q_axes),
    jnp.zeros_like(q_u),
  )
  (g_c, g_axes, g_u), (dc, dr, dmu) = _over_blocks(step, carry, grid)
  d_mask = None  # The mask gets no gradient.
  if kv_mask is not None:
    d_mask = np.zeros(kv_mask.shape, jax.dtypes.float0)
    if jnp.issubdtype(kv_mask.dtype, jnp.inexact):
      d_mask = jnp.zeros_like(kv_mask)
  return (g_c, g_axes, g_u), dc.astype(content.dtype), dr, dmu, d_mask


_weighted_sums.defvjp(_weighted_sums_fwd, _weighted_sums_bwd)


def attend(
  q,
  x,
  ln_scale,
  ln_offset,
  k_w,
  k_b,
  v_w,
  v_b,
  *,
  kv_mask=None,
  block_size=DEFAULT_BLOCK_SIZE,
):
  """Attention from queries to LayerNorm-projected `GridInputs`.

  Equals `ops.attend.attend(q, (k, v))` with
  `h = layer_norm(x.materialize(), ln_scale, ln_offset)`, `k = h @ k_w + k_b`
  and `v = h @ v_w + v_b` split into heads, computed in float32.

  Args:
    q: [B, N, H, D] projected queries.
    x: `GridInputs` of B examples, M inputs and C = Cc + Cp channels.
    ln_scale: [C] LayerNorm scale of the inputs.
    ln_offset: [C] LayerNorm offset.
    k_w: [C, H * D] key weights.
    k_b: [H * D] key bias (it shifts every logit of a query alike).
    v_w: [C, H * Dv] value weights.
    v_b: [H * Dv] value bias.
    kv_mask: optional [B, M]; inputs with 0 are ignored. The caller zeros
      the rows whose inputs are all masked (`ops.attend.attend`).
    block_size: inputs per block (whole grid rows, at least one row); fewer
      when B * H * N * block_size would exceed `MAX_BLOCK_LOGITS`.

  Returns:
    [B, N, H * Dv] float32.
  """
  del k_b  # The same for all keys of a query: the softmax cancels it.
  check_grid_inputs(x)
  f32 = jnp.float32
  batch, num_q, heads, head_dim = q.shape
  _, num_inputs, content_channels = x.content.shape
  channels = content_channels + x.tables[0].shape[-1]
  value_dim = v_w.shape[-1] // heads
  if k_w.shape != (channels, heads * head_dim):
    raise ValueError(
      f'k_w must have shape {(channels, heads * head_dim)}; got {k_w.shape}.'
    )
  if v_w.shape[0] != channels or v_w.shape[-1] % heads:
    raise ValueError(
      f'v_w must have shape [{channels}, H * Dv] with H = {heads}; got '
      f'{v_w.shape}.'
    )
  if q.shape[0] != x.content.shape[0]:
    raise ValueError(
      f'q {q.shape} and the grid inputs {x.shape} differ in batch size.'
    )
  if kv_mask is not None and kv_mask.shape != (batch, num_inputs):
    raise ValueError(
      f'kv_mask must have shape {(batch, num_inputs)}; got {kv_mask.shape}.'
    )
  content = x.content.astype(f32)  # [B, M, Cc]
  tables = [t.astype(f32) for t in x.tables]  # [S_a, Cp]
  q = q.astype(f32) * f32(1.0 / math.sqrt(head_dim))

  # The LayerNorm scale folded into the weights; the offset into v's bias.
  gk = ln_scale.astype(f32)[:, None] * k_w.astype(f32)  # [C, H*D]
  gv = ln_scale.astype(f32)[:, None] * v_w.astype(f32)  # [C, H*Dv]
  v0 = ln_offset.astype(f32) @ v_w.astype(f32) + v_b.astype(f32)  # [H*Dv]
  k_content = gk[:content_channels].reshape(content_channels, heads, head_dim)
  v_content = gv[:content_channels].reshape(content_channels, heads, value_dim)
  k_tables = [
    (t @ gk[content_channels:]).reshape(-1, heads, head_dim) for t in tables
  ]  # [S_a, H, D]
  v_tables = [
    (t @ gv[content_channels:]).reshape(-1, heads, value_dim) for t in tables
  ]  # [S_a, H, Dv]
  k_ones = jnp.sum(gk, axis=0).reshape(heads, head_dim)
  v_ones = jnp.sum(gv, axis=0).reshape(heads, value_dim)

  # The LayerNorm statistics of every input.
  pos_sum, pos_sq = _position_statistics(tables)  # [S_0, ...]
  mean = (jnp.sum(content, -1) + pos_sum.reshape(-1)) / channels  # [B, M]
  # Squared deviations from the mean: the content's summed directly, the
  # positions' from their sums (sum (p - mu)^2 = sum p^2 - 2 mu sum p + Cp mu^2).
  centred = content - mean[..., None]  # [B, M, Cc]
  pos_channels = channels - content_channels
  pos_dev = (
    pos_sq.reshape(-1)
    - 2.0 * mean * pos_sum.reshape(-1)
    + pos_channels * mean * mean
  )  # [B, M]
  variance = jnp.maximum(
    (jnp.sum(centred * centred, -1) + pos_dev) / channels, 0.0
  )
  rstd = lax.rsqrt(variance + f32(layer_norm_lib.EPS))  # [B, M]

  # Each query's side of the logits.
  q_side = (
    jnp.einsum('bnhd,chd->bhnc', q, k_content),  # [B, H, N, Cc]
    tuple(jnp.einsum('bnhd,shd->bhns', q, t) for t in k_tables),
    jnp.einsum('bnhd,hd->bhn', q, k_ones),  # [B, H, N]
  )
  rows = _rows_per_block(x.grid_shape, block_size, batch * heads * num_q)
  grid = _Grid(x.grid_shape, rows)
  s_c, s_axes, s_mu = _weighted_sums(grid, q_side, content, rstd, mean, kv_mask)

  out = jnp.einsum('bhnc,chd->bnhd', s_c, v_content)  # [B, N, H, Dv]
  for s, table in zip(s_axes, v_tables, strict=True):
    out = out + jnp.einsum('bhns,shd->bnhd', s, table)
  out = out - jnp.einsum('bhn,hd->bnhd', s_mu, v_ones)
  out = out + v0.reshape(heads, value_dim)
  return out.reshape(batch, num_q, heads * value_dim)  # [B, N, H * Dv]
