"""Every variant of configs/image_classification.py builds, with its model."""

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import image_classification as image_config
from experiments import config_utils
from experiments.image_classification import train
from perceiver_io import models

ARGS = (
  None,
  'fourier',
  'learned',
  'conv',
  'digits',
  'fourier,runlocal',
  'variant=learned,runlocal=True',
  'conv,runlocal',
)
COMMON_KEYS = (
  'seed',
  'batch_size',
  'num_train_steps',
  'num_epochs',
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'init_from',
  'mode',
)


class ConfigTest(parameterized.TestCase):
  @parameterized.parameters(*ARGS)
  def test_builds_with_model(self, arg):
    config = image_config.get_config(arg)
    for key in COMMON_KEYS:
      self.assertIn(key, config)
    for section in ('model', 'data', 'optimizer', 'schedule'):
      self.assertIn(section, config)
    config.lock()  # As config_flags does; overrides of known keys still work.
    config.batch_size = 16
    model = train.build_model(config)
    height, width = config.model.image_size
    images = np.zeros((1, height, width, config.data.channels), np.float32)
    params, state = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), is_training=True, images=images)
    )
    num_classes = config.model.decoder.num_classes
    out, _ = jax.eval_shape(
      lambda p, s: model.apply(p, s, None, images=images), params, state
    )
    self.assertEqual(out.shape, (1, num_classes))

  def test_paper_recipe(self):
    config = image_config.get_config('fourier')
    self.assertEqual(
      config.model.architecture, 'imagenet_fourier_position_encoding'
    )
    self.assertEqual(config_utils.resolve_steps(config, 1_281_167), 137_625)
    self.assertEqual(config.batch_size, 1024)
    self.assertEqual(config.label_smoothing, 0.1)
    self.assertEqual(
      config.optimizer.to_dict(),
      dict(
        name='lamb',
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        weight_decay=0.1,
        decay_pos_embs=True,
        max_grad_norm=10.0,
      ),
    )
    self.assertEqual(config.schedule.name, 'constant_cosine')
    self.assertEqual(config.schedule.base_lr, 5e-4)
    self.assertTrue(config.schedule.scale_by_batch)
    self.assertEqual(config.schedule.constant_fraction, 0.5)
    self.assertEqual(config.schedule.warmup_steps, 0)
    data = config.data
    self.assertEqual(
      (data.randaugment_layers, data.randaugment_magnitude), (4, 5.0)
    )
    self.assertEqual(data.mixup_alpha, 0.2)
    self.assertTrue(data.cutmix)
    self.assertEqual(data.image_size, 224)
    self.assertEqual(data.name, 'imagenet2012')
    self.assertEqual(config.model.encoder.num_blocks, 8)
    self.assertEqual(config.model.encoder.z_index_dim, 512)

  def test_digits(self):
    config = image_config.get_config('digits')
    self.assertEqual(config.data.name, 'digits')
    self.assertEqual(config.model.image_size, (8, 8))
    self.assertEqual(config.model.decoder.num_classes, 10)
    self.assertIn(
      'configs/image_classification.py:digits', image_config.__doc__
    )

  def test_fourier_frequencies_follow_the_image_size(self):
    for arg, size in (('digits', (8, 8)), ('fourier,runlocal', (32, 32))):
      config = image_config.get_config(arg)
      resolved, _ = models.resolve_sizes(
        config.model.architecture, config.model
      )
      fourier = resolved.input_preprocessor.fourier_position_encoding_kwargs
      self.assertEqual(tuple(fourier.max_resolution), size)

  def test_data_and_model_image_sizes_must_agree(self):
    config = image_config.get_config('fourier,runlocal')
    config.model.image_size = (64, 64)
    with self.assertRaisesRegex(
      ValueError, r'data.image_size=32 .*model.image_size=\(64, 64\)'
    ):
      train.build_task(config)

  def test_unknown_variant(self):
    with self.assertRaisesRegex(ValueError, "Unknown variant 'vit'"):
      image_config.get_config('vit')


if __name__ == '__main__':
  absltest.main()
