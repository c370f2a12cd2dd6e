"""`config.runtime` reaches every attention layer of every architecture.

Each test sets one field of the runtime section once and traces a small model
of each architecture (the parity cases' sizes) with spies on the attention
kernels of `perceiver_io.ops`: which kernel each layer ran, in which dtype,
with which block sizes, and how often the encoder's layers were traced.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import parity_test
from perceiver_io import models
from perceiver_io import runtime as runtime_lib
from perceiver_io.ops import chunked
from perceiver_io.ops import dot_product
from perceiver_io.ops import einsum
from perceiver_io.ops import grid

CASES = dict((name, case) for case, name in parity_test.CASES)
GRID_ARCHITECTURES = (
  models.IMAGENET_FOURIER,
  models.IMAGENET_CONV,
  models.OPTICAL_FLOW,
)


@functools.cache
def _case(name):
  description, _, _, inputs, _ = parity_test.load_case(CASES[name])
  return description, parity_test.model_inputs(name, inputs)


def small_config(name, **runtime):
  """The parity case's config of `name`, with `runtime` fields set."""
  description, _ = _case(name)
  config = parity_test.config_for_case(name, description)
  config.runtime.update(runtime)
  return config


class _Spy:
  """Records the kernel calls of `ops.attend` while a model traces."""

  KERNELS = (
    ('einsum', einsum, 'attend'),
    ('dot_product', dot_product, 'attend'),
    ('chunked', chunked, 'attend'),
    ('projected', chunked, 'attend_projected'),
    ('grid', grid, 'attend'),
  )

  def __init__(self, test):
    self.calls = []
    for kernel, module, attr in self.KERNELS:
      original = getattr(module, attr)
      test.enter_context(
        absltest.mock.patch.object(
          module, attr, self._recorder(kernel, original)
        )
      )

  def _recorder(self, kernel, original):
    def record(q, *args, **kwargs):
      self.calls.append(
        dict(kernel=kernel, dtype=jnp.dtype(q.dtype), queries=q.shape[1])
        | {k: v for k, v in kwargs.items() if k.endswith('size')}
      )
      return original(q, *args, **kwargs)

    return record


def trace(test, name, config, *, grad=False):
  """(kernel calls, jaxpr text) of one forward (or gradient) trace."""
  _, inputs = _case(name)
  model = models.build(name, config)
  params, state = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), **inputs)
  )
  spy = _Spy(test)

  def forward(params, state):
    outputs, _ = model.apply(params, state, None, **inputs)
    return sum(jnp.sum(x) for x in jax.tree.leaves(outputs))

  fn = jax.grad(forward) if grad else forward
  jaxpr = jax.make_jaxpr(fn)(params, state)
  return spy.calls, str(jaxpr)


def num_layers(config):
  """Attention layers traced with the default runtime: the encoder's
  cross-attention, one block of latent layers, one decoder cross-attention."""
  return config.encoder.num_self_attends_per_block + 2


