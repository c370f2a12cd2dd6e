"""One implementation's figures, measured inside one process.

`run(spec)` compiles, warms up and times the forward and the train step of
the workload `spec` describes, and reads the peak memory of each: the
process's peak RSS on CPU (reset before the timed calls, so compilation is
not counted; it includes the parameters, optimizer state, code and runtime
that stay resident), or the allocator's peak on an accelerator.
"""

import gc
import statistics
import sys
import time

import jax

from benchmarks import measure
from benchmarks import torch_models
from benchmarks import workloads


def _progress(spec, stage):
  """One line on stderr: run.py --device streams it, so a worker that runs
  out of time still shows which variant and stage it was in."""
  print(
    f'[{time.strftime("%H:%M:%S")}]'
    f' {spec.get("experiment_config") or spec.get("arch")}'
    f' {spec.get("compute_dtype") or "float32"}'
    f' {spec.get("attention_impl")}{spec.get("variant_label", "")} {stage}',
    file=sys.stderr,
    flush=True,
  )


def _flops_per_example(spec):
  """Analytic matmul FLOPs of one example's forward (reference formulation)."""
  spec = dict(spec, impl='straightforward', batch_size=1, compute_dtype=None)
  name, config = workloads.model_config(spec)
  from perceiver_io.testing import reference

  model = reference.build(name, config)
  inputs = workloads.random_inputs(name, config, 1)
  params, state = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), **inputs)
  )
  return measure.forward_flops(
    lambda p, s: model.apply(p, s, None, **inputs)[0], params, state
  )


def _peak_dtype(spec):
  import jax.numpy as jnp

  return (
    jnp.bfloat16 if spec.get('compute_dtype') == 'bfloat16' else (jnp.float32)
  )


def _measure(spec, mode, call, compile_s, flops, peak_gflops, compiled=None):
  gc.collect()
  jax.block_until_ready(call())  # Warm-up, after compilation.
  measure.reset_peak_rss()
  median, times = measure.time_call(call, spec['repeats'], warmup=0)
  peak = measure.device_peak_bytes()
  if peak is None:
    peak = measure.peak_rss_bytes()
  elif compiled is not None:
    # The allocator's peak only grows within a process: on an accelerator
    # report XLA's account of this function's buffers instead.
    buffers = measure.xla_memory(compiled)
    if buffers:
      peak = buffers['arguments'] + buffers['outputs'] + buffers['temp']
  batch = spec['batch_size']
  flops_per_example = flops * (3 if mode == 'train' else 1)
  achieved = flops_per_example * batch / median / 1e9
  return dict(
    spec,
    mode=mode,
    median_s=median,
    times_s=times,
    examples_per_s=batch / median,
    peak_bytes=peak,
    compile_s=compile_s,
    gflop_per_example=flops_per_example / 1e9,
    achieved_gflops=achieved,
    peak_gflops=peak_gflops,
    fraction_of_peak=achieved / peak_gflops,
    device=str(jax.devices()[0].device_kind),
    platform=jax.default_backend(),
  )


