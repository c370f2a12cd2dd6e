"""Tests for experiments.multimodal_autoencoding: model, loss, eval, a run."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import preemption
from absl.testing import absltest

import safe_pickle_test
from configs import multimodal_autoencoding as config_lib
from experiments import metrics_writer
from experiments import trainer
from experiments.multimodal_autoencoding import data as task_data
from experiments.multimodal_autoencoding import model as model_lib
from experiments.multimodal_autoencoding import train

RELEASED_JSON = (
  pathlib.Path(__file__).resolve().parents[2]
  / 'testdata'
  / 'official_checkpoints'
  / 'video_autoencoding_checkpoint.json'
)


def tiny_config():
  return config_lib.get_config('local,tiny')


def paper_at_tiny_sizes():
  """The paper architecture on 2 frames of 16x16 and 64 audio samples: the
  parameter shapes do not depend on these sizes."""
  config = config_lib.get_config('paper')
  for section in (config.model, config.data):
    section.num_frames, section.image_size, section.audio_samples = (
      2,
      (16, 16),
      64,
    )
  config.data.source = 'digits'  # Labels 0..9 of the 700.
  config.data.train_image_points, config.data.train_audio_samples = 8, 32
  config.data.num_eval_examples = 2
  config.batch_size = config.eval_batch_size = 2
  config.eval.num_decode_chunks = 2
  # Compiles one of the 8 latent layers (the parameters are the same).
  config.model.runtime.scan_layers = True
  return config


def _inputs(config, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  m = config.model
  return dict(
    images=rng.random((batch, m.num_frames, *m.image_size, 3), np.float32),
    audio=rng.uniform(-1, 1, (batch, m.audio_samples, 1)).astype(np.float32),
    label=np.eye(m.num_classes, dtype=np.float32)[rng.integers(0, 10, batch)],
    label_mask=np.float32([0.0, 1.0])[:batch],
  )


def _shapes(tree):
  return {
    module: {name: list(np.shape(leaf)) for name, leaf in leaves.items()}
    for module, leaves in tree.items()
  }


class ModelTest(absltest.TestCase):
  def test_paper_config_has_the_released_parameters(self):
    config = paper_at_tiny_sizes()
    task = train.build_task(config)
    params, state = jax.eval_shape(
      lambda: task.model.init(jax.random.PRNGKey(0), **task.init_batch)
    )
    released = json.loads(RELEASED_JSON.read_text())
    self.assertEqual(_shapes(params), released['params'])
    self.assertEqual(_shapes(state), released['state'])
    self.assertEqual(config.model.encoder.z_index_dim, 784)
    self.assertEqual(
      round(train.compression(config_lib.get_config('paper'))['paper']), 91
    )
    for variant, latents in (('paper_176x', 392), ('paper_352x', 196)):
      self.assertEqual(
        config_lib.get_config(variant).model.encoder.z_index_dim, latents
      )

  def test_chunked_full_decoding_equals_unchunked(self):
    config = tiny_config()
    inputs = _inputs(config)
    one = model_lib.build_model(config.model, num_decode_chunks=1)
    three = model_lib.build_model(config.model, num_decode_chunks=3)
    params, state = one.init(jax.random.PRNGKey(0), **inputs)
    full, _ = jax.jit(lambda p: one.apply(p, state, None, **inputs))(params)
    chunked, _ = jax.jit(lambda p: three.apply(p, state, None, **inputs))(
      params
    )
    pixels = 2 * 24 * 24
    self.assertEqual(full['image'].shape, (2, pixels, 3))
    self.assertEqual(full['audio'].shape, (2, 128))
    for key in full:
      np.testing.assert_allclose(chunked[key], full[key], atol=1e-5)
    # Per-example points decode exactly those points of the full decoding.
    points = np.stack([np.arange(5), np.arange(100, 105)]).astype(np.int32)
    apoints = np.int32([[0, 3], [7, 1]])
    sub, _ = jax.jit(
      lambda p: one.apply(
        p, state, None, image_points=points, audio_points=apoints, **inputs
      )
    )(params)
    for b in range(2):
      np.testing.assert_allclose(
        sub['image'][b], full['image'][b, points[b]], atol=1e-5
      )
      audio = full['audio'][b].reshape(-1, 16)[apoints[b]].reshape(-1)
      np.testing.assert_allclose(sub['audio'][b], audio, atol=1e-5)

  def test_label_mask_hides_the_label(self):
    config = tiny_config()
    inputs = _inputs(config)
    model = model_lib.build_model(config.model)
    params, state = model.init(jax.random.PRNGKey(0), **inputs)
    other = dict(inputs, label=inputs['label'][::-1] * 0 + 0.5)
    a, _ = model.apply(params, state, None, **inputs)
    b, _ = model.apply(params, state, None, **other)
    # Example 1 is masked (same outputs whatever its label), example 0 not.
    np.testing.assert_allclose(a['label'][1], b['label'][1], atol=1e-6)
    self.assertGreater(
      float(jnp.abs(a['label'][0] - b['label'][0]).max()), 1e-6
    )


class LossAndMetricsTest(absltest.TestCase):
  def test_loss_weights_are_the_configs(self):
    config = tiny_config()
    task = train.build_task(config)
    batch = next(task.train_batches(0))
    params, state = task.model.init(jax.random.PRNGKey(0), **task.init_batch)
    losses = {}
    for name, weights in (
      ('video', (1.0, 0.0, 0.0, 0.0)),
      ('video_mse', (0.0, 1.0, 0.0, 0.0)),
      ('audio', (0.0, 0.0, 1.0, 0.0)),
      ('label', (0.0, 0.0, 0.0, 1.0)),
      ('all', (0.03, 2.0, 1.0, 1e-4)),
    ):
      loss_weights = config.loss
      (
        loss_weights.video,
        loss_weights.video_mse,
        loss_weights.audio,
        loss_weights.label,
      ) = weights
      loss, (metrics, _) = train.make_loss_fn(task.model, config)(
        params, state, batch, None, True
      )
      losses[name] = float(loss)
    self.assertAlmostEqual(losses['video'], float(metrics['video_l1']), 5)
    self.assertAlmostEqual(losses['video_mse'], float(metrics['video_mse']), 5)
    self.assertGreater(losses['video_mse'], 0.0)
    self.assertAlmostEqual(losses['audio'], float(metrics['audio_l1']), 5)
    self.assertAlmostEqual(losses['label'], float(metrics['label_ce']), 5)
    self.assertAlmostEqual(
      losses['all'],
      0.03 * losses['video']
      + 2.0 * losses['video_mse']
      + losses['audio']
      + 1e-4 * losses['label'],
      5,
    )

  def test_training_batches_mask_labels_and_subsample_points(self):
    config = tiny_config()
    config.batch_size = 200
    config.data.label_mask_prob = 0.5
    batch = next(train.build_task(config).train_batches(3))
    self.assertAlmostEqual(float(batch['label_mask'].mean()), 0.5, delta=0.08)
    self.assertEqual(batch['image_points'].shape, (200, 32))
    self.assertEqual(batch['audio_points'].shape, (200, 32 // 16))
    for row in batch['image_points'][:5]:
      self.assertLen(set(row.tolist()), 32)  # No repeats.
    self.assertFalse(np.array_equal(*batch['image_points'][:2]))  # Per example.
    self.assertLess(int(batch['image_points'].max()), 2 * 24 * 24)
    # Restartable: the batch of step 3 does not depend on where we start.
    again = next(
      task_data.train_batches(
        config.data, config.model, seed=0, batch_size=200, start_step=3
      )
    )
    np.testing.assert_array_equal(batch['images'], again['images'])
    config.data.label_mask_prob = 0.0
    batch = next(train.build_task(config).train_batches(0))
    self.assertEqual(float(batch['label_mask'].sum()), 0.0)
    # Eval clips always mask the label and use held-out digits.
    eval_set = task_data.eval_set(config.data)
    self.assertTrue(np.all(eval_set['label_mask'] == 1.0))

  def test_psnr_matches_hand_computation(self):
    target = np.zeros((1, 4), np.float32)
    pred = np.float32([[0.1, -0.1, 0.2, 0.0]])
    mse = (0.01 + 0.01 + 0.04 + 0.0) / 4  # 0.015
    expected = 10 * np.log10(1.0 / mse)  # 18.2391 dB at range 1
    got = train.psnr(jnp.mean((pred - target) ** 2, axis=1), 1.0)
    self.assertAlmostEqual(float(got[0]), expected, places=4)
    self.assertAlmostEqual(expected, 18.2391, places=3)
    got2 = train.psnr(jnp.float32([mse]), 2.0)  # Range 2: +6.0206 dB.
    self.assertAlmostEqual(float(got2[0]), expected + 20 * np.log10(2), 4)

  def test_eval_metrics_and_baselines(self):
    config = tiny_config()
    task = train.build_task(config)
    params, state = task.model.init(jax.random.PRNGKey(0), **task.init_batch)
    batches = list(task.eval_batches())
    self.assertEqual(float(sum(b['mask'].sum() for b in batches)), 6.0)
    video_mean, _, majority = task_data.train_statistics(config.data, 0)
    sums = jax.jit(task.eval_fn)(params, state, batches[0])
    batch = batches[0]
    mse = ((batch['images'] - video_mean) ** 2).mean(axis=(1, 2, 3, 4))
    expected = (10 * np.log10(1 / mse) * batch['mask']).sum()
    self.assertAlmostEqual(
      float(sums['video_psnr_mean_baseline']), expected, places=3
    )
    self.assertEqual(
      float(sums['label_top1_majority_baseline']),
      float(((batch['label'] == majority) * batch['mask']).sum()),
    )
    for key in ('video_psnr', 'audio_psnr', 'label_top1', 'count'):
      self.assertIn(key, sums)


class ConfigTest(absltest.TestCase):
  def test_every_variant_builds(self):
    for variant in config_lib.VARIANTS:
      for tiny in ('', ',tiny'):
        config = config_lib.get_config(variant + tiny)
        config_lib.validate(config)
    with self.assertRaisesRegex(ValueError, 'Unknown variant'):
      config_lib.get_config('huge')

  def test_sizes_that_do_not_divide_are_named(self):
    cases = (
      ('image_preprocessor.spatial_downsample', 'video patch size'),
      ('audio_preprocessor.samples_per_patch', 'audio patch size'),
      ('encoder.num_self_attend_heads', 'num_z_channels'),
    )
    for key, message in cases:
      config = tiny_config()
      section, field = key.split('.')
      config.model[section][field] = 5 if 'patch' in key else 3
      if 'downsample' in key:
        config.model[section][field] = 5
      with self.assertRaisesRegex(ValueError, message):
        config_lib.validate(config)
    config = tiny_config()
    config.data.train_audio_samples = 20
    with self.assertRaisesRegex(ValueError, 'train_audio_samples=20'):
      config_lib.validate(config)
    config = tiny_config()
    config.data.source = 'mp3s'
    with self.assertRaisesRegex(ValueError, "data.source 'mp3s'"):
      train.build_task(config)


class OutputPatchTest(absltest.TestCase):
  """Image queries that each decode a patch of pixels."""

  def test_patchify_groups_each_patch_and_unpatchify_inverts_it(self):
    video = np.arange(2 * 4 * 6 * 8 * 3, dtype=np.float32).reshape(
      2, 4, 6, 8, 3
    )
    patch = (2, 3, 2)
    patches = np.asarray(model_lib.patchify(video, patch))
    self.assertEqual(patches.shape, (2, 2 * 2 * 4, 12, 3))
    # Patch (i, j, k) of the [2, 2, 4] grid holds pixels t in 2i..2i+1,
    # y in 3j..3j+2, x in 2k..2k+1, in raster order.
    i, j, k = 1, 0, 3
    index = (i * 2 + j) * 4 + k
    expected = video[1, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3, 2 * k : 2 * k + 2]
    np.testing.assert_array_equal(patches[1, index], expected.reshape(12, 3))
    np.testing.assert_array_equal(
      model_lib.unpatchify(patches, (4, 6, 8), patch),
      video.reshape(2, -1, 3),
    )
    with self.assertRaisesRegex(ValueError, 'does not divide'):
      model_lib.patch_grid((4, 6, 8), (1, 4, 1))

  def test_patch_queries_decode_those_pixels_and_train_on_them(self):
    config = tiny_config()
    config.model.image_output_patch = (1, 2, 2)
    config.data.train_image_points = 16  # 4 queries of 2x2 pixels.
    config_lib.validate(config)
    inputs = _inputs(config)
    one = model_lib.build_model(config.model, num_decode_chunks=1)
    three = model_lib.build_model(config.model, num_decode_chunks=3)
    params, state = one.init(jax.random.PRNGKey(0), **inputs)
    self.assertEqual(
      params['projection_postprocessor/linear']['w'].shape[-1], 12
    )
    full, _ = jax.jit(lambda p: one.apply(p, state, None, **inputs))(params)
    chunked, _ = jax.jit(lambda p: three.apply(p, state, None, **inputs))(
      params
    )
    self.assertEqual(full['image'].shape, (2, 2 * 24 * 24, 3))
    for key in full:
      np.testing.assert_allclose(chunked[key], full[key], atol=1e-5)
    # Per-example patch points decode the pixels of those patches.
    task = train.build_task(config)
    batch = next(task.train_batches(0))
    points = batch['image_points']
    self.assertEqual(points.shape, (4, 4))
    self.assertLess(int(points.max()), 2 * 12 * 12)
    batch = {k: v[:2] for k, v in batch.items()}
    for key in ('images', 'audio', 'label_mask'):
      batch[key] = inputs[key]
    batch['label'] = np.argmax(inputs['label'], -1)
    sub, _ = jax.jit(
      lambda p: one.apply(
        p,
        state,
        None,
        **train.model_inputs(batch, config.model.num_classes),
      )
    )(params)
    self.assertEqual(sub['image'].shape, (2, 16, 3))
    whole = np.asarray(full['image']).reshape(2, 2, 24, 24, 3)
    pixels = np.asarray(model_lib.patchify(whole, (1, 2, 2)))
    targets = np.asarray(model_lib.patchify(batch['images'], (1, 2, 2)))
    for b in range(2):
      np.testing.assert_allclose(
        sub['image'][b], pixels[b, points[b]].reshape(16, 3), atol=1e-5
      )
    # The loss compares each decoded pixel with its own target pixel.
    config.loss.update(dict(video=0.0, video_mse=1.0, audio=0.0, label=0.0))
    loss, _ = train.make_loss_fn(one, config)(params, state, batch, None, False)
    hand = np.mean(
      [
        (np.asarray(sub['image'][b]) - targets[b, points[b]].reshape(16, 3))
        ** 2
        for b in range(2)
      ]
    )
    self.assertAlmostEqual(float(loss), float(hand), 5)

  def test_points_that_are_not_whole_patches_are_named(self):
    config = tiny_config()
    config.model.image_output_patch = (1, 2, 2)
    config.data.train_image_points = 30
    with self.assertRaisesRegex(ValueError, 'train_image_points=30'):
      config_lib.validate(config)
    config.data.train_image_points = 32
    config.model.image_output_patch = (1, 5, 1)
    with self.assertRaisesRegex(ValueError, 'image_output_patch'):
      config_lib.validate(config)
    config.model.image_output_patch = (1, 0, 1)
    with self.assertRaisesRegex(ValueError, '3 positive sizes'):
      config_lib.validate(config)


class EndToEndTest(absltest.TestCase):
  def test_train_preempt_resume_exact(self):
    config = tiny_config()
    full_dir = self.create_tempdir().full_path
    full = trainer.train_and_evaluate(
      config, full_dir, train.build_task(config)
    )
    part_dir = self.create_tempdir().full_path
    part = trainer.train_and_evaluate(
      config,
      part_dir,
      preemption.sigterm_at_step(train.build_task(config), 2),
    )
    self.assertTrue(part['preempted'])
    self.assertEqual(part['step'], 2)
    resumed = trainer.train_and_evaluate(
      config, part_dir, train.build_task(config)
    )
    strip = lambda rs: [  # noqa: E731
      {k: v for k, v in r.items() if not k.startswith('perf/')} for r in rs
    ]
    self.assertEqual(
      strip(metrics_writer.read_metrics(full_dir)),
      strip(metrics_writer.read_metrics(part_dir)),
    )
    self.assertEqual(full['eval/video_psnr'], resumed['eval/video_psnr'])
    for key in ('eval/video_psnr', 'eval/audio_psnr', 'eval/label_top1'):
      self.assertTrue(np.isfinite(full[key]), key)

  def test_released_format_file_loads_into_training_and_eval(self):
    config = paper_at_tiny_sizes()
    config.num_train_steps = 1
    config.log_every_steps = config.checkpoint_every_steps = 1
    config.eval_every_steps = 1
    config.checkpoint_async = False
    task = train.build_task(config)
    params, _ = task.model.init(jax.random.PRNGKey(3), **task.init_batch)
    params = jax.tree.map(np.asarray, params)
    path = os.path.join(
      self.create_tempdir().full_path, 'video_autoencoding_checkpoint.pystate'
    )
    with open(path, 'wb') as f:
      f.write(
        safe_pickle_test.dumps(
          safe_pickle_test.released_layout(params), protocol=4
        )
      )
    config.init_from = path
    config.mode = 'eval'
    result = trainer.train_and_evaluate(
      config, self.create_tempdir().full_path, task
    )
    self.assertTrue(np.isfinite(result['eval/video_psnr']))
    self.assertEqual(result['eval/count'], 2.0)
    config.mode = 'train'
    result = trainer.train_and_evaluate(
      config, self.create_tempdir().full_path, task
    )
    self.assertEqual(result['step'], 1)
    self.assertTrue(np.isfinite(result['loss']))


if __name__ == '__main__':
  absltest.main()