class RuntimeTest(parameterized.TestCase):
  @parameterized.product(
    name=models.ARCHITECTURES, impl=('einsum', 'dot_product', 'chunked')
  )
  def test_attention_impl_reaches_every_layer(self, name, impl):
    config = small_config(name, attention_impl=impl)
    calls, _ = trace(self, name, config)
    self.assertLen(calls, num_layers(config))
    kernels = {call['kernel'] for call in calls}
    if impl == 'chunked':
      self.assertContainsSubset(kernels, {'chunked', 'projected', 'grid'})
    else:
      self.assertEqual(kernels, {impl})

  @parameterized.parameters(*models.ARCHITECTURES)
  def test_compute_dtype_reaches_every_layer(self, name):
    for dtype in ('bfloat16', 'float32'):
      config = small_config(name, compute_dtype=dtype, attention_impl='einsum')
      calls, _ = trace(self, name, config)
      self.assertLen(calls, num_layers(config))
      self.assertEqual({call['dtype'] for call in calls}, {jnp.dtype(dtype)})

  @parameterized.parameters(*GRID_ARCHITECTURES)
  def test_grid_inputs(self, name):
    for grid_inputs in (True, False):
      config = small_config(name, grid_inputs=grid_inputs)
      calls, _ = trace(self, name, config)
      kernels = [call['kernel'] for call in calls]
      self.assertEqual(kernels.count('grid'), int(grid_inputs), kernels)

  def test_scan_blocks_and_scan_layers(self):
    name = models.IMAGENET_LEARNED
    traced = {}
    for scan_blocks, scan_layers in (
      (True, False),
      (False, False),
      (True, True),
    ):
      config = small_config(
        name, scan_blocks=scan_blocks, scan_layers=scan_layers
      )
      config.encoder.num_blocks = 2
      config.encoder.num_self_attends_per_block = 3
      calls, jaxpr = trace(self, name, config)
      traced[scan_blocks, scan_layers] = len(calls)
      self.assertEqual('scan[' in jaxpr, scan_blocks or scan_layers)
    # Cross-attention + decoder + the latent layers traced: one block (3),
    # both blocks (6), or one layer.
    self.assertEqual(
      traced, {(True, False): 5, (False, False): 8, (True, True): 3}
    )

  @parameterized.parameters('remat_blocks', 'remat_layers')
  def test_remat(self, field):
    name = models.IMAGENET_LEARNED
    counts = []
    for on in (False, True):
      config = small_config(name, **{field: on})
      config.encoder.num_blocks = 2
      _, jaxpr = trace(self, name, config, grad=True)
      counts.append(jaxpr.count('remat2[') + jaxpr.count('checkpoint['))
    self.assertEqual(counts[0], 0)
    self.assertGreater(counts[1], 0)

  def test_query_chunk_size(self):
    name = models.LANGUAGE
    _, inputs = _case(name)
    seq_len = inputs['inputs'].shape[1]
    config = small_config(name, query_chunk_size=3, attention_impl='einsum')
    calls, _ = trace(self, name, config)
    decoder = calls[-1]  # The decoder's layer, traced for one chunk.
    self.assertLessEqual(decoder['queries'], 3)
    self.assertLess(decoder['queries'], seq_len)
    config = small_config(name, query_chunk_size=None)
    calls, _ = trace(self, name, config)
    self.assertEqual(calls[-1]['queries'], seq_len)

  @parameterized.parameters(*models.ARCHITECTURES)
  def test_chunk_sizes(self, name):
    config = small_config(
      name,
      attention_impl='chunked',
      q_chunk_size=3,
      kv_chunk_size=5,
      grid_block_size=7,
    )
    calls, _ = trace(self, name, config)
    self.assertLen(calls, num_layers(config))
    for call in calls:
      if call['kernel'] == 'grid':
        self.assertEqual(call['block_size'], 7)
      else:
        self.assertEqual(call['q_chunk_size'], 3)
        self.assertEqual(call['kv_chunk_size'], 5)
    # The encoder's inputs are more than one key block: projected (or grid).
    self.assertIn(calls[0]['kernel'], ('projected', 'grid'))

  def test_results_agree_across_runtimes(self):
    name = models.IMAGENET_FOURIER
    _, params, state, inputs, expected = parity_test.load_case(CASES[name])
    inputs = parity_test.model_inputs(name, inputs)
    runtimes = (
      dict(attention_impl='einsum', grid_inputs=False, scan_blocks=False),
      dict(attention_impl='chunked', q_chunk_size=2, kv_chunk_size=3),
      dict(remat_blocks=True, remat_layers=True, scan_layers=True),
    )
    for fields in runtimes:
      model = models.build(name, small_config(name, **fields))
      outputs, _ = jax.jit(model.apply)(params, state, None, **inputs)
      parity_test.assert_matches(self, outputs, expected['logits'])


class ValidationTest(parameterized.TestCase):
  @parameterized.parameters(
    ('attention_impl', 'flash', 'runtime.attention_impl'),
    ('compute_dtype', 'float64', 'runtime.compute_dtype'),
    ('scan_blocks', 1, 'runtime.scan_blocks'),
    ('q_chunk_size', 0, 'runtime.q_chunk_size'),
    ('query_chunk_size', -1, 'runtime.query_chunk_size'),
  )
  def test_bad_values_are_refused_by_name(self, field, value, message):
    with self.assertRaisesRegex(ValueError, message):
      runtime_lib.Runtime(**{field: value})
    config = models.get_config(models.LANGUAGE)
    try:
      config.runtime[field] = value
    except TypeError as e:  # ConfigDict's own type check.
      self.assertIn(field, str(e))
      return
    with self.assertRaisesRegex(ValueError, message):
      models.build(models.LANGUAGE, config)

  def test_unknown_field(self):
    config = models.get_config(models.LANGUAGE)
    config.runtime.attn_impl = 'einsum'
    with self.assertRaisesRegex(
      ValueError, r"Unknown runtime field.*'attn_impl'"
    ):
      models.build(models.LANGUAGE, config)
    with self.assertRaisesRegex(ValueError, r"Unknown runtime field.*'speed'"):
      runtime_lib.from_config({'speed': 1})

  @parameterized.parameters(
    ('encoder', 'attention_impl', 'einsum'),
    ('encoder', 'remat_blocks', True),
    ('decoder', 'attention_impl', 'einsum'),
    ('input_preprocessor', 'grid_inputs', False),
  )
  def test_a_runtime_field_in_another_section_names_the_move(
    self, section, field, value
  ):
    name = models.IMAGENET_FOURIER
    config = models.get_config(name)
    config[section][field] = value
    with self.assertRaisesRegex(
      ValueError, rf'config\.{section}\.{field}.*config\.runtime\.{field}'
    ):
      models.build(name, config)

  def test_every_architecture_has_the_default_runtime(self):
    for name in models.ARCHITECTURES:
      self.assertEqual(
        runtime_lib.from_config(models.get_config(name).runtime),
        runtime_lib.Runtime(),
      )
    self.assertEqual(
      runtime_lib.config().to_dict().keys(), set(runtime_lib.FIELDS)
    )

  def test_outputs_are_float32_in_bf16(self):
    name = models.LANGUAGE
    _, inputs = _case(name)
    model = models.build(name, small_config(name, compute_dtype='bfloat16'))
    params, state = model.init(jax.random.PRNGKey(0), **inputs)
    outputs, _ = jax.jit(model.apply)(params, state, None, **inputs)
    self.assertEqual(outputs.dtype, np.float32)


if __name__ == '__main__':
  absltest.main()
