"""Tests for experiments.optical_flow: losses, metrics, training end to end,
exact resumption, and the tiled Sintel/KITTI evaluation on fixture folders."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import flow_fixtures
from configs import optical_flow as flow_config
from experiments import metrics_writer
from experiments.optical_flow import datasets
from experiments.optical_flow import train
from perceiver_io import flow_tiling
from perceiver_io import pretrained


class _FixedFlowModel:
  """Predicts a given flow whatever the frames."""

  def __init__(self, flow):
    self.flow = flow

  def apply(self, params, state, rng, *, is_training, frames):
    del params, rng, is_training, frames
    return self.flow, state


class LossAndMetricsTest(parameterized.TestCase):
  def test_loss_is_mean_epe_over_valid_pixels(self):
    target = jnp.zeros((2, 2, 3, 2)).at[..., 0].set(1.0)
    pred = jnp.zeros((2, 2, 3, 2)).at[0, 0, 0].set(jnp.array([4.0, 4.0]))
    valid = jnp.ones((2, 2, 3)).at[1].set(0.0)  # Second example ignored.
    batch = {
      'frames': jnp.zeros((2, 2, 2, 3, 3)),
      'flow': target,
      'valid': valid,
    }
    loss_fn = train.make_loss_fn(_FixedFlowModel(pred))
    loss, (metrics, _) = loss_fn({}, {}, batch, None, True)
    # Example 0: one pixel off by |(3, 4)| = 5, five pixels off by 1.
    self.assertAlmostEqual(float(loss), (5.0 + 5 * 1.0) / 6, places=5)
    self.assertAlmostEqual(float(metrics['zero_flow_epe']), 1.0, places=5)
    grads = jax.grad(
      lambda p: loss_fn({}, {}, dict(batch, flow=target * 0), None, True)[0]
    )(0.0)
    self.assertTrue(np.isfinite(grads))

  def test_eval_sums_skip_padding_examples(self):
    target = jnp.ones((3, 2, 2, 2))
    pred = jnp.zeros((3, 2, 2, 2))
    batch = {
      'frames': jnp.zeros((3, 2, 2, 2, 3)),
      'flow': target,
      'valid': jnp.ones((3, 2, 2)),
      'mask': jnp.array([1.0, 1.0, 0.0]),
    }
    sums = train.make_eval_fn(_FixedFlowModel(pred))({}, {}, batch)
    self.assertAlmostEqual(float(sums['epe']), 2 * np.sqrt(2), places=5)
    self.assertAlmostEqual(float(sums['zero_flow_epe']), 2 * np.sqrt(2), 5)
    self.assertEqual(float(sums['count']), 2.0)
    self.assertEqual(float(sums['px1']), 0.0)

  def test_kitti_outliers_need_3px_and_5_percent(self):
    flow = np.array([[[10.0, 0.0], [100.0, 0.0], [1.0, 0.0]]])
    pred = np.array([[[13.5, 0.0], [104.0, 0.0], [0.0, 0.0]]])
    valid = np.array([[True, True, False]])
    metrics = train.frame_metrics(pred, flow, valid)
    self.assertEqual(metrics['outliers'], 1)  # 3.5 px of 10: yes; 4 of 100: no.
    self.assertEqual(metrics['num_valid'], 2)
    self.assertAlmostEqual(metrics['epe_sum'], 7.5)
    self.assertAlmostEqual(metrics['zero_sum'], 110.0)


class DatasetBatchesTest(parameterized.TestCase):
  def test_file_batches_are_deterministic_and_restartable(self):
    root = flow_fixtures.make_autoflow(self.create_tempdir().full_path, count=3)
    examples = datasets.autoflow_examples(root)
    kwargs = dict(crop_size=(8, 12), photometric=True)

    def take(start, count):
      batches = train.dataset_train_batches(
        examples, 2, 0, start, augment_kwargs=kwargs, num_workers=2
      )
      return [next(batches) for _ in range(count)]

    full = take(0, 4)
    resumed = take(2, 2)
    for a, b in zip(full[2:], resumed, strict=True):
      for key in ('frames', 'flow', 'valid'):
        np.testing.assert_array_equal(a[key], b[key])
    batch = full[0]
    self.assertEqual(batch['frames'].shape, (2, 2, 8, 12, 3))
    self.assertBetween(float(batch['frames'].min()), -1.0, 1.0)
    self.assertBetween(float(batch['frames'].max()), -1.0, 1.0)
    self.assertEqual(batch['valid'].dtype, np.float32)
    # Steps 0 and 1 cover epoch 0 (3 examples, batch 2): all three appear.
    flows = [f for b in full[:2] for f in b['flow']]
    self.assertFalse(np.array_equal(flows[0], flows[1]))

  def test_trains_on_a_dataset_folder(self):
    folder = self.create_tempdir().full_path
    autoflow = flow_fixtures.make_autoflow(os.path.join(folder, 'af'))
    chairs = flow_fixtures.make_chairs(os.path.join(folder, 'chairs'))
    config = flow_config.get_config('tiny')
    config.num_train_steps = 3
    config.eval_every_steps = 3
    config.data.update(
      dict(
        name='autoflow',
        root=autoflow,
        eval_name='chairs_val',
        eval_root=chairs,
        num_workers=2,
      )
    )
    final = train.run(config, os.path.join(folder, 'run'))
    self.assertEqual(final['step'], 3)
    self.assertEqual(final['eval/count'], 1)  # One validation pair.
    self.assertTrue(np.isfinite(final['eval/epe']))


class EndToEndTest(parameterized.TestCase):
  """Trains the tiny config once, then resumes and evaluates it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = absltest.get_default_test_tmpdir()
    cls.workdir = os.path.join(cls.root, 'flow_run')
    shutil.rmtree(cls.workdir, ignore_errors=True)
    cls.final = train.run(cls._config(), cls.workdir)

  @staticmethod
  def _config(**eval_overrides):
    config = flow_config.get_config('tiny')
    config.eval.update(eval_overrides)
    return config

  def test_trains_and_logs_both_epe_metrics(self):
    records = metrics_writer.read_metrics(self.workdir)
    evals = [r for r in records if 'eval/epe' in r]
    self.assertEqual([r['step'] for r in evals], [3, 6])
    for record in evals:
      self.assertGreater(record['eval/zero_flow_epe'], 0.1)
      self.assertTrue(np.isfinite(record['eval/epe']))
      self.assertEqual(record['eval/count'], 6)
    # The same held-out pairs at every evaluation.
    self.assertEqual(
      evals[0]['eval/zero_flow_epe'], evals[1]['eval/zero_flow_epe']
    )
    self.assertEqual(self.final['step'], 6)
    steps = [r['step'] for r in records if 'loss' in r]
    self.assertEqual(steps, [2, 4, 6])
    self.assertIn('perf/steps_per_sec', records[-1])

  def test_resumes_exactly_from_a_checkpoint(self):
    resumed = os.path.join(self.root, 'flow_resumed')
    shutil.rmtree(resumed, ignore_errors=True)
    shutil.copytree(self.workdir, resumed)
    # Forget the end of the run: the latest checkpoint is now step 3.
    shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))
    final = train.run(self._config(), resumed)
    for key in ('loss', 'epe', 'eval/epe', 'eval/px1'):
      self.assertEqual(final[key], self.final[key], key)
    steps = [r['step'] for r in metrics_writer.read_metrics(resumed)]
    self.assertEqual(steps, sorted(steps))

  def _fixtures(self):
    sintel = flow_fixtures.make_sintel(os.path.join(self.root, 'sintel'))
    kitti = flow_fixtures.make_kitti(os.path.join(self.root, 'kitti'))
    return sintel, kitti

  def test_benchmarks_on_fixture_folders(self):
    sintel, kitti = self._fixtures()
    config = self._config(
      benchmarks=train.BENCHMARKS,
      sintel_root=sintel,
      kitti_root=kitti,
      min_overlap=2,
      tile_batch_size=3,
    )
    config.mode = 'eval'
    evaldir = os.path.join(self.root, 'flow_bench')
    shutil.rmtree(evaldir, ignore_errors=True)
    shutil.copytree(self.workdir, evaldir)
    results = train.run(config, evaldir)
    for name in train.BENCHMARKS:
      for metric in ('epe', 'zero_flow_epe', 'fl_all', 'px1', 'count'):
        self.assertIn(f'eval/{name}/{metric}', results)
    self.assertEqual(results['eval/sintel_clean/count'], 3)
    self.assertEqual(results['eval/kitti/count'], 2)
    self.assertBetween(results['eval/kitti/fl_all'], 0.0, 100.0)

    # Zero-flow error counts valid pixels only (KITTI's invalid flow reads
    # as 0 and would lower the mean if it were counted), per image, then
    # averaged over images; `epe_all_pixels` pools the pixels instead.
    examples = datasets.kitti_examples(kitti)
    items = [datasets.load_example(e) for e in examples]
    magnitude = [np.linalg.norm(i['flow'], axis=-1) for i in items]
    per_image = [
      m[i['valid']].mean() for m, i in zip(magnitude, items, strict=True)
    ]
    self.assertAlmostEqual(
      results['eval/kitti/zero_flow_epe'], np.mean(per_image), 5
    )
    self.assertNotAlmostEqual(
      np.mean(per_image), np.mean([m.mean() for m in magnitude]), 3
    )
    self.assertIn('eval/kitti/epe_all_pixels', results)

    # The Sintel EPE is the tiled prediction's mean error over all pixels.
    model = train.build_model(config)
    params, state, step = train.load_eval_params(config, evaldir, model)
    self.assertEqual(step, 6)
    flow_fn = flow_tiling.make_flow_fn(model, params, state)
    errors = []
    for example in datasets.sintel_examples(sintel, pass_name='final'):
      item = datasets.load_example(example)
      pred = flow_tiling.compute_flow(
        train.to_model_frames(item['frames']),
        flow_fn,
        tile_size=(8, 12),
        min_overlap=2,
      )
      errors.append(np.linalg.norm(pred - item['flow'], axis=-1))
    self.assertAlmostEqual(
      results['eval/sintel_final/epe'], float(np.mean(errors)), 5
    )
    record = metrics_writer.read_metrics(evaldir)[-1]
    self.assertEqual(record['step'], 6)
    self.assertIn('eval/kitti/fl_all', record)

  def test_init_from_a_parameter_file_gives_the_same_numbers(self):
    sintel, kitti = self._fixtures()
    config = self._config(
      benchmarks=('kitti',), kitti_root=kitti, min_overlap=2
    )
    config.mode = 'eval'
    model = train.build_model(config)
    params, state, _ = train.load_eval_params(config, self.workdir, model)
    npz = os.path.join(self.root, 'tiny_flow.npz')
    pretrained.save_params(
      npz, params, state, name='optical_flow', config=config.model
    )
    direct = os.path.join(self.root, 'flow_direct')
    shutil.rmtree(direct, ignore_errors=True)
    shutil.copytree(self.workdir, direct)
    expected = train.run(config, direct)
    config.init_from = npz
    fresh = os.path.join(self.root, 'flow_from_npz')
    shutil.rmtree(fresh, ignore_errors=True)
    got = train.run(config, fresh)
    self.assertEqual(got, expected)
    self.assertEqual(metrics_writer.read_metrics(fresh)[-1]['step'], 0)

  def test_eval_without_weights_or_data_is_a_clear_error(self):
    config = self._config(benchmarks=('sintel_clean',), sintel_root='')
    config.mode = 'eval'
    empty = os.path.join(self.root, 'flow_empty')
    with self.assertRaisesRegex(ValueError, 'needs weights'):
      train.run(config, empty)
    with self.assertRaisesRegex(ValueError, 'sintel_root'):
      train.run(config, self.workdir)

  def test_wrong_model_sizes_are_named(self):
    config = self._config(benchmarks=('kitti',), kitti_root='unused')
    config.mode = 'eval'
    config.model.encoder.num_z_channels = 64
    with self.assertRaisesRegex(ValueError, 'shape'):
      train.run(config, self.workdir)

  def test_config_json_records_the_model(self):
    with open(os.path.join(self.workdir, 'config.json')) as f:
      saved = json.load(f)
    self.assertEqual(saved['model']['train_size'], [8, 12])


if __name__ == '__main__':
  absltest.main()
