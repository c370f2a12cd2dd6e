"""Tests of `runs.load_run` on a tiny trained run (the tiny MLP task)."""

import json
import os
import shutil
import tempfile

import numpy as np
from absl.testing import absltest

from experiments import checkpointing
from experiments import runs
from experiments import trainer
from tiny_task import make_config
from tiny_task import make_data
from tiny_task import make_task


class LoadRunTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp(prefix='runs_test_')
    config = make_config(num_train_steps=20, checkpoint_every_steps=10)
    trainer.train_and_evaluate(config, cls.workdir, make_task())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_latest_and_given_step(self):
    run = runs.load_run(self.workdir)
    self.assertEqual(run.step, 20)
    self.assertEqual(run.experiment, 'tiny_task')
    self.assertEqual(run.config.num_train_steps, 20)
    self.assertNotIn('run', run.config)
    self.assertEqual(runs.steps(self.workdir), [10, 20])
    # Inference equals the model applied to the checkpoint's params.
    x, _ = make_data()
    params, state = checkpointing.load_params_and_state(self.workdir)
    expected, _ = make_task().model.apply(
      params, state, None, is_training=False, x=x[:4]
    )
    np.testing.assert_allclose(run(x=x[:4]), expected, rtol=1e-6)
    older = runs.load_run(self.workdir, step=10)
    self.assertEqual(older.step, 10)
    self.assertEqual(
      older.checkpoint_dir, os.path.join(self.workdir, 'checkpoints', '10')
    )
    self.assertFalse(
      np.array_equal(older.params['linear']['w'], run.params['linear']['w'])
    )
    # A step directory is a run too.
    self.assertEqual(runs.load_run(older.checkpoint_dir).step, 10)

  def test_usable_by_init_from(self):
    run = runs.load_run(self.workdir, step=10)
    config = make_config(init_from=run.checkpoint_dir, mode='eval')
    result = trainer.train_and_evaluate(
      config, self.create_tempdir().full_path, make_task()
    )
    # The eval of step 10's weights, which `run` predicts with.
    x, y = make_data()
    accuracy = np.mean(np.argmax(run(x=x), -1) == y)
    self.assertAlmostEqual(result['eval/accuracy'], accuracy, places=6)

  def test_missing_step_lists_the_steps(self):
    with self.assertRaisesRegex(
      FileNotFoundError,
      r'no checkpoint of step 15; the steps there are \[10, 20\]',
    ):
      runs.load_run(self.workdir, step=15)

  def test_not_a_run(self):
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, 'is not a run directory'):
      runs.load_run(empty)
    with self.assertRaisesRegex(FileNotFoundError, 'No run at'):
      runs.load_run(os.path.join(empty, 'missing'))
    file = self.create_tempfile('weights.npz').full_path
    with self.assertRaisesRegex(FileNotFoundError, 'pretrained.load'):
      runs.load_run(file)

  def test_no_checkpoint_yet(self):
    workdir = self.create_tempdir().full_path
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump({'checkpoint_every_steps': 500}, f)
    with self.assertRaisesRegex(
      FileNotFoundError,
      'has no checkpoint yet.*checkpoint_every_steps \\(500\\)',
    ):
      runs.load_run(workdir)

  def test_corrupt_config(self):
    workdir = self.create_tempdir().full_path
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write('{"batch_size": 6')
    with self.assertRaisesRegex(ValueError, 'config.json is corrupt'):
      runs.load_run(workdir)

  def test_old_run_without_experiment(self):
    workdir = self.create_tempdir().full_path
    config = make_config(num_train_steps=1, checkpoint_every_steps=1)
    trainer.train_and_evaluate(config, workdir, make_task())
    path = os.path.join(workdir, 'config.json')
    with open(path) as f:
      data = json.load(f)
    del data['run']
    with open(path, 'w') as f:
      json.dump(data, f)
    with self.assertRaisesRegex(ValueError, 'pass experiment='):
      runs.load_run(workdir)
    self.assertEqual(runs.load_run(workdir, experiment='tiny_task').step, 1)
    with self.assertRaisesRegex(ValueError, 'trained by tiny_task, not x'):
      runs.load_run(self.workdir, experiment='x')


if __name__ == '__main__':
  absltest.main()
