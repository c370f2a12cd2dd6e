"""The optical flow task: model, loss, batches and Sintel/KITTI evaluation.

`run(config, workdir)` is what `python -m experiments.optical_flow`
(`__main__.py`) runs: training (`build_task`) and/or the benchmarks, as
`config.mode` and `config.eval` say.

Shape letters: B batch, H height, W width.

Batches are dicts of `frames` float32 [B, 2, H, W, 3] in [-1, 1], `flow`
float32 [B, H, W, 2] in pixels and `valid` float32 [B, H, W]; eval batches
add `mask` float32 [B] (0 for padding examples).

Metrics:
- `epe`: average end-point error |pred - gt| in pixels over the valid pixels
  of each example, averaged over examples (for KITTI this is the number RAFT
  and the KITTI devkit report; Sintel frames all have one size, so it is also
  the mean over all pixels). Benchmarks add `epe_all_pixels`, pooled over
  every valid pixel.
- `zero_flow_epe`: the same for a prediction of zero flow, i.e. mean |gt|.
- `fl_all` (KITTI): percentage of valid pixels whose error exceeds both 3 px
  and 5% of the true flow's length, over all pixels of all images.
- `px1`: fraction of valid pixels with an error below one pixel.
"""

import collections
import concurrent.futures
import functools
import os
import time
from collections.abc import Callable
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import checkpointing
from experiments import metrics_writer
from experiments import parallel
from experiments import runs
from experiments import trainer
from experiments.optical_flow import augment
from experiments.optical_flow import datasets
from perceiver_io import flow_tiling
from perceiver_io import models

BENCHMARKS = ('sintel_clean', 'sintel_final', 'kitti')


def build_model(config: ml_collections.ConfigDict) -> models.Model:
  """The flow Perceiver at `config.model` sizes (a `models.get_config`)."""
  return models.build(models.OPTICAL_FLOW, config.model)


def to_model_frames(frames):
  """[..., 3] frames with values in [0, 255] -> float32 in [-1, 1]."""
  return np.asarray(frames, np.float32) * (2.0 / 255.0) - 1.0


# --- Losses and metrics ---


def end_point_error(pred, target):
  """|pred - target| over the last axis: [..., 2] -> [...]."""
  return jnp.sqrt(jnp.sum(jnp.square(pred - target), axis=-1))


def _masked_mean(x, valid):
  """Mean of [B, H, W] `x` over valid pixels of each example -> [B]."""
  total = jnp.sum(x * valid, axis=(1, 2))
  return total / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1.0)


