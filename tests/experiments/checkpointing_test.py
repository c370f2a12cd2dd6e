"""Tests of orbax checkpointing: round trips, retention, atomicity, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from experiments import checkpointing
from experiments import parallel
from experiments import trainer


def _train_state(scale=1.0, width=3):
  params = {
    'linear': {'w': jnp.full((2, width), scale), 'b': jnp.zeros(width)},
    'layer_norm': {'scale': jnp.ones(width)},
  }
  opt = optax.adam(1e-3)
  return trainer.TrainState(
    step=jnp.asarray(5, jnp.int32),
    params=params,
    state={},
    opt_state=opt.init(params),
  )


def _shardings(state):
  replicated = parallel.replicated_sharding(parallel.make_mesh())
  return jax.tree.map(lambda _: replicated, state)


class CheckpointerTest(absltest.TestCase):
  def test_round_trip_and_keep_last(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir, keep=2)
    for step in (1, 2, 3):
      ckpt.save(step, _train_state(scale=float(step)))
    ckpt.wait()
    self.assertEqual(ckpt.all_steps(), [2, 3])
    ckpt.close()
    ckpt = checkpointing.Checkpointer(workdir, keep=2)
    abstract = jax.eval_shape(_train_state)
    restored = ckpt.restore(3, abstract, _shardings(abstract))
    ckpt.close()
    self.assertIsInstance(restored, trainer.TrainState)
    np.testing.assert_array_equal(restored.params['linear']['w'], 3.0)
    self.assertEqual(int(restored.step), 5)
    self.assertEqual(
      jax.tree.structure(restored.opt_state),
      jax.tree.structure(_train_state().opt_state),
    )

  def test_synchronous_save_is_complete_on_return(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir, async_save=False)
    ckpt.save(4, _train_state(scale=4.0))
    # No wait(): the files are final when save returns.
    self.assertEqual(
      os.listdir(os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)),
      ['4'],
    )
    abstract = jax.eval_shape(_train_state)
    restored = ckpt.restore(4, abstract, _shardings(abstract))
    ckpt.close()
    np.testing.assert_array_equal(restored.params['linear']['w'], 4.0)

  def test_half_written_checkpoint_is_ignored(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.save(1, _train_state())
    ckpt.close()
    # What a SIGKILL during a save leaves behind.
    tmp = os.path.join(workdir, 'checkpoints', '2.orbax-checkpoint-tmp')
    os.makedirs(os.path.join(tmp, 'train_state'))
    ckpt = checkpointing.Checkpointer(workdir)
    self.assertEqual(ckpt.latest_step(), 1)
    self.assertEqual(ckpt.all_steps(), [1])
    ckpt.close()

  def test_restore_mismatch_names_parameter(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.save(1, _train_state(width=3))
    ckpt.close()
    abstract = jax.eval_shape(lambda: _train_state(width=4))
    ckpt = checkpointing.Checkpointer(workdir)
    with self.assertRaisesRegex(
      ValueError,
      r"parameter 'layer_norm/scale' has shape \(3,\) in the checkpoint "
      r'but \(4,\) in the model',
    ):
      ckpt.restore(1, abstract, _shardings(abstract))
    ckpt.close()

  def test_optimizer_mismatch(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.save(1, _train_state())
    ckpt.close()
    state = _train_state()
    sgd = optax.sgd(0.1, momentum=None)
    abstract = jax.eval_shape(
      lambda: state._replace(opt_state=sgd.init(state.params))
    )
    ckpt = checkpointing.Checkpointer(workdir)
    with self.assertRaisesRegex(ValueError, 'optimizer state .* not match'):
      ckpt.restore(1, abstract, _shardings(abstract))
    ckpt.close()

  def test_load_params_from_workdir_or_step_dir(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.save(4, _train_state(scale=2.0))
    ckpt.close()
    for path in (workdir, os.path.join(workdir, 'checkpoints', '4')):
      self.assertTrue(checkpointing.is_checkpoint_dir(path))
      params, state = checkpointing.load_params_and_state(path)
      np.testing.assert_array_equal(params['linear']['w'], 2.0)
      self.assertIsInstance(params['linear']['w'], np.ndarray)
      self.assertEqual(state, {})
    empty = self.create_tempdir().full_path
    self.assertFalse(checkpointing.is_checkpoint_dir(empty))
    with self.assertRaisesRegex(FileNotFoundError, 'No checkpoint'):
      checkpointing.load_params_and_state(empty)

  def test_steps_and_loading_a_given_step(self):
    workdir = self.create_tempdir().full_path
    ckpt = checkpointing.Checkpointer(workdir, async_save=False)
    for step, scale in ((3, 1.0), (6, 2.0)):
      ckpt.save(step, _train_state(scale=scale))
    ckpt.close()
    directory, steps = checkpointing.checkpoint_steps(workdir)
    self.assertEqual(str(directory), os.path.join(workdir, 'checkpoints'))
    self.assertEqual(steps, [3, 6])
    step_dir = os.path.join(workdir, 'checkpoints', '3')
    self.assertEqual(checkpointing.checkpoint_steps(step_dir)[1], [3])
    self.assertEqual(checkpointing.find_checkpoint(workdir)[1], 6)
    params, _ = checkpointing.load_params_and_state(workdir, step=3)
    np.testing.assert_array_equal(params['linear']['w'], 1.0)
    with self.assertRaisesRegex(
      FileNotFoundError, r'No checkpoint of step 4 .* steps there are \[3, 6\]'
    ):
      checkpointing.load_params_and_state(workdir, step=4)


class CheckTreeTest(absltest.TestCase):
  def test_messages(self):
    model = {'a': {'w': np.zeros((2, 3))}, 'b': {'w': np.zeros(4)}}
    checkpointing.check_tree_matches(model, jax.tree.map(np.ones_like, model))
    with self.assertRaisesRegex(
      ValueError,
      "model has parameter 'b/w' with shape \\(4,\\), but the "
      'checkpoint does not',
    ):
      checkpointing.check_tree_matches(model, {'a': model['a']}, source='x')
    with self.assertRaisesRegex(ValueError, "checkpoint has parameter 'c/w'"):
      checkpointing.check_tree_matches(model, {**model, 'c': {'w': 1.0}})
    with self.assertRaisesRegex(ValueError, r'in f\.pystate: parameter'):
      checkpointing.check_tree_matches(
        model, {**model, 'a': {'w': np.zeros((3, 2))}}, source='f.pystate'
      )

  def test_shape_structs_and_nested_named_tuples(self):
    state = _train_state()
    abstract = jax.eval_shape(lambda: state)
    checkpointing.check_tree_matches(abstract.opt_state, state.opt_state)


if __name__ == '__main__':
  absltest.main()
