"""GLUE fine-tuning end to end on mock data, and the summary."""

import os
import tempfile

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from absl.testing import parameterized

from configs import glue as glue_config
from configs import masked_lm as masked_lm_config
from experiments import checkpointing
from experiments import trainer
from experiments.glue import data as task_data
from experiments.glue import model as task_model
from experiments.glue import train as glue_train
from experiments.masked_lm import train as masked_lm_train


def tiny_glue_config(task, **overrides):
  config = glue_config.get_config(f'task={task},variant=local,tiny')
  # Synchronous saves under tfds' mock file system (see config_utils).
  config.checkpoint_async = False
  config.update(overrides)
  return config


class EvalFnTest(absltest.TestCase):
  def test_confusion_per_split_and_scattered_regression(self):
    info = task_data.task_info('mnli')

    class Fixed:
      def apply(self, params, state, rng, *, is_training, inputs, input_mask):
        del params, rng, is_training, input_mask
        return np.eye(3, dtype=np.float32)[inputs[:, 0] % 3], state

    batch = {
      'inputs': np.array([[0], [1], [2], [1]], np.int32),
      'input_mask': np.ones((4, 1), np.int32),
      'label': np.array([0, 2, 2, 1], np.int32),
      'split': np.array([0, 0, 1, 1], np.int32),
      'index': np.arange(4, dtype=np.int32),
      'mask': np.array([1, 1, 1, 0], np.float32),
    }
    sums = jax.device_get(
      glue_train.make_eval_fn(Fixed(), info, 4)(None, {}, batch)
    )
    np.testing.assert_array_equal(
      sums['confusion'][0], [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    )
    np.testing.assert_array_equal(
      sums['confusion'][1], [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    )
    results = glue_train.make_eval_finalize('mnli', info)(sums)
    self.assertEqual(results['matched/accuracy'], 0.5)
    self.assertEqual(results['mismatched/accuracy'], 1.0)
    self.assertEqual(results['score'], 0.75)

    stsb = task_data.task_info('stsb')

    class Regress:
      def apply(self, params, state, rng, *, is_training, inputs, input_mask):
        return inputs.astype(np.float32), state

    batch = dict(batch, label=np.array([0.5, 1.0, 2.0, 9.0], np.float32))
    sums = jax.device_get(
      glue_train.make_eval_fn(Regress(), stsb, 5)(None, {}, batch)
    )
    np.testing.assert_array_equal(sums['predictions'], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(sums['labels'], [0.5, 1.0, 2.0, 0, 0])


class EndToEndTest(parameterized.TestCase):
  """Fine-tuning from our MLM. docs_commands_test runs the documented
  `--tasks=all --grid` command and checks every task's metrics and the
  summary's GLUE average."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A tiny pretrained masked LM to start from.
    # A fresh folder: a run left by an earlier session must not resume.
    os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.mlm_dir = os.path.join(root, 'glue_test_mlm')
    text_dir = os.path.join(root, 'glue_test_text')
    os.makedirs(text_dir, exist_ok=True)
    with open(os.path.join(text_dir, 'a.txt'), 'w', encoding='utf-8') as f:
      f.write('a small text to pretrain on. ' * 50)
    config = masked_lm_config.get_config('local,tiny')
    config.data.source = 'files'
    config.data.files = os.path.join(text_dir, 'a.txt')
    if not os.path.isdir(cls.mlm_dir):
      trainer.train_and_evaluate(
        config, cls.mlm_dir, masked_lm_train.build_task(config)
      )

  def test_init_loader_takes_the_mlm_encoder_and_a_fresh_head(self):
    config = tiny_glue_config('rte', init_from=self.mlm_dir)
    with tfds.testing.mock_data(num_examples=8):
      task = glue_train.build_task(config)
    params, _ = task.load_init_params(self.mlm_dir)
    mlm, _ = checkpointing.load_params_and_state(self.mlm_dir)
    fresh, _ = task_model.init_params(
      glue_train.build_model(config), config.data.seq_len, config.seed
    )
    encoder = [m for m in params if task_model.is_pretrained_module(m)]
    head = [m for m in params if not task_model.is_pretrained_module(m)]
    self.assertNotEmpty(encoder)
    self.assertNotEmpty(head)
    for module in encoder:
      for name, value in params[module].items():
        np.testing.assert_array_equal(value, mlm[module][name])
    for module in head:
      for name, value in params[module].items():
        np.testing.assert_array_equal(value, fresh[module][name])
    # A classifier checkpoint of the same shape loads unchanged, head too.
    workdir = self.create_tempdir().full_path
    with tfds.testing.mock_data(num_examples=8):
      glue_train.train_task(config, workdir)
    tuned, _ = checkpointing.load_params_and_state(workdir)
    again, _ = task.load_init_params(workdir)
    for module in head:
      for name, value in again[module].items():
        np.testing.assert_array_equal(value, tuned[module][name])

  def test_bad_init_from(self):
    config = tiny_glue_config('rte', init_from='/nonexistent/model.pickle')
    with (
      tfds.testing.mock_data(num_examples=8),
      self.assertRaises(FileNotFoundError),
    ):
      glue_train.train_task(config, self.create_tempdir().full_path)


class TasksTest(absltest.TestCase):
  def test_parse_tasks(self):
    self.assertEqual(glue_train.parse_tasks('rte, cola'), ['rte', 'cola'])
    self.assertLen(glue_train.parse_tasks('all'), 9)
    with self.assertRaisesRegex(ValueError, 'Unknown GLUE task'):
      glue_train.parse_tasks('rte,squad')

  def test_grid(self):
    config = glue_config.get_config('rte')
    self.assertLen(glue_train.grid_points(config), 12)


if __name__ == '__main__':
  absltest.main()