def make_loss_fn(model):
  """The `Task.loss_fn`: average end-point error over valid pixels.

  EPE is not differentiable where it is 0; a tiny epsilon under the root keeps
  its gradient finite there.
  """

  def loss_fn(params, state, batch, rng, is_training):
    flow, state = model.apply(
      params, state, rng, is_training=is_training, frames=batch['frames']
    )
    valid = batch['valid']
    diff = flow - batch['flow']
    epe = jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + 1e-12)
    loss = jnp.sum(epe * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    zero = jnp.sum(end_point_error(0.0, batch['flow']) * valid) / jnp.maximum(
      jnp.sum(valid), 1.0
    )
    return loss, ({'epe': loss, 'zero_flow_epe': zero}, state)

  return loss_fn


def make_eval_fn(model):
  """The `Task.eval_fn`: per-example EPE sums over real (mask 1) examples."""

  def eval_fn(params, state, batch):
    flow, _ = model.apply(
      params, state, None, is_training=False, frames=batch['frames']
    )
    valid, mask = batch['valid'], batch['mask']
    epe = end_point_error(flow, batch['flow'])
    zero = end_point_error(0.0, batch['flow'])
    return {
      'epe': jnp.sum(_masked_mean(epe, valid) * mask),
      'zero_flow_epe': jnp.sum(_masked_mean(zero, valid) * mask),
      'px1': jnp.sum(
        _masked_mean((epe < 1.0).astype(jnp.float32), valid) * mask
      ),
      'count': jnp.sum(mask),
    }

  return eval_fn


# --- Data ---


def _model_batch(examples):
  """Stacks augmented examples (frames in [0, 255]) into a model batch."""
  return {
    'frames': to_model_frames(np.stack([e['frames'] for e in examples])),
    'flow': np.stack([e['flow'] for e in examples]).astype(np.float32),
    'valid': np.stack([e['valid'] for e in examples]).astype(np.float32),
  }


def prefetched(
  make_batch: Callable[[int], dict], start_step: int, depth: int = 2
) -> Iterator[dict]:
  """Yields make_batch(start_step), make_batch(start_step + 1), ... in order,
  computing the next `depth` batches in a background thread."""
  executor = concurrent.futures.ThreadPoolExecutor(1)
  pending = collections.deque()
  step = start_step
  try:
    while True:
      while len(pending) < depth:
        pending.append(executor.submit(make_batch, step))
        step += 1
      yield pending.popleft().result()
  finally:
    executor.shutdown(wait=False, cancel_futures=True)


def synthetic_train_batches(generator, batch_size, seed, start_step):
  """Endless synthetic batches; batch `s` depends only on (seed, s)."""
  rows = parallel.process_slice(batch_size)

  def make_batch(step):
    pairs = [
      generator.sample(np.random.default_rng([seed, step, i]))
      for i in range(rows.start, rows.stop)
    ]
    return _model_batch(pairs)

  return prefetched(make_batch, start_step)


def dataset_train_batches(
  examples, batch_size, seed, start_step, augment_kwargs, num_workers=8
):
  """Endless augmented batches from a list of `FlowExample`s.

  Global row i of step s is entry (s * batch_size + i) mod N of a fresh
  permutation for each epoch (seeded by (seed, epoch)), augmented with the
  generator seeded by (seed, s, i): batch s depends only on (seed, s), so
  resumption is exact.
  """
  rows = parallel.process_slice(batch_size)
  pool = concurrent.futures.ThreadPoolExecutor(num_workers)
  num = len(examples)

  @functools.lru_cache(maxsize=4)
  def permutation(epoch):
    return np.random.default_rng([seed, epoch]).permutation(num)

  def one(step, i):
    epoch, offset = divmod(step * batch_size + i, num)
    example = datasets.load_example(examples[permutation(epoch)[offset]])
    rng = np.random.default_rng([seed, step, i])
    return augment.augment(example, rng, **augment_kwargs)

  def make_batch(step):
    return _model_batch(
      list(pool.map(lambda i: one(step, i), range(rows.start, rows.stop)))
    )

  return prefetched(make_batch, start_step)


def center_crop(example, size):
  """Crops the middle `size` of an example; smaller frames are padded by
  repeating their border, and the padding is marked not valid."""
  height, width = example['flow'].shape[:2]
  h, w = size
  top, left = max(0, (height - h) // 2), max(0, (width - w) // 2)
  window = dict(example)
  window['frames'] = example['frames'][:, top : top + h, left : left + w]
  window['flow'] = example['flow'][top : top + h, left : left + w]
  window['valid'] = example['valid'][top : top + h, left : left + w]
  # The window is at most `size`, so the crop has one position (after
  # padding); the generator draws nothing that matters.
  return augment.random_crop(window, np.random.default_rng(0), size)


def padded_batches(pairs, batch_size):
  """Model batches of `pairs` (examples with frames in [0, 255]), the last
  one padded by repeating an example, with a `mask` of real rows
  (`parallel.padded_eval_indices`: this process's share)."""
  for index, mask in parallel.padded_eval_indices(len(pairs), batch_size):
    batch = _model_batch([pairs[i] for i in index.tolist()])
    batch['mask'] = mask
    yield batch


def synthetic_generator(config, split):
  data = config.data
  return datasets.SyntheticFlowPairs(
    crop_size=tuple(config.model.train_size),
    split=split,
    **data.synthetic.to_dict(),
  )


def synthetic_eval_pairs(config):
  """The fixed held-out synthetic pairs (drawn from the 'eval' photo band)."""
  generator = synthetic_generator(config, 'eval')
  return [
    generator.sample(np.random.default_rng([config.data.eval_seed, i]))
    for i in range(config.data.num_eval_pairs)
  ]


def dataset_eval_pairs(config):
  """Centre crops of the first `num_eval_pairs` pairs of `data.eval_name`."""
  data = config.data
  examples = datasets.list_examples(data.eval_name, data.eval_root)
  examples = examples[: data.num_eval_pairs]
  size = tuple(config.model.train_size)
  return [center_crop(datasets.load_example(e), size) for e in examples]


# --- The task ---


def build_task(config: ml_collections.ConfigDict) -> trainer.Task:
  """The optical-flow `Task` for `config.data.name`."""
  model = build_model(config)
  data = config.data
  height, width = config.model.train_size
  init_batch = {'frames': np.zeros((1, 2, height, width, 3), np.float32)}
  eval_batch_size = config.get('eval_batch_size') or config.batch_size
  if data.name == 'synthetic':
    generator = synthetic_generator(config, 'train')
    train_batches = functools.partial(
      synthetic_train_batches, generator, config.batch_size, config.seed
    )
    num_train_examples = None
  else:
    examples = datasets.list_examples(data.name, data.root)
    augment_kwargs = dict(data.augment.to_dict(), crop_size=(height, width))
    train_batches = functools.partial(
      dataset_train_batches,
      examples,
      config.batch_size,
      config.seed,
      augment_kwargs=augment_kwargs,
      num_workers=data.num_workers,
    )
    num_train_examples = len(examples)

  eval_batches = None
  if data.eval_name:
    cache = []

    def eval_batches():
      if not cache:  # Read or draw the eval pairs once per run.
        cache.extend(
          synthetic_eval_pairs(config)
          if data.eval_name == 'synthetic'
          else dataset_eval_pairs(config)
        )
      return padded_batches(cache, eval_batch_size)

  return trainer.Task(
    model=model,
    init_batch=init_batch,
    train_batches=train_batches,
    loss_fn=make_loss_fn(model),
    eval_batches=eval_batches,
    eval_fn=make_eval_fn(model) if eval_batches else None,
    num_train_examples=num_train_examples,
  )


# --- Benchmarks: full frames, tiled ---


def frame_metrics(pred, flow, valid):
  """Per-frame sums for the benchmark metrics (numpy)."""
  epe = np.sqrt(np.sum(np.square(pred - flow), axis=-1))
  magnitude = np.sqrt(np.sum(np.square(flow), axis=-1))
  outlier = (epe > 3.0) & (epe > 0.05 * magnitude)
  num_valid = max(int(valid.sum()), 1)
  return {
    'epe_sum': float(epe[valid].sum()),
    'zero_sum': float(magnitude[valid].sum()),
    'outliers': int(outlier[valid].sum()),
    'px1': int((epe[valid] < 1.0).sum()),
    'num_valid': int(valid.sum()),
    'epe_image': float(epe[valid].sum()) / num_valid,
    'zero_image': float(magnitude[valid].sum()) / num_valid,
  }


def evaluate_dataset(
  examples, flow_fn, tile_size, *, min_overlap, tile_batch_size, log_every=50
):
  """Tiled inference over `examples`; returns the benchmark metrics."""
  sums = collections.defaultdict(float)
  start = time.monotonic()
  for i, example in enumerate(examples):
    item = datasets.load_example(example)
    frames = to_model_frames(item['frames'])
    pred = flow_tiling.compute_flow(
      frames,
      flow_fn,
      tile_size=tile_size,
      min_overlap=min_overlap,
      tile_batch_size=tile_batch_size,
    )
    for key, value in frame_metrics(pred, item['flow'], item['valid']).items():
      sums[key] += value
    if (i + 1) % log_every == 0 or i + 1 == len(examples):
      rate = (i + 1) / (time.monotonic() - start)
      logging.info(
        '%d/%d frames | epe %.4f | %.2f frames/s | ETA %s',
        i + 1,
        len(examples),
        sums['epe_sum'] / max(sums['num_valid'], 1),
        rate,
        metrics_writer.format_duration((len(examples) - i - 1) / rate),
      )
  n = len(examples)
  pixels = max(sums['num_valid'], 1)
  return {
    'epe': sums['epe_image'] / n,
    'epe_all_pixels': sums['epe_sum'] / pixels,
    'zero_flow_epe': sums['zero_image'] / n,
    'fl_all': 100.0 * sums['outliers'] / pixels,
    'px1': sums['px1'] / pixels,
    'count': n,
  }


def benchmark_examples(config, name):
  """The evaluation pairs of benchmark `name` (limited by `max_examples`)."""
  cfg = config.eval
  if name in ('sintel_clean', 'sintel_final'):
    if not cfg.sintel_root:
      raise ValueError(f'{name} needs --config.eval.sintel_root.')
    examples = datasets.sintel_examples(
      cfg.sintel_root, pass_name=name.split('_')[1]
    )
  elif name == 'kitti':
    if not cfg.kitti_root:
      raise ValueError('kitti needs --config.eval.kitti_root.')
    examples = datasets.kitti_examples(cfg.kitti_root)
  else:
    raise ValueError(f'Unknown benchmark {name!r}; use some of {BENCHMARKS}.')
  if cfg.max_examples:
    examples = examples[: cfg.max_examples]
  return examples


def load_eval_params(config, workdir, model):
  """Params from the workdir's latest checkpoint, else `config.init_from`.

  Returns:
    (params, state, step) where step is the checkpoint step (0 for a file).
  """
  if checkpointing.is_checkpoint_dir(workdir):
    weights = runs.load_weights(workdir)
  elif config.init_from:
    weights = runs.load_weights(config.init_from)
  else:
    raise ValueError(
      'Benchmark evaluation needs weights: a checkpoint in the workdir or '
      '--config.init_from (our workdir or a released .pystate/.npz).'
    )
  params, state = weights.params, weights.state
  step = 0 if weights.step is None else weights.step
  height, width = config.model.train_size
  frames = jnp.zeros((1, 2, height, width, 3), jnp.float32)
  abstract_params, abstract_state = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), frames=frames)
  )
  checkpointing.check_tree_matches(
    abstract_params, params, source=weights.source
  )
  if not jax.tree.leaves(abstract_state):
    state = abstract_state
  return params, state, step


