"""A task whose training is stopped by SIGTERM, for resume tests."""

import dataclasses
import os
import signal


def sigterm_at_step(task, step):
  """`task` whose batches send SIGTERM while the batch of `step` is read.

  The trainer saves at the end of the step it is in and stops, so a run of
  the returned task ends preempted after step `step` (1-based).
  """
  inner = task.train_batches

  def batches(start_step):
    for i, batch in enumerate(inner(start_step)):
      if start_step + i == step - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  return dataclasses.replace(task, train_batches=batches)
