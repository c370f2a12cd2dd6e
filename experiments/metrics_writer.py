"""Metrics out of the loop: `metrics.jsonl`, TensorBoard and a progress line.

Only process 0 writes files; other processes get a writer that does nothing,
so the loop can call it unconditionally.
"""

import json
import math
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from experiments import config_utils

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
TENSORBOARD_DIR = 'tensorboard'
# The config.json entry saying what started the run (not a config key).
RUN_KEY = 'run'
_JSON_STYLE = dict(indent=2, sort_keys=True)
# Keys of the header record, written once per run (again only if they change).
_HEADER_KEYS = ('num_devices', 'num_processes', 'num_params')


def config_record(config, run=None, **resolved: Any) -> dict[str, Any]:
  """What `write_config` stores, as plain JSON values (tuples are lists)."""
  data = config_utils.to_dict(config)
  data.update(resolved)
  if run is not None:
    data[RUN_KEY] = dict(run)
  return json.loads(json.dumps(data, default=str))


# The program modules of the version before one package per task.
_EARLIER_PROGRAMS = (
  'experiments.image_classification',
  'experiments.masked_lm',
  'experiments.optical_flow',
  'experiments.glue',
)


def read_config(workdir: str) -> dict[str, Any] | None:
  """`workdir/config.json` as a dict, in today's keys; None if there is none.

  A config of an earlier version has its keys moved where they live now
  (`config_utils.upgrade_config_record`).

  Raises:
    ValueError: if the file is not a JSON object, naming it.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(
      f'{path} is corrupt ({e}). The trainer writes it when a run starts; '
      'restore it from a copy (config.<step>.json, if there is one), or '
      'start a new run in another workdir.'
    ) from e
  if not isinstance(data, dict):
    raise ValueError(
      f'{path} holds a {type(data).__name__}, not a config object.'
    )
  data = config_utils.upgrade_config_record(data)
  run = data.get(RUN_KEY)
  if isinstance(run, dict) and run.get('experiment') in _EARLIER_PROGRAMS:
    # Earlier versions recorded the flat program module; `build_model` now
    # lives in the task package's `train` module.
    data[RUN_KEY] = dict(run, experiment=run['experiment'] + '.train')
  return data


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of `workdir/metrics.jsonl` (an empty list if none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Writes `metrics.jsonl`, TensorBoard scalars and the resolved config."""

  def __init__(self, workdir: str, is_chief: bool | None = None):
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0 if is_chief is None else is_chief
    self._tb = None
    self._tb_output = None
    self._purge_step = None
    if self.is_chief:
      os.makedirs(workdir, exist_ok=True)

  @property
  def path(self) -> str:
    return os.path.join(self.workdir, METRICS_FILE)

  def write_config(
    self, config, run: dict[str, Any] | None = None, **resolved: Any
  ) -> None:
    """Saves the config, plus run-time resolved values, as `config.json`.

    Args:
      config: the experiment config.
      run: what started the run (`experiment`, `config`), stored under
        `RUN_KEY` so that `experiments.runs.load_run` knows the model.
      **resolved: values resolved at run time, e.g. `num_train_steps`.
    """
    if not self.is_chief:
      return
    _atomic_write(
      os.path.join(self.workdir, CONFIG_FILE),
      json.dumps(config_record(config, run, **resolved), **_JSON_STYLE) + '\n',
    )

  def keep_config(self, step: int) -> str | None:
    """Copies `config.json` to `config.<step>.json` (the config the run used
    up to `step`) before a changed config replaces it; returns the copy."""
    source = os.path.join(self.workdir, CONFIG_FILE)
    if not self.is_chief or not os.path.exists(source):
      return None
    target = os.path.join(self.workdir, f'config.{int(step)}.json')
    with open(source, encoding='utf-8') as f:
      _atomic_write(target, f.read())
    return target

  def resume_at(self, step: int) -> None:
    """Drops records after `step`: a killed run may have logged past its
    last checkpoint, and the resumed run will log those steps again.

    In TensorBoard, this process's event file starts with a
    `SessionLog.START` at `step + 1`. TensorBoard takes the first START of a
    run as its start and each later one as a restart, dropping the points
    of earlier files from that step on (its `purge_orphaned_data`), so the
    replayed steps appear once.
    """
    if not self.is_chief:
      return
    self._purge_step = int(step) + 1
    if self._tb is not None:
      self._tb_output.emit_session_start(self._purge_step)
    if not os.path.exists(self.path):
      return
    records = read_metrics(self.workdir)
    kept = [r for r in records if r.get('step', 0) <= step]
    if len(kept) != len(records):
      logging.info(
        'Dropping %d metrics records after step %d.',
        len(records) - len(kept),
        step,
      )
      _atomic_write(self.path, ''.join(_dumps(r) for r in kept))

  def write_header(self, **values: Any) -> None:
    """Records `num_devices` etc. once, or again if they changed."""
    if not self.is_chief:
      return
    last = {}
    for record in read_metrics(self.workdir):
      last.update({k: record[k] for k in _HEADER_KEYS if k in record})
    if any(last.get(k) != v for k, v in values.items()):
      step = max((r['step'] for r in read_metrics(self.workdir)), default=0)
      self._append({'step': step, **values})

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Appends one record and the matching TensorBoard scalars."""
    if not self.is_chief:
      return
    record = {'step': int(step), **metrics}
    self._append(record)
    tb = self._tensorboard()
    for key, value in metrics.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        tb.add_scalar(key, value, int(step))
    tb.flush()

  def _append(self, record):
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(_dumps(record))
      f.flush()

  def _tensorboard(self):
    if self._tb is None:
      if '://' not in self.workdir and 'tensorflow' not in sys.modules:
        # TensorBoard would import all of TensorFlow (seconds) just for file
        # IO; its built-in stub writes local files fine.
        sys.modules.setdefault(
          'tensorboard.compat.notf', types.ModuleType('tensorboard.compat.notf')
        )
      from tensorboard import summary

      self._tb_output = _make_event_output(
        os.path.join(self.workdir, TENSORBOARD_DIR)
      )
      if self._purge_step is not None:
        self._tb_output.emit_session_start(self._purge_step)
      self._tb = summary.Writer(self._tb_output)
    return self._tb

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _make_event_output(logdir):
  """A TensorBoard `DirectoryOutput` that can also write a session START."""
  from tensorboard import summary
  from tensorboard.compat.proto import event_pb2

  class EventOutput(summary.DirectoryOutput):
    def __init__(self, path):
      super().__init__(path)
      # DirectoryOutput's event file; the public Writer has no session log.
      self._events = self._ev_writer

    def emit_session_start(self, step):
      self._events.add_event(
        event_pb2.Event(
          wall_time=time.time(),
          step=step,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
      )

  return EventOutput(logdir)


def _dumps(record):
  return json.dumps(record, sort_keys=False) + '\n'


def _atomic_write(path, text):
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class Progress:
  """Steps/s, examples/s and an ETA from steady-state step times.

  The first step after a start or restart compiles (seconds to minutes);
  the loop calls `mark_steady` once it has finished, and neither the rates
  nor the ETA count the time before. Steps/s is over the window since the
  last update; the ETA uses the mean step time since `mark_steady`.
  """

  def __init__(
    self,
    num_steps: int,
    batch_size: int,
    start_step: int = 0,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.num_steps = num_steps
    self.batch_size = batch_size
    self._clock = clock
    self._last_step = start_step
    self._last_time = clock()
    self._first_time = self._last_time
    self._steady = None  # (step, time) after the compiling step.
    self._rate = 0.0

  def mark_steady(self, step: int) -> None:
    """Call when `step`, the first after the start, has finished."""
    self._steady = (step, self._clock())
    self._last_step, self._last_time = self._steady

  def update(self, step: int) -> None:
    """Call after the metrics of `step` were fetched (the device is done)."""
    now = self._clock()
    elapsed = now - self._last_time
    if step > self._last_step and elapsed > 0:
      self._rate = (step - self._last_step) / elapsed
    self._last_step, self._last_time = step, now
    if self._steady is None:  # Never marked: the first window compiled.
      self._steady = (step, now)

  def rates(self) -> dict[str, float]:
    return {
      'perf/steps_per_sec': self._rate,
      'perf/examples_per_sec': self._rate * self.batch_size,
    }

  def eta_seconds(self) -> float:
    """Remaining steps times the mean steady step time; inf if unknown."""
    if self._steady is None:
      return float('inf')
    steady_step, steady_time = self._steady
    steps, elapsed = (
      self._last_step - steady_step,
      self._last_time - steady_time,
    )
    if steps <= 0 or elapsed <= 0:
      return float('inf')
    return (self.num_steps - self._last_step) * elapsed / steps

  def line(self, step: int, metrics: dict[str, Any]) -> str:
    """'step 120/1000 (12%) | loss 0.53 | 9.1 steps/s | 580 ex/s | ETA 1m36s'."""
    shown = [
      f'{k} {v:.4g}'
      for k, v in metrics.items()
      if isinstance(v, float) and '/' not in k
    ]
    elapsed = self._clock() - self._first_time
    return ' | '.join(
      [
        f'step {step}/{self.num_steps} ({100 * step / self.num_steps:.0f}%)',
        *shown,
        f'{self._rate:.2f} steps/s',
        f'{self._rate * self.batch_size:.1f} ex/s',
        f'elapsed {format_duration(elapsed)}',
        f'ETA {format_duration(self.eta_seconds())}',
      ]
    )


def format_duration(seconds: float) -> str:
  """1h02m, 3m05s, 42s; '?' when unknown."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'