def run_benchmarks(config, workdir):
  """Evaluates on `config.eval.benchmarks`; writes `eval/<name>/<metric>`."""
  model = build_model(config)
  params, state, step = load_eval_params(config, workdir, model)
  flow_fn = flow_tiling.make_flow_fn(model, params, state)
  results = {}
  for name in config.eval.benchmarks:
    examples = benchmark_examples(config, name)
    logging.info('Evaluating %s on %d frame pairs.', name, len(examples))
    metrics = evaluate_dataset(
      examples,
      flow_fn,
      tuple(config.model.train_size),
      min_overlap=config.eval.min_overlap,
      tile_batch_size=config.eval.tile_batch_size,
    )
    results.update({f'eval/{name}/{k}': float(v) for k, v in metrics.items()})
    logging.info('%s: %s', name, metrics)
  writer = metrics_writer.MetricsWriter(workdir)
  writer.write(step, results)
  writer.close()
  return results


def run(config, workdir):
  """Trains and/or evaluates as `config.mode` and `config.eval` say."""
  # Orbax needs absolute checkpoint paths.
  workdir = os.path.abspath(workdir)
  if config.mode == 'eval' and config.eval.benchmarks:
    trainer.quiet_library_logs()
    return run_benchmarks(config, workdir)
  final = trainer.run_main(config, workdir, build_task)
  if config.mode == 'train' and config.eval.benchmark_after_training:
    final.update(run_benchmarks(config, workdir))
  return final
