"""Tests of the shared loop on a tiny Haiku MLP (no Perceiver needed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import metrics_writer_test
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

import tiny_task
from experiments import checkpointing
from experiments import metrics_writer
from experiments import trainer
from tiny_task import make_config
from tiny_task import make_task

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


_CACHE_DIR = []


def compilation_cache_env():
  """Env for subprocesses sharing one persistent XLA compilation cache.

  The reference, killed and resumed runs of a test compile the same
  programs; the cache spares the later ones the compile time (and loads the
  very same executables).
  """
  if not _CACHE_DIR:
    _CACHE_DIR.append(tempfile.mkdtemp(prefix='jax_cache_'))
  return {
    'JAX_COMPILATION_CACHE_DIR': _CACHE_DIR[0],
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }


def _no_perf(record):
  return {k: v for k, v in record.items() if not k.startswith('perf/')}


class TrainerTest(parameterized.TestCase):
  def test_trains_logs_and_checkpoints(self):
    workdir = self.create_tempdir().full_path
    final = trainer.train_and_evaluate(make_config(), workdir, make_task())
    records = metrics_writer.read_metrics(workdir)
    self.assertEqual(records[0]['num_devices'], jax.device_count())
    self.assertEqual(sum('num_devices' in r for r in records), 1)
    train = [r for r in records if 'loss' in r]
    self.assertEqual([r['step'] for r in train], list(range(5, 41, 5)))
    self.assertLess(train[-1]['loss'], train[0]['loss'])
    evals = [r for r in records if 'eval/accuracy' in r]
    self.assertEqual([r['step'] for r in evals], [20, 40])
    self.assertEqual(evals[-1]['eval/count'], 96)
    self.assertEqual(final['eval/accuracy'], evals[-1]['eval/accuracy'])
    self.assertEqual(final['step'], 40)
    self.assertFalse(final['preempted'])
    self.assertIn('perf/steps_per_sec', train[-1])
    self.assertIn('learning_rate', train[-1])
    ckpt = checkpointing.Checkpointer(workdir)
    self.assertEqual(ckpt.all_steps(), [20, 30, 40])  # keep=3
    ckpt.close()
    with open(os.path.join(workdir, 'config.json')) as f:
      saved = json.load(f)
    self.assertEqual(saved['num_train_steps'], 40)
    self.assertTrue(os.listdir(os.path.join(workdir, 'tensorboard')))

  def test_restart_after_finish_changes_nothing(self):
    workdir = self.create_tempdir().full_path
    first = trainer.train_and_evaluate(make_config(), workdir, make_task())
    again = trainer.train_and_evaluate(make_config(), workdir, make_task())
    self.assertEqual(_no_perf(first), _no_perf(again))

  def test_resume_in_process_is_exact(self):
    full_dir = self.create_tempdir().full_path
    full = trainer.train_and_evaluate(make_config(), full_dir, make_task())
    part_dir = self.create_tempdir().full_path
    # Stop early by training a prefix with the same schedule length: a
    # checkpoint at step 20 of a 40-step run, then resume.
    task = make_task()
    preempting = trainer.Task(
      **{**task.__dict__, 'train_batches': _stop_after(task.train_batches, 20)}
    )
    partial = trainer.train_and_evaluate(make_config(), part_dir, preempting)
    self.assertTrue(partial['preempted'])
    self.assertEqual(partial['step'], 20)
    resumed = trainer.train_and_evaluate(make_config(), part_dir, make_task())
    self.assertEqual(_no_perf(full), _no_perf(resumed))
    full_records = [_no_perf(r) for r in metrics_writer.read_metrics(full_dir)]
    part_records = [_no_perf(r) for r in metrics_writer.read_metrics(part_dir)]
    self.assertEqual(full_records, part_records)

  def test_resume_with_a_changed_config(self):
    workdir = self.create_tempdir().full_path
    short = dict(num_train_steps=10, eval_every_steps=10)
    trainer.train_and_evaluate(make_config(**short), workdir, make_task())
    config_path = os.path.join(workdir, 'config.json')

    def saved():
      with open(config_path) as f:
        return json.load(f)

    self.assertEqual(saved()['run'], {'experiment': 'tiny_task'})
    # Refused: names every changed key, old -> new; config.json unchanged.
    changed = make_config(**short, batch_size=32)
    changed.schedule.base_lr = 0.5
    with self.assertRaisesRegex(
      ValueError,
      r'batch_size: 16 -> 32; schedule.base_lr: 0.01 -> 0.5\. .*'
      r'--allow_config_change',
    ):
      trainer.train_and_evaluate(changed, workdir, make_task())
    self.assertEqual(saved()['batch_size'], 16)
    # Training longer changes the schedule too: refused.
    with self.assertRaisesRegex(ValueError, 'num_train_steps: 10 -> 20'):
      trainer.train_and_evaluate(
        make_config(num_train_steps=20), workdir, make_task()
      )
    # The listed keys may change freely; the config records them.
    final = trainer.train_and_evaluate(
      make_config(**short, log_every_steps=2, checkpoint_keep=5),
      workdir,
      make_task(),
    )
    self.assertEqual(final['step'], 10)
    self.assertEqual(saved()['log_every_steps'], 2)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'config.10.json')))
    # Allowed: trains on with the new config; the old one is kept.
    final = trainer.train_and_evaluate(
      make_config(num_train_steps=20),
      workdir,
      make_task(),
      allow_config_change=True,
    )
    self.assertEqual(final['step'], 20)
    self.assertEqual(saved()['num_train_steps'], 20)
    with open(os.path.join(workdir, 'config.10.json')) as f:
      self.assertEqual(json.load(f)['num_train_steps'], 10)

  def test_a_fresh_workdir_takes_any_config(self):
    # Killed before its first checkpoint: nothing to be consistent with.
    workdir = self.create_tempdir().full_path
    metrics_writer.MetricsWriter(workdir).write_config(make_config())
    final = trainer.train_and_evaluate(
      make_config(num_train_steps=5, batch_size=32), workdir, make_task()
    )
    self.assertEqual(final['step'], 5)

  def test_final_metrics_say_which_step_they_were_measured_at(self):
    workdir = self.create_tempdir().full_path
    task = make_task()
    preempting = trainer.Task(
      **{**task.__dict__, 'train_batches': _stop_after(task.train_batches, 27)}
    )
    partial = trainer.train_and_evaluate(make_config(), workdir, preempting)
    # Logged every 5 steps, evaluated every 20, stopped at 27.
    self.assertTrue(partial['preempted'])
    self.assertEqual(list(partial)[:3], ['step', 'train_step', 'eval_step'])
    self.assertEqual(
      (partial['step'], partial['train_step'], partial['eval_step']),
      (27, 25, 20),
    )
    records = {r['step']: r for r in metrics_writer.read_metrics(workdir)}
    self.assertEqual(partial['loss'], records[25]['loss'])
    self.assertEqual(partial['eval/accuracy'], records[20]['eval/accuracy'])
    final = trainer.train_and_evaluate(make_config(), workdir, make_task())
    self.assertEqual(
      (final['step'], final['train_step'], final['eval_step']), (40, 40, 40)
    )
    # A restart of the finished run reports the same steps.
    again = trainer.train_and_evaluate(make_config(), workdir, make_task())
    self.assertEqual(_no_perf(again), _no_perf(final))

  def test_tensorboard_keeps_one_point_per_step_after_resume(self):
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(make_config(), workdir, make_task())
    # As if killed after logging step 40 with only checkpoints up to 20.
    for step in (30, 40):
      shutil.rmtree(os.path.join(workdir, 'checkpoints', str(step)))
    time.sleep(1.1)  # Event file names carry the time in seconds.
    trainer.train_and_evaluate(make_config(), workdir, make_task())
    points = metrics_writer_test.tensorboard_points(workdir, 'loss')
    steps = [step for step, _ in points]
    self.assertEqual(steps, list(range(5, 41, 5)))
    losses = [
      r['loss'] for r in metrics_writer.read_metrics(workdir) if 'loss' in r
    ]
    np.testing.assert_allclose([v for _, v in points], losses, rtol=1e-6)

  def test_grad_accumulation_matches_full_batch(self):
    results = []
    for accum in (1, 4):
      workdir = self.create_tempdir().full_path
      config = make_config(
        grad_accum_steps=accum, num_train_steps=5, checkpoint_every_steps=5
      )
      trainer.train_and_evaluate(config, workdir, make_task(dropout=0.0))
      params, _ = checkpointing.load_params_and_state(workdir)
      results.append(params)
    for a, b in zip(
      jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)

  def test_nan_loss_stops_naming_step_without_checkpoint(self):
    workdir = self.create_tempdir().full_path
    task = make_task(poison_step=12)  # Batch 12 is used by step 13.
    with self.assertRaisesRegex(FloatingPointError, 'at step 13'):
      trainer.train_and_evaluate(make_config(), workdir, task)
    ckpt = checkpointing.Checkpointer(workdir)
    self.assertEqual(ckpt.all_steps(), [10])
    ckpt.close()

  def test_batch_size_not_divisible_by_accumulation(self):
    with self.assertRaisesRegex(ValueError, 'not divisible.*grad_accum'):
      trainer.train_and_evaluate(
        make_config(grad_accum_steps=3),
        self.create_tempdir().full_path,
        make_task(),
      )

  def test_eval_mode_reports_without_training(self):
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(make_config(), workdir, make_task())
    other = self.create_tempdir().full_path
    result = trainer.train_and_evaluate(
      make_config(mode='eval', init_from=workdir), other, make_task()
    )
    records = metrics_writer.read_metrics(workdir)
    self.assertEqual(result['eval/accuracy'], records[-1]['eval/accuracy'])
    self.assertEqual(result['step'], 0)

  def test_init_from_mismatch_names_parameter_and_shapes(self):
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(
      make_config(num_train_steps=5, checkpoint_every_steps=5),
      workdir,
      make_task(),
    )
    task = make_task()
    x = np.zeros((2, 5), np.float32)  # 5 inputs instead of 8.
    task = trainer.Task(**{**task.__dict__, 'init_batch': {'x': x}})
    with self.assertRaisesRegex(
      ValueError,
      r"'linear/w' has shape \(8, 32\) in the checkpoint but "
      r'\(5, 32\) in the model',
    ):
      trainer.train_and_evaluate(
        make_config(init_from=workdir), self.create_tempdir().full_path, task
      )
    # The same mismatch when resuming from the workdir itself.
    with self.assertRaisesRegex(ValueError, "'linear/w'"):
      trainer.train_and_evaluate(
        make_config(num_train_steps=5, checkpoint_every_steps=5),
        workdir,
        task,
      )

  def test_unknown_mode(self):
    with self.assertRaisesRegex(ValueError, 'config.mode'):
      trainer.train_and_evaluate(
        make_config(mode='test'), self.create_tempdir().full_path, make_task()
      )

  def test_update_fn_is_pure_and_folds_step_into_rng(self):
    task = make_task()
    optimizer = optax.sgd(0.1)
    update = jax.jit(
      trainer.make_update_fn(task.loss_fn, optimizer, jax.random.PRNGKey(0))
    )
    params, state = task.model.init(
      jax.random.PRNGKey(1), is_training=True, x=np.zeros((2, 8), np.float32)
    )
    ts = trainer.TrainState(
      jnp.zeros((), jnp.int32), params, state, optimizer.init(params)
    )
    batch = next(task.train_batches(0))
    a, ma = update(ts, batch)
    b, mb = update(ts, batch)
    self.assertEqual(float(ma['loss']), float(mb['loss']))
    c, mc = update(ts._replace(step=jnp.ones((), jnp.int32)), batch)
    # Dropout differs with the step, so the loss does too.
    self.assertNotEqual(float(ma['loss']), float(mc['loss']))
    self.assertEqual(int(a.step), 1)
    del b, c


def _stop_after(train_batches, num_batches):
  """Batches that send SIGTERM to this process after `num_batches`."""

  def batches(start_step):
    for i, batch in enumerate(train_batches(start_step)):
      if start_step + i == num_batches - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  return batches


class SubprocessTest(parameterized.TestCase):
  """Real processes: SIGKILL mid-run, then restart; and 8 fake devices."""

  def _script(self):
    return tiny_task.__file__

  def _env(self, devices=1):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
      [
        REPO,
        os.path.join(REPO, 'tests', 'experiments'),
        env.get('PYTHONPATH', ''),
      ]
    )
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    env.update(compilation_cache_env())
    return env

  def _run(self, script, workdir, steps, devices=1):
    out = subprocess.run(
      [sys.executable, script, workdir, str(steps)],
      env=self._env(devices),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    line = [s for s in out.stdout.splitlines() if s.startswith('FINAL')][-1]
    return json.loads(line[len('FINAL ') :])

  def test_sigkill_and_restart_is_bitwise_identical(self):
    script = self._script()
    steps = 30
    reference_dir = self.create_tempdir().full_path
    reference = self._run(script, reference_dir, steps)

    workdir = self.create_tempdir().full_path
    proc = subprocess.Popen(
      [sys.executable, script, workdir, str(steps), '0.15'],
      env=self._env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    deadline = time.time() + 240
    # Kill once a checkpoint exists and the run is past it, mid-interval.
    while time.time() < deadline:
      if os.path.isdir(os.path.join(ckpt_dir, '10')):
        break
      time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    records = metrics_writer.read_metrics(workdir)
    self.assertLess(max(r['step'] for r in records), steps)

    resumed = self._run(script, workdir, steps)
    self.assertEqual(_no_perf(reference), _no_perf(resumed))
    ref_records = [
      _no_perf(r) for r in metrics_writer.read_metrics(reference_dir)
    ]
    res_records = [_no_perf(r) for r in metrics_writer.read_metrics(workdir)]
    self.assertEqual(ref_records, res_records)
    ref_params, _ = checkpointing.load_params_and_state(reference_dir)
    res_params, _ = checkpointing.load_params_and_state(workdir)
    for a, b in zip(
      jax.tree.leaves(ref_params), jax.tree.leaves(res_params), strict=True
    ):
      np.testing.assert_array_equal(a, b)

  def test_sigterm_saves_then_exits(self):
    script = self._script()
    workdir = self.create_tempdir().full_path
    proc = subprocess.Popen(
      [sys.executable, script, workdir, '200', '0.05'],
      env=self._env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.isdir(
      os.path.join(workdir, 'checkpoints', '5')
    ):
      time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 0)
    final = json.loads(stdout.split('FINAL ', 1)[1])
    self.assertTrue(final['preempted'])
    ckpt = checkpointing.Checkpointer(workdir)
    self.assertEqual(ckpt.latest_step(), final['step'])
    self.assertGreater(final['step'], 5)
    ckpt.close()

  def test_eight_fake_devices(self):
    script = self._script()
    one = self._run(script, self.create_tempdir().full_path, 10, devices=1)
    workdir = self.create_tempdir().full_path
    eight = self._run(script, workdir, 10, devices=8)
    records = metrics_writer.read_metrics(workdir)
    self.assertEqual(records[0]['num_devices'], 8)
    # Same global batch, so the same numbers up to float reassociation.
    self.assertAlmostEqual(one['loss'], eight['loss'], places=4)
    self.assertAlmostEqual(
      one['eval/accuracy'], eight['eval/accuracy'], places=6
    )

  def test_batch_not_divisible_by_devices(self):
    code = textwrap.dedent("""
      from tiny_task import *
      import tempfile
      try:
        trainer.train_and_evaluate(make_config(batch_size=12),
                                   tempfile.mkdtemp(), make_task(12))
      except ValueError as e:
        print('ERROR', e)
    """)
    out = subprocess.run(
      [sys.executable, '-c', code],
      env=self._env(8),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    self.assertIn(
      'ERROR config.batch_size=12 is not divisible by the number '
      'of devices (8)',
      out.stdout,
      out.stderr[-2000:],
    )


if __name__ == '__main__':
  absltest.main()
