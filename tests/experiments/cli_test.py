"""The programs' command-line errors and logs, run as real subprocesses.

Each subprocess costs a few seconds, so each case fails as early as it can
(most before any model is built) and the tiny configs are used.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import masked_lm as masked_lm_config
from experiments import checkpointing
from experiments import cli
from experiments import metrics_writer
from experiments import trainer
from experiments.masked_lm import train

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
DIGITS = [
  '--config=configs/image_classification.py:digits',
  '--config.num_train_steps=2',
  '--config.schedule.warmup_steps=1',
]


def run_program(module, *args):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run(
    [sys.executable, '-m', f'experiments.{module}', *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


class ErrorsTest(absltest.TestCase):
  def assert_short_error(self, out, status, *names):
    """Exit `status`, a few lines ending in `<program>: error: ...`, no
    traceback, naming every one of `names`."""
    self.assertEqual(out.returncode, status, out.stderr[-2000:])
    self.assertNotIn('Traceback', out.stderr)
    error_lines = [s for s in out.stderr.splitlines() if ': error: ' in s]
    self.assertLen(error_lines, 1, out.stderr[-2000:])
    for name in names:
      self.assertIn(name, error_lines[0])
    return error_lines[0]

  def test_typo_in_override(self):
    out = run_program(
      'image_classification',
      *DIGITS,
      '--workdir=unused',
      '--config.batch_sise=3',
    )
    line = self.assert_short_error(out, 2, 'batch_sise', '"batch_size"')
    self.assertTrue(line.startswith('image_classification: error: '))
    self.assertLessEqual(len(out.stderr.splitlines()), 3, out.stderr)
    self.assertEqual(out.stdout, '')

  def test_verbose_errors_shows_the_traceback(self):
    out = run_program(
      'image_classification',
      *DIGITS,
      '--workdir=unused',
      '--config.batch_sise=3',
      '--verbose_errors',
    )
    self.assertNotEqual(out.returncode, 0)
    self.assertIn('Traceback (most recent call last)', out.stderr)
    self.assertIn('batch_sise', out.stderr)

  def test_workdir_is_a_file(self):
    path = self.create_tempfile('not_a_dir').full_path
    out = run_program('image_classification', *DIGITS, f'--workdir={path}')
    self.assert_short_error(out, 1, 'workdir', path, 'is a file')

  def test_empty_init_from_file(self):
    empty = self.create_tempfile('empty.pickle').full_path
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    out = run_program(
      'image_classification',
      *DIGITS,
      f'--workdir={workdir}',
      f'--config.init_from={empty}',
    )
    self.assert_short_error(out, 1, 'config.init_from', empty, 'empty')

  def test_garbage_and_missing_checkpoint_files(self):
    garbage = self.create_tempfile('garbage.pickle', 'not a checkpoint')
    out = run_program(
      'masked_lm.fill_mask',
      f'--checkpoint={garbage.full_path}',
      '--text=a [[b]]',
    )
    self.assert_short_error(out, 1, garbage.full_path, 'not a pickle')
    missing = os.path.join(self.create_tempdir().full_path, 'missing.pickle')
    out = run_program(
      'masked_lm.fill_mask', f'--checkpoint={missing}', '--text=a [[b]]'
    )
    self.assert_short_error(out, 1, missing)


def write_untrained_run(workdir, config, experiment):
  """A run directory as the trainer leaves it (config.json, a checkpoint at
  step 1) holding freshly initialised weights: no training needed."""
  model = train.build_model(config)
  seq_len = config.data.seq_len
  params, state = model.init(
    jax.random.PRNGKey(0),
    inputs=np.zeros((1, seq_len), np.int32),
    input_mask=np.ones((1, seq_len), np.int32),
  )
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  ckpt.save(
    1,
    trainer.TrainState(
      step=jnp.ones((), jnp.int32),
      params=params,
      state=state,
      opt_state=jnp.zeros(()),
    ),
  )
  ckpt.close()
  writer = metrics_writer.MetricsWriter(workdir, is_chief=True)
  writer.write_config(config, {'experiment': experiment})


class ToolOutputTest(absltest.TestCase):
  def test_fill_mask_prints_only_its_answer(self):
    workdir = self.create_tempdir().full_path
    config = masked_lm_config.get_config('local,tiny')
    write_untrained_run(workdir, config, 'experiments.masked_lm.train')
    out = run_program(
      'masked_lm.fill_mask',
      f'--checkpoint={workdir}',
      '--text=the cat [[sat]] on',
    )
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    lines = out.stdout.splitlines()
    self.assertLen(lines, 2, out.stdout)
    self.assertTrue(lines[0].startswith('the cat '), lines)
    self.assertIn('bytes 8:11 -> ', lines[1])
    # No orbax or absl INFO lines (`I1204 ...`) and no orbax warnings.
    self.assertEqual(out.stderr.strip(), '', out.stderr[-2000:])


class MessageTest(absltest.TestCase):
  def test_unwraps_key_errors_and_joins_lines(self):
    error = AttributeError(KeyError('\'x\'\nDid you mean "y"?'))
    self.assertEqual(cli.message(error), '\'x\' Did you mean "y"?')
    self.assertEqual(
      cli.message(FileNotFoundError(2, 'No such file', '/a')),
      "[Errno 2] No such file: '/a'",
    )

  def test_verbose_flag_is_seen_before_parsing(self):
    self.assertTrue(cli._verbose_in(['prog', '--verbose_errors']))
    self.assertTrue(cli._verbose_in(['prog', '--verbose_errors=true']))
    self.assertFalse(cli._verbose_in(['prog', '--verbose_errors=false']))
    self.assertFalse(cli._verbose_in(['prog', '--noverbose_errors']))
    self.assertFalse(cli._verbose_in(['prog', '--', '--verbose_errors']))

  def test_override_error_names_the_argument(self):
    text = cli._override_error(
      '\'batch_sise\' Did you mean "batch_size"?',
      ['prog', '--config.seed=1', '--config.batch_sise=3'],
    )
    self.assertEqual(
      text,
      "no config key 'batch_sise' in --config.batch_sise=3. Did you mean "
      '"batch_size"?',
    )


if __name__ == '__main__':
  absltest.main()
