"""Tests for configs/optical_flow.py: every documented argument builds."""

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import optical_flow as flow_config
from experiments import config_utils
from experiments.optical_flow import augment
from experiments.optical_flow import datasets
from experiments.optical_flow import train
from perceiver_io import models


class ConfigTest(parameterized.TestCase):
  @parameterized.parameters(None, 'paper', 'local', 'tiny', 'variant=local')
  def test_builds_and_resolves(self, arg):
    config = flow_config.get_config(arg)
    # Durations resolve (the paper's 480 epochs need the AutoFlow size).
    examples = 400_000 if config.data.name == 'autoflow' else None
    steps = config_utils.resolve_steps(config, examples)
    self.assertGreater(steps, 0)
    # The synthetic generator and the augmentation accept their sections.
    if config.data.name == 'synthetic':
      datasets.SyntheticFlowPairs(
        crop_size=tuple(config.model.train_size), **config.data.synthetic
      )
    example = {
      'frames': np.zeros((2, 400, 500, 3), np.uint8),
      'flow': np.zeros((400, 500, 2), np.float32),
      'valid': np.ones((400, 500), bool),
    }
    out = augment.augment(
      example,
      np.random.default_rng(0),
      crop_size=tuple(config.model.train_size),
      **config.data.augment,
    )
    self.assertEqual(out['flow'].shape[:2], tuple(config.model.train_size))

  def test_paper_is_the_released_model_and_recipe(self):
    config = flow_config.get_config('paper')
    released = models.get_config(models.OPTICAL_FLOW)
    self.assertEqual(config.model.to_dict(), released.to_dict())
    self.assertEqual(config.model.encoder.z_index_dim, 2048)
    self.assertEqual(config.model.encoder.num_z_channels, 512)
    self.assertEqual(config.model.encoder.num_self_attends_per_block, 24)
    self.assertEqual(config.optimizer.name, 'lamb')
    self.assertEqual(config.schedule.name, 'warmup_cosine')
    self.assertEqual(config.schedule.base_lr, 4e-4)
    self.assertEqual(config.batch_size, 512)
    self.assertEqual(config.num_epochs, 480.0)
    self.assertEqual(config_utils.resolve_steps(config, 400_000), 375_000)
    self.assertEqual(config.data.name, 'autoflow')

  @parameterized.parameters('local', 'tiny')
  def test_small_models_initialise(self, arg):
    config = flow_config.get_config(arg)
    model = train.build_model(config)
    height, width = config.model.train_size
    params, _ = jax.eval_shape(
      lambda: model.init(
        jax.random.PRNGKey(0),
        frames=np.zeros((1, 2, height, width, 3), np.float32),
      )
    )
    num = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    self.assertLess(num, 200_000)

  def test_local_pairs_move_by_up_to_8_pixels(self):
    config = flow_config.get_config('local')
    synthetic = config.data.synthetic.to_dict()
    size = tuple(config.model.train_size)
    flow_kwargs = {k: synthetic[k] for k in datasets.FLOW_FIELDS}
    stats = datasets.motion_statistics(size, flow_kwargs, num_pairs=300)
    self.assertGreaterEqual(stats['mean'], 2.5)
    self.assertLessEqual(stats['max'], 8.0 + 1e-5)
    self.assertGreater(stats['max'], 7.5)
    self.assertEqual(config.data.synthetic.max_motion, 8.0)
    # Frames large enough for such motions, and every size agrees.
    self.assertGreaterEqual(min(size), 4 * config.data.synthetic.max_motion)
    model = config.model
    for section in (model.input_preprocessor, model.decoder):
      self.assertEqual(
        tuple(section.fourier_position_encoding_kwargs.max_resolution), size
      )
    # The generator draws pairs of that size with those motions.
    generator = datasets.SyntheticFlowPairs(crop_size=size, **synthetic)
    flow = generator.sample(np.random.default_rng(0))['flow']
    self.assertEqual(flow.shape, size + (2,))

  def test_unknown_variant_and_locked_keys(self):
    with self.assertRaisesRegex(ValueError, 'Unknown variant'):
      flow_config.get_config('huge')
    with self.assertRaisesRegex(ValueError, 'Unknown config argument'):
      flow_config.get_config('size=3')
    config = flow_config.get_config('local')
    config.lock()
    with self.assertRaises(AttributeError):
      config.data.synthetic.max_translaton = 3.0


if __name__ == '__main__':
  absltest.main()
