"""2 processes x 4 CPU devices train like 1 process x 8 (jax.distributed).

Runs experiments.multiprocess (localhost coordinator, gloo collectives) on a
shrunken digits config for 12 steps and compares with one 8-device process:
the same losses step by step, one writer of metrics, a checkpoint that resumes with 2
processes and restores in 1, and a dead process that stops the launch with
an error naming it.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import metrics_writer
from experiments import multiprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
STEPS = 12
FLAGS = (
  '--config=configs/image_classification.py:digits',
  f'--config.num_train_steps={STEPS}',
  '--config.schedule.warmup_steps=2',
  '--config.log_every_steps=1',
  f'--config.eval_every_steps={STEPS}',
  f'--config.checkpoint_every_steps={STEPS // 2}',
  '--config.batch_size=16',
  '--config.eval_batch_size=40',
)
MODULE = ('-m', 'experiments.image_classification')


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', **extra)
  env.pop('XLA_FLAGS', None)
  return env


def _one_process(workdir):
  subprocess.run(
    [sys.executable, *MODULE, *FLAGS, f'--workdir={workdir}'],
    cwd=ROOT,
    env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=8'),
    check=True,
    capture_output=True,
  )


def _two_processes(workdir, logs):
  multiprocess.launch(
    [*MODULE, *FLAGS, f'--workdir={workdir}'],
    num_processes=2,
    devices_per_process=4,
    env={'PYTHONPATH': ROOT},
    log_dir=str(logs),
  )


def _losses(workdir):
  records = metrics_writer.read_metrics(str(workdir))
  return {r['step']: r['loss'] for r in records if 'loss' in r}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('mp')
  old = os.getcwd()
  os.chdir(ROOT)
  try:
    _two_processes(tmp / 'two', tmp / 'logs')
    _one_process(tmp / 'one')
  finally:
    os.chdir(old)
  return tmp


def test_two_processes_match_one(runs):
  one, two = _losses(runs / 'one'), _losses(runs / 'two')
  assert sorted(one) == list(range(1, STEPS + 1))
  assert sorted(two) == sorted(one)
  np.testing.assert_allclose(
    [two[s] for s in sorted(one)], [one[s] for s in sorted(one)], rtol=1e-5
  )
  header = metrics_writer.read_metrics(str(runs / 'two'))[0]
  assert header['num_processes'] == 2 and header['num_devices'] == 8


def test_only_process_0_writes(runs):
  # Two writers would append every record twice.
  steps = [r['step'] for r in metrics_writer.read_metrics(str(runs / 'two'))]
  assert len(steps) == len(set(steps)) == STEPS + 1
  assert sorted(os.listdir(runs / 'two' / 'checkpoints'), key=int) == [
    str(STEPS // 2),
    str(STEPS),
  ]
  for i in range(2):
    log = (runs / 'logs' / f'process_{i}.log').read_text()
    assert 'Devices: 8 (2 processes)' in log


def _cut_at_half(src, dst):
  """A copy of run `src` as if it had stopped after its first checkpoint."""
  shutil.copytree(src, dst)
  shutil.rmtree(dst / 'checkpoints' / str(STEPS))


def test_resumes_with_two_and_restores_in_one(runs):
  full = _losses(runs / 'two')
  _cut_at_half(runs / 'two', runs / 'resume2')
  _cut_at_half(runs / 'two', runs / 'resume1')
  old = os.getcwd()
  os.chdir(ROOT)
  try:
    _two_processes(runs / 'resume2', runs / 'logs_resume')
    _one_process(runs / 'resume1')
  finally:
    os.chdir(old)
  later = range(STEPS // 2 + 1, STEPS + 1)
  for name in ('resume2', 'resume1'):
    resumed = _losses(runs / name)
    np.testing.assert_allclose(
      [resumed[s] for s in later], [full[s] for s in later], rtol=1e-5
    )
  log = (runs / 'logs_resume' / 'process_1.log').read_text()
  assert f'at step {STEPS // 2}' in log


def test_dead_process_stops_the_others(tmp_path):
  # Process 1 dies; process 0 waits in a collective that never completes.
  (tmp_path / 'dies.py').write_text(
    textwrap.dedent("""
      import os
      import jax
      from jax.experimental import multihost_utils
      if jax.process_index() == 1:
        os._exit(3)
      for _ in range(10**6):
        multihost_utils.sync_global_devices('wait')
    """)
  )
  with pytest.raises(multiprocess.ProcessFailedError, match='process 1 of 2'):
    multiprocess.launch(
      ['-m', 'dies'],
      num_processes=2,
      devices_per_process=1,
      grace_s=2,
      env={'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}'},
      log_dir=str(tmp_path / 'logs'),
    )
