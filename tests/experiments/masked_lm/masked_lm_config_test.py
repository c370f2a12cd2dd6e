"""Every argument of configs/masked_lm.py builds; the paper config runs."""

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from absl.testing import parameterized

from configs import masked_lm as masked_lm_config
from experiments import trainer
from experiments.masked_lm import data as task_data
from experiments.masked_lm import train

ARGS = (None, 'local', 'paper', 'local,tiny', 'paper,tiny', 'variant=paper')
COMMON_KEYS = (
  'seed',
  'batch_size',
  'num_train_steps',
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'init_from',
)


class ConfigTest(parameterized.TestCase):
  @parameterized.parameters(*ARGS)
  def test_builds_with_model(self, arg):
    config = masked_lm_config.get_config(arg)
    for key in COMMON_KEYS:
      self.assertIn(key, config)
    for section in ('model', 'data', 'optimizer', 'schedule', 'model_init'):
      self.assertIn(section, config)
    config.lock()
    config.data.files = 'a.txt'  # Known keys can still be overridden.
    with self.assertRaises(AttributeError):
      config.data.file = 'a.txt'
    model = train.build_model(config)
    seq_len = config.data.seq_len
    self.assertLessEqual(seq_len, config.model.max_seq_len)
    inputs = np.zeros((1, seq_len), np.int32)
    params, state = jax.eval_shape(
      lambda: model.init(
        jax.random.PRNGKey(0), inputs=inputs, input_mask=np.ones_like(inputs)
      )
    )
    out, _ = jax.eval_shape(
      lambda p, s: model.apply(p, s, None, inputs=inputs, input_mask=inputs),
      params,
      state,
    )
    self.assertEqual(out.shape, (1, seq_len, 262))

  def test_paper_recipe(self):
    config = masked_lm_config.get_config('paper')
    self.assertEqual(config.batch_size, 2048)
    self.assertEqual(config.num_train_steps, 500_000)
    self.assertEqual(config.optimizer.name, 'lamb')
    self.assertEqual(config.optimizer.weight_decay, 0.01)
    self.assertEqual(config.schedule.name, 'warmup_cosine')
    self.assertEqual(config.schedule.base_lr, 1.25e-3)
    self.assertFalse(config.schedule.scale_by_batch)
    self.assertEqual(config.schedule.warmup_steps, 1000)
    self.assertEqual(config.data.source, 'tfds')
    self.assertEqual(
      config.data.tfds_names, (task_data.C4, task_data.WIKIPEDIA)
    )
    self.assertEqual(config.data.tfds_weights, (0.7, 0.3))
    self.assertEqual(config.data.docs_per_example, 10)
    self.assertEqual(config.data.seq_len, 2048)
    self.assertEqual(config.data.mask_prob, 0.15)
    self.assertEqual(config.data.eval_mask_prob, 0.15)
    self.assertTrue(config.data.mask_leading_space)
    model = config.model
    self.assertEqual((model.d_model, model.max_seq_len), (768, 2048))
    self.assertEqual(model.encoder.num_self_attends_per_block, 26)
    self.assertEqual(model.encoder.z_index_dim, 256)
    self.assertEqual(model.encoder.num_z_channels, 1280)
    self.assertEqual(config.model_init.position_init, 'default')

  def test_local_uses_the_embedded_corpus(self):
    config = masked_lm_config.get_config('local')
    self.assertEqual(config.data.source, 'pydoc')
    self.assertEqual(config.data.holdout_fraction, 0.1)
    # Trains on 40% of the words; evaluates on 15%, every span " word".
    self.assertEqual(config.data.mask_prob, 0.4)
    self.assertEqual(config.data.eval_mask_prob, 0.15)
    self.assertTrue(config.data.mask_leading_space)

  def test_unknown_variant(self):
    with self.assertRaisesRegex(ValueError, 'Unknown variant'):
      masked_lm_config.get_config('huge')


class PaperRunTest(absltest.TestCase):
  def test_paper_config_trains_a_step_on_mock_c4_and_wikipedia(self):
    config = masked_lm_config.get_config('paper,tiny')
    config.num_train_steps = 2
    config.eval_every_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    # Synchronous saves under tfds' mock file system (see config_utils).
    config.checkpoint_async = False
    workdir = self.create_tempdir().full_path
    with tfds.testing.mock_data(num_examples=16):
      final = trainer.train_and_evaluate(
        config, workdir, train.build_task(config)
      )
    self.assertEqual(final['step'], 2)
    self.assertTrue(np.isfinite(final['loss']))
    self.assertTrue(np.isfinite(final['eval/loss']))
    self.assertEqual(final['eval/count'], config.data.num_eval_examples)


if __name__ == '__main__':
  absltest.main()