def run(spec):
  """Measures `spec` (each of its `variants`, if any); yields one dict per
  mode as soon as it is measured."""
  if spec.get('variants'):
    _progress(spec, 'counting FLOPs')
    flops = _flops_per_example(spec)
    for compute_dtype, attention_impl, own_overrides in spec['variants']:
      variant = dict(
        spec,
        compute_dtype=compute_dtype,
        attention_impl=attention_impl,
        overrides={**spec['overrides'], **own_overrides},
        variant_label=''.join(f' {k}={v}' for k, v in own_overrides.items()),
        variants=None,
        flops_per_example=flops,
      )
      try:
        yield from run(variant)
      except Exception as e:  # pylint: disable=broad-except
        # One variant that does not fit must not lose the others.
        yield dict(variant, error=f'{type(e).__name__}: {e}'[:300])
      gc.collect()
    return
  flops = spec.get('flops_per_example') or _flops_per_example(spec)
  size = 2048 if jax.default_backend() == 'cpu' else 8192
  _progress(spec, 'measuring the matmul peak')
  peak_gflops = measure.matmul_peak_gflops(size=size, dtype=_peak_dtype(spec))
  if spec['impl'] == 'pytorch':
    import torch

    bench = torch_models.TorchBench(
      spec['arch'], spec['batch_size'], compute_dtype=spec.get('compute_dtype')
    )
    calls = {'forward': bench.forward, 'train': bench.train_step}
    for mode in spec['modes']:
      start = time.perf_counter()
      calls[mode]()  # PyTorch has nothing to compile: the first call.
      result = _measure(
        spec, mode, calls[mode], time.perf_counter() - start, flops, peak_gflops
      )
      # PyTorch's own matmul rate: "% peak" divides by XLA's, so that both
      # columns share one yardstick; this one says how fast PyTorch's
      # matrix products are on the same cores.
      torch_peak = torch_models.matmul_peak_gflops(
        size=size, compute_dtype=spec.get('compute_dtype')
      )
      result.update(
        num_params=bench.num_params,
        torch_threads=torch.get_num_threads(),
        torch_peak_gflops=torch_peak,
        fraction_of_torch_peak=result['achieved_gflops'] / torch_peak,
      )
      yield result
    return
  _progress(spec, 'building the model and its parameters')
  workload = workloads.build_workload(spec)
  for mode in spec['modes']:
    compile_fn, call = {
      'forward': (workload.compile_forward, workload.forward),
      'train': (workload.compile_train, workload.train_step),
    }[mode]
    _progress(spec, f'{mode}: compiling')
    start = time.perf_counter()
    compiled = compile_fn()
    compile_s = time.perf_counter() - start
    result = _measure(spec, mode, call, compile_s, flops, peak_gflops, compiled)
    result.update(
      num_params=workload.num_params, xla_memory=measure.xla_memory(compiled)
    )
    yield result


def run_interleaved(spec):
  """Times every impl of spec['impls'] in this one process, alternating.

  Each round calls every implementation once, in turn, and probes the matmul
  peak, so that load changes on a shared machine hit all of them alike. The
  per-round ratios to 'ours' are the robust figures. Memory is not measured
  here (the implementations share the process): use the per-impl workers.
  Yields one result per mode.
  """
  flops = _flops_per_example(spec)
  for mode in spec['modes']:
    calls = {}
    for impl in spec['impls']:
      # 'ours:chunked' is ours with another attention implementation,
      # 'ours:auto:bfloat16' also with another compute dtype.
      base_impl, attention_impl, compute_dtype = (impl.split(':') + ['', ''])[
        :3
      ]
      impl_spec = dict(
        spec,
        impl=base_impl,
        attention_impl=attention_impl or spec['attention_impl'],
        compute_dtype=compute_dtype or spec.get('compute_dtype'),
      )
      if impl == 'pytorch':
        bench = torch_models.TorchBench(
          spec['arch'],
          spec['batch_size'],
          compute_dtype=impl_spec['compute_dtype'],
        )
        calls[impl] = bench.forward if mode == 'forward' else bench.train_step
      else:
        workload = workloads.build_workload(impl_spec)
        if mode == 'forward':
          workload.compile_forward()
          calls[impl] = workload.forward
        else:
          workload.compile_train()
          calls[impl] = workload.train_step
      jax.block_until_ready(calls[impl]())  # Warm-up.
    times = {impl: [] for impl in calls}
    peaks = []
    for _ in range(spec['repeats']):
      peaks.append(measure.matmul_peak_gflops(repeats=3))
      for impl, call in calls.items():
        times[impl].append(measure.time_call(call, 1, warmup=0)[0])
    flops_per_example = flops * (3 if mode == 'train' else 1)
    batch = spec['batch_size']
    medians = {impl: statistics.median(t) for impl, t in times.items()}
    peak = statistics.median(peaks)
    ratios = {}
    reference = next((i for i in times if i.startswith('ours')), None)
    if reference:
      for impl, t in times.items():
        ratios[impl] = statistics.median(
          other / mine for other, mine in zip(t, times[reference], strict=True)
        )
    yield dict(
      spec,
      mode=mode,
      times_s=times,
      median_s=medians,
      ratio_to_ours=ratios,
      peak_gflops_per_round=peaks,
      peak_gflops=peak,
      gflop_per_example=flops_per_example / 1e9,
      fraction_of_peak={
        impl: flops_per_example * batch / m / 1e9 / peak
        for impl, m in medians.items()
      },
      examples_per_s={impl: batch / m for impl, m in medians.items()},
    )
    del calls
    gc.collect()
