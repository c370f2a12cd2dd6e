"""Tests of the six architectures at tiny sizes: shapes, masks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import models


def tiny_config(name):
  """A few-thousand-parameter version of a released architecture."""
  config = models.get_config(name)
  config.encoder.update(
    num_self_attends_per_block=2,
    num_blocks=2,
    z_index_dim=4,
    num_z_channels=16,
    num_self_attend_heads=2,
  )
  if name == models.LANGUAGE:
    config.update(d_model=8, max_seq_len=12)
    config.encoder.update(
      qk_channels=8, v_channels=16, num_cross_attend_heads=2
    )
    config.decoder.update(num_heads=2, qk_channels=8)
  elif name in models.IMAGENET_ARCHITECTURES:
    config.image_size = (8, 8)
    config.decoder.update(
      num_classes=5,
      trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=16),
    )
    prep = config.input_preprocessor
    if prep.position_encoding_type == 'fourier':
      # max_resolution follows image_size: (8, 8), or (2, 2) after the conv
      # preprocessor's 4x downsampling.
      prep.fourier_position_encoding_kwargs.num_bands = 2
      if prep.prep_type == 'conv':
        prep.num_channels = 4
    else:
      prep.update(num_channels=4, project_pos_dim=4)
      prep.trainable_position_encoding_kwargs.num_channels = 4
  elif name == models.OPTICAL_FLOW:
    config.train_size = (6, 8)
    config.input_preprocessor.num_channels = 4
    for section in (config.input_preprocessor, config.decoder):
      section.fourier_position_encoding_kwargs.num_bands = 2
  else:
    config.update(
      num_frames=2, image_size=(8, 8), audio_samples=32, num_classes=3
    )
    for section in ('image_preprocessor', 'image_decoder'):
      config[section].fourier_position_encoding_kwargs.num_bands = 2
    for section in ('audio_preprocessor', 'audio_decoder'):
      config[section].fourier_position_encoding_kwargs.num_bands = 2
    config.audio_preprocessor.samples_per_patch = 8
    config.label_decoder.trainable_position_encoding_kwargs.num_channels = 8
    for section in ('decoder', 'image_decoder', 'audio_decoder'):
      config[section].output_num_channels = 8
  return config


def random_inputs(name, config, batch_size=2, seed=0):
  rng = np.random.RandomState(seed)
  inputs = models.example_inputs(name, config, batch_size)
  out = {}
  for key, value in inputs.items():
    if key == 'inputs':
      out[key] = rng.randint(6, 262, value.shape).astype(np.int32)
    elif value.dtype == np.float32:
      out[key] = rng.uniform(-1, 1, value.shape).astype(np.float32)
    else:
      out[key] = value
  return out


def init_and_apply(name, config, inputs):
  model = models.build(name, config)
  params, state = model.init(jax.random.PRNGKey(0), **inputs)
  outputs, _ = model.apply(params, state, None, **inputs)
  return model, params, state, outputs


class ArchitecturesTest(parameterized.TestCase):
  @parameterized.parameters(*models.ARCHITECTURES)
  def test_tiny_model_output_shapes(self, name):
    config = tiny_config(name)
    inputs = random_inputs(name, config)
    _, params, _, outputs = init_and_apply(name, config, inputs)
    shapes = jax.tree.map(jnp.shape, outputs)
    if name == models.LANGUAGE:
      self.assertEqual(shapes, (2, 12, 262))
    elif name in models.IMAGENET_ARCHITECTURES:
      self.assertEqual(shapes, (2, 5))
    elif name == models.OPTICAL_FLOW:
      self.assertEqual(shapes, (2, 6, 8, 2))
    else:
      self.assertEqual(
        shapes, {'image': (2, 16, 3), 'audio': (2, 16), 'label': (2, 3)}
      )
    for leaf in jax.tree.leaves(outputs):
      self.assertTrue(np.all(np.isfinite(leaf)))
    self.assertNotEmpty(params)

  @parameterized.parameters(*models.ARCHITECTURES)
  def test_gradients_reach_every_parameter(self, name):
    config = tiny_config(name)
    inputs = random_inputs(name, config)
    model = models.build(name, config)
    params, state = model.init(jax.random.PRNGKey(0), **inputs)
    # Zero-initialised output layers block every other gradient at init.
    params = jax.tree.map(lambda p: p + 0.1, params)

    def loss(params):
      out, _ = model.apply(params, state, None, is_training=True, **inputs)
      return sum(jnp.mean(jnp.square(x)) for x in jax.tree.leaves(out))

    grads = jax.jit(jax.grad(loss))(params)  # Compiled: eager is slower.
    no_grad = {
      f'{module}:{leaf}'
      for module, leaves in grads.items()
      for leaf, grad in leaves.items()
      if not np.any(np.abs(grad) > 0)
    }
    expected = set()
    if name == models.VIDEO_AUTOENCODING:
      # Image and audio are never masked (p=0) and the label always is (p=1),
      # so those mask tokens and the label's padding never reach the output.
      expected = {
        'multimodal_preprocessor/image_mask_token:pos_embs',
        'multimodal_preprocessor/audio_mask_token:pos_embs',
        'multimodal_preprocessor/label_padding:pos_embs',
      }
    grid_architectures = (
      models.IMAGENET_FOURIER,
      models.IMAGENET_CONV,
      models.OPTICAL_FLOW,
    )
    if name in grid_architectures and config.runtime.grid_inputs:
      # A key bias shifts all logits of a query alike, so its gradient is
      # exactly 0; `ops.grid` returns that 0 instead of rounding noise.
      expected.add('perceiver_encoder/~/cross_attention/attention/linear_1:b')
    self.assertEqual(no_grad, expected)

  def test_language_padding_does_not_leak(self):
    config = tiny_config(models.LANGUAGE)
    inputs = random_inputs(models.LANGUAGE, config, batch_size=1)
    inputs['input_mask'][:, 7:] = 0
    model, params, state, logits = init_and_apply(
      models.LANGUAGE, config, inputs
    )
    changed = dict(inputs, inputs=inputs['inputs'].copy())
    changed['inputs'][:, 7:] = 10  # Different bytes under the padding.
    new_logits, _ = model.apply(params, state, None, **changed)
    np.testing.assert_allclose(new_logits[:, :7], logits[:, :7], atol=1e-5)
    changed['inputs'][:, 3] = 11  # A real byte: the outputs must change.
    new_logits, _ = model.apply(params, state, None, **changed)
    self.assertGreater(np.max(np.abs(new_logits[:, :7] - logits[:, :7])), 1e-4)

  def test_language_shorter_sequences_use_first_query_rows(self):
    config = tiny_config(models.LANGUAGE)
    inputs = random_inputs(models.LANGUAGE, config, batch_size=1)
    inputs['input_mask'][:, 5:] = 0
    model, params, state, logits = init_and_apply(
      models.LANGUAGE, config, inputs
    )
    short = {k: v[:, :5] for k, v in inputs.items()}
    short_logits, _ = model.apply(params, state, None, **short)
    np.testing.assert_allclose(short_logits, logits[:, :5], atol=1e-5)

  def test_video_subsampled_image_points_match_full_decode(self):
    name = models.VIDEO_AUTOENCODING
    config = tiny_config(name)
    inputs = random_inputs(name, config)
    full = dict(inputs, image_points=np.arange(128), audio_points=np.arange(4))
    model, params, state, outputs = init_and_apply(name, config, full)
    some = dict(
      inputs, image_points=np.array([3, 77, 100]), audio_points=np.array([1, 2])
    )
    sub, _ = model.apply(params, state, None, **some)
    # Same points, same outputs: decoding queries are independent.
    np.testing.assert_allclose(
      sub['image'], outputs['image'][:, [3, 77, 100]], atol=1e-5
    )
    np.testing.assert_allclose(
      sub['audio'],
      outputs['audio'].reshape(2, 4, 8)[:, 1:3].reshape(2, 16),
      atol=1e-5,
    )
    np.testing.assert_allclose(sub['label'], outputs['label'], atol=1e-5)

  def test_video_random_masking_needs_rng(self):
    name = models.VIDEO_AUTOENCODING
    config = tiny_config(name)
    config.input_preprocessor.mask_probs.image = 0.5
    inputs = random_inputs(name, config)
    model = models.build(name, config)
    params, state = model.init(jax.random.PRNGKey(0), **inputs)
    out_a, _ = model.apply(params, state, jax.random.PRNGKey(1), **inputs)
    out_b, _ = model.apply(params, state, jax.random.PRNGKey(2), **inputs)
    self.assertGreater(np.max(np.abs(out_a['image'] - out_b['image'])), 1e-6)


class ErrorsTest(parameterized.TestCase):
  def _raises(self, name, config, inputs, regex):
    with self.assertRaisesRegex(ValueError, regex):
      models.build(name, config).init(jax.random.PRNGKey(0), **inputs)

  def test_unknown_architecture(self):
    with self.assertRaisesRegex(ValueError, 'Unknown architecture'):
      models.get_config('resnet')

  def test_unknown_config_key_names_the_section(self):
    config = tiny_config(models.IMAGENET_FOURIER)
    config.encoder.num_latents = 8
    inputs = random_inputs(models.IMAGENET_FOURIER, config)
    self._raises(
      models.IMAGENET_FOURIER,
      config,
      inputs,
      r'config.encoder does not fit PerceiverEncoder.*num_latents',
    )

  def test_heads_must_divide_channels(self):
    config = tiny_config(models.IMAGENET_FOURIER)
    config.encoder.num_self_attend_heads = 3
    inputs = random_inputs(models.IMAGENET_FOURIER, config)
    self._raises(
      models.IMAGENET_FOURIER,
      config,
      inputs,
      r'num_z_channels \(16\) must be divisible by '
      r'num_self_attend_heads \(3\)',
    )

  def test_unknown_prep_type(self):
    config = tiny_config(models.IMAGENET_FOURIER)
    config.input_preprocessor.prep_type = 'resnet'
    inputs = random_inputs(models.IMAGENET_FOURIER, config)
    self._raises(
      models.IMAGENET_FOURIER, config, inputs, "Unknown prep_type 'resnet'"
    )

  def test_conv_downsample_must_be_power_of_four(self):
    config = tiny_config(models.IMAGENET_CONV)
    config.input_preprocessor.spatial_downsample = 2
    inputs = random_inputs(models.IMAGENET_CONV, config)
    self._raises(models.IMAGENET_CONV, config, inputs, 'power of 4')

  def test_wrong_image_rank_and_dtype(self):
    name = models.IMAGENET_FOURIER
    config = tiny_config(name)
    self._raises(
      name,
      config,
      {'images': np.zeros((2, 8, 8), np.float32)},
      r'\[B, H, W, C\]',
    )
    self._raises(
      name,
      config,
      {'images': np.zeros((2, 8, 8, 3), np.int32)},
      'floating point',
    )

  def test_language_inputs_must_be_integer_ids(self):
    name = models.LANGUAGE
    config = tiny_config(name)
    inputs = random_inputs(name, config)
    self._raises(
      name,
      config,
      dict(inputs, inputs=inputs['inputs'] * 1.0),
      'integer token ids',
    )
    self._raises(
      name, config, dict(inputs, input_mask=np.ones((2, 5))), 'input_mask'
    )
    too_long = {k: np.concatenate([v, v], axis=1) for k, v in inputs.items()}
    self._raises(name, config, too_long, 'exceeds max_seq_len')

  def test_flow_frame_size(self):
    name = models.OPTICAL_FLOW
    config = tiny_config(name)
    self._raises(
      name,
      config,
      {'frames': np.zeros((1, 2, 6, 10, 3), np.float32)},
      r'takes \(6, 8\) frames',
    )

  def test_unknown_input_name(self):
    name = models.IMAGENET_FOURIER
    config = tiny_config(name)
    with self.assertRaisesRegex(ValueError, "unknown \\['image'\\]"):
      models.build(name, config).init(
        None, image=np.zeros((1, 8, 8, 3), np.float32)
      )


class ResolveSizesTest(parameterized.TestCase):
  @parameterized.parameters(
    (
      models.IMAGENET_FOURIER,
      {'input_preprocessor': (224, 224)},
    ),
    (models.IMAGENET_CONV, {'input_preprocessor': (56, 56)}),
    (
      models.OPTICAL_FLOW,
      {'input_preprocessor': (368, 496), 'decoder': (368, 496)},
    ),
    (
      models.VIDEO_AUTOENCODING,
      {
        'image_preprocessor': (16, 56, 56),
        'image_decoder': (16, 56, 56),
        'audio_preprocessor': (30720,),
        'audio_decoder': (30720,),
      },
    ),
  )
  def test_released_configs_resolve_to_the_released_values(self, name, want):
    config = models.get_config(name)
    resolved, derived = models.resolve_sizes(name, config)
    key = '{}.fourier_position_encoding_kwargs.max_resolution'
    self.assertEqual(derived, {key.format(s): v for s, v in want.items()})
    for section, value in want.items():
      self.assertEqual(
        tuple(
          resolved[section].fourier_position_encoding_kwargs.max_resolution
        ),
        value,
      )
      # The caller's config is not modified.
      self.assertIsNone(
        config[section].fourier_position_encoding_kwargs.max_resolution
      )

  def test_sizes_follow_image_and_train_size(self):
    config = models.get_config(models.IMAGENET_FOURIER)
    config.image_size = (32, 48)
    resolved, _ = models.resolve_sizes(models.IMAGENET_FOURIER, config)
    self.assertEqual(
      resolved.input_preprocessor.fourier_position_encoding_kwargs.max_resolution,
      (32, 48),
    )
    config = models.get_config(models.OPTICAL_FLOW)
    config.train_size = (40, 64)
    resolved, _ = models.resolve_sizes(models.OPTICAL_FLOW, config)
    for section in ('input_preprocessor', 'decoder'):
      self.assertEqual(
        resolved[section].fourier_position_encoding_kwargs.max_resolution,
        (40, 64),
      )

  def test_derived_frequencies_change_the_outputs(self):
    # The same parameters at max_resolution (8, 8) (derived) and (224, 224)
    # (the old hand-copied default) give different logits.
    name = models.IMAGENET_FOURIER
    config = tiny_config(name)
    inputs = random_inputs(name, config)
    params, state = models.build(name, config).init(
      jax.random.PRNGKey(0), **inputs
    )
    derived, _ = models.build(name, config).apply(params, state, None, **inputs)
    stale = tiny_config(name)
    stale.input_preprocessor.fourier_position_encoding_kwargs.max_resolution = (
      224,
      224,
    )
    explicit, _ = models.build(name, stale).apply(params, state, None, **inputs)
    self.assertGreater(float(jnp.max(jnp.abs(derived - explicit))), 1e-4)

  def test_explicit_values_are_kept(self):
    config = models.get_config(models.IMAGENET_FOURIER)
    config.image_size = (32, 32)
    config.input_preprocessor.fourier_position_encoding_kwargs.max_resolution = (
      224,
      224,
    )
    resolved, derived = models.resolve_sizes(models.IMAGENET_FOURIER, config)
    self.assertEqual(derived, {})
    self.assertEqual(
      tuple(
        resolved.input_preprocessor.fourier_position_encoding_kwargs.max_resolution
      ),
      (224, 224),
    )

  def test_indivisible_size_names_the_field(self):
    config = models.get_config(models.IMAGENET_CONV)
    config.image_size = (30, 32)
    with self.assertRaisesRegex(ValueError, r'config.image_size=\(30, 32\)'):
      models.resolve_sizes(models.IMAGENET_CONV, config)


if __name__ == '__main__':
  absltest.main()
