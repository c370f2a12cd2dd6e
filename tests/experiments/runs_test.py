"""Tests of `runs.load_run` and `runs.load_weights` on a tiny trained run
(the tiny MLP task) and on the released-format files of tests/testdata."""

import json
import os
import pathlib
import pickle
import shutil
import tempfile

import numpy as np
from absl.testing import absltest

from experiments import checkpointing
from experiments import runs
from experiments import trainer
from perceiver_io import pretrained
from tiny_task import make_config
from tiny_task import make_data
from tiny_task import make_task

PARITY_DIR = pathlib.Path(__file__).resolve().parents[1] / 'testdata' / 'parity'


def assert_trees_equal(test, actual, expected):
  test.assertEqual(
    {m: set(v) for m, v in actual.items()},
    {m: set(v) for m, v in expected.items()},
  )
  for module, leaves in expected.items():
    for name, value in leaves.items():
      np.testing.assert_array_equal(actual[module][name], value)


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

  def test_load_weights_of_a_run(self):
    expected = checkpointing.load_params_and_state(self.workdir)
    weights = runs.load_weights(self.workdir)
    self.assertTrue(runs.is_run(self.workdir))
    self.assertEqual(weights.step, 20)
    self.assertEqual(
      weights.source, os.path.join(self.workdir, 'checkpoints', '20')
    )
    assert_trees_equal(self, weights.params, expected[0])
    self.assertIsInstance(weights.params['linear']['w'], np.ndarray)
    # An older step, by number or by its step directory: the same weights.
    older = runs.load_weights(self.workdir, step=10)
    self.assertEqual(older.step, 10)
    step_dir = os.path.join(self.workdir, 'checkpoints', '10')
    by_dir = runs.load_weights(step_dir)
    self.assertEqual((by_dir.step, by_dir.source), (10, step_dir))
    assert_trees_equal(self, by_dir.params, older.params)
    self.assertFalse(
      np.array_equal(older.params['linear']['w'], weights.params['linear']['w'])
    )
    with self.assertRaisesRegex(
      FileNotFoundError,
      r'No checkpoint of step 15 .* steps there are \[10, 20\]',
    ):
      runs.load_weights(self.workdir, step=15)

  def test_load_weights_of_released_files(self):
    pickle_path = str(PARITY_DIR / 'language_small.pickle')
    self.assertFalse(runs.is_run(pickle_path))
    expected_params, expected_state = pretrained.load_params(pickle_path)
    npz_path = os.path.join(self.create_tempdir().full_path, 'language.npz')
    pretrained.save_params(npz_path, expected_params, expected_state)
    for path in (pickle_path, npz_path):
      weights = runs.load_weights(path)
      self.assertIsNone(weights.step)
      self.assertEqual(weights.source, path)
      assert_trees_equal(self, weights.params, expected_params)
      assert_trees_equal(self, weights.state, expected_state)
    self.assertIn('embed', weights.params)
    with self.assertRaisesRegex(ValueError, 'has no steps.*Leave the step'):
      runs.load_weights(npz_path, step=3)

  def test_load_weights_errors_name_the_path(self):
    root = self.create_tempdir().full_path
    missing = os.path.join(root, 'missing.pickle')
    self.assertFalse(runs.is_run(missing))
    with self.assertRaisesRegex(
      FileNotFoundError, f'No checkpoint at {missing}: no such file'
    ):
      runs.load_weights(missing)
    with self.assertRaisesRegex(
      FileNotFoundError, f'{root} is a directory without checkpoints'
    ):
      runs.load_weights(root)
    garbage = self.create_tempfile('garbage.pickle', 'not a checkpoint')
    with self.assertRaisesRegex(pickle.UnpicklingError, 'garbage.pickle'):
      runs.load_weights(garbage.full_path)
    bad_npz = self.create_tempfile('bad.npz', 'not a zip file')
    with self.assertRaisesRegex(ValueError, 'bad.npz'):
      runs.load_weights(bad_npz.full_path)


if __name__ == '__main__':
  absltest.main()
