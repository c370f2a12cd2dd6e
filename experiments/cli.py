"""What every command-line program shares: short errors and quiet libraries.

Each program ends with `cli.run(main)` instead of `app.run(main)`:

  if __name__ == '__main__':
    trainer.define_flags()
    cli.run(main)

A mistake the user can fix -- a typo in a `--config.*` override, a config
file that does not load, a missing or unreadable file, a workdir that is a
file, a checkpoint that does not fit -- is printed as one line (two at most)
on stderr that names the thing, and the program exits with status 2 (flags
and config) or 1 (everything else):

  image_classification: error: no config key 'batch_sise' in
    --config.batch_sise=3. Did you mean "batch_size" instead of "batch_sise"?
  (--verbose_errors shows the traceback)

`--verbose_errors` re-raises instead, with the full traceback. Errors that
are not the user's (a TypeError, a KeyError, an XLA failure) always keep
their traceback.

Logs: the training programs keep absl INFO (the progress line) but drop the
checkpoint library's (orbax's) records below WARNING; the tools
(`tool=True`: masked_lm.fill_mask, optical_flow.predict), whose output is
their answer, show only warnings and errors, and none of orbax's below ERROR (its warnings there
are about the read-only way we open checkpoints). `--verbosity` or `-v`
given on the command line wins.
"""

import logging as std_logging
import os
import pickle
import re
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging

VERBOSE_FLAG = 'verbose_errors'
# Exit statuses: a bad flag or config (as argparse), any other user error.
USAGE_ERROR = 2
FAILURE = 1
_HINT = f'(--{VERBOSE_FLAG} shows the traceback)'


class UserError(Exception):
  """A mistake the user can fix; `run` prints its message, no traceback.

  The message names the thing that is wrong (a flag, a config key, a file,
  the workdir) and how to fix it.
  """


# Exceptions whose message is written for the user: this code base raises
# ValueError (bad values, mismatching checkpoints), OSError (files) and
# pickle.UnpicklingError (damaged checkpoint files) with messages that name
# the thing, and FloatingPointError for a diverged run.
USER_ERRORS = (
  UserError,
  OSError,
  ValueError,
  pickle.UnpicklingError,
  FloatingPointError,
)


def define_flags() -> None:
  """Defines `--verbose_errors` (once; `run` calls this)."""
  if VERBOSE_FLAG not in flags.FLAGS:
    flags.DEFINE_bool(
      VERBOSE_FLAG,
      False,
      'Show the full traceback of configuration, flag and file errors '
      'instead of a one-line message.',
    )


def run(main: Callable[[list[str]], Any], *, tool: bool = False) -> None:
  """`app.run(main)` with short user errors and quiet library logs.

  Args:
    main: the absl main, `main(argv)`.
    tool: a command whose output is its answer (masked_lm.fill_mask,
      optical_flow.predict): only warnings and errors are logged.
  """
  define_flags()

  def wrapped(argv):
    _check_config_flags(argv)
    quiet_library_logs(tool=tool)
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS[VERBOSE_FLAG].value:
        raise
      fail(message(e), FAILURE)

  app.run(wrapped, flags_parser=parse_flags)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses `argv` into `flags.FLAGS`; a bad flag or override is one line."""
  try:
    return flags.FLAGS(list(argv))
  except Exception as e:  # Flag, config file and override errors alike.
    if _verbose_in(argv):
      raise
    if isinstance(e, flags.Error):
      text = _flag_error(str(e))
    else:  # ml_collections raises KeyError/AttributeError for a bad key.
      text = _override_error(message(e), argv)
    fail(text, USAGE_ERROR, hint='(--helpshort lists the flags)')
    raise  # Not reached: fail exits.


def fail(text: str, status: int, hint: str = _HINT) -> None:
  """Prints `<program>: error: text` and the hint on stderr; exits."""
  sys.stdout.flush()
  print(f'{program_name()}: error: {text}', file=sys.stderr)
  if hint:
    print(hint, file=sys.stderr)
  sys.stderr.flush()
  sys.exit(status)


def program_name() -> str:
  """'image_classification' for `python -m experiments.image_classification`.

  A command inside a task package keeps its package: 'optical_flow.predict'.
  """
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  if spec is not None and spec.name.startswith('experiments.'):
    return spec.name.removeprefix('experiments.').removesuffix('.__main__')
  return os.path.splitext(os.path.basename(sys.argv[0] or 'python'))[0]


def message(error: BaseException) -> str:
  """The readable text of an exception, unwrapping `KeyError('...')` repr
  quoting and exceptions wrapped in exceptions (as ml_collections does)."""
  while (
    len(error.args) == 1
    and isinstance(error.args[0], BaseException)
    and not isinstance(error, OSError)
  ):
    error = error.args[0]
  if isinstance(error, KeyError) and len(error.args) == 1:
    text = str(error.args[0])
  else:
    text = str(error)
  if not isinstance(error, (UserError, OSError)) and not text:
    text = type(error).__name__
  return ' '.join(text.split())  # One line: newlines become spaces.


def _verbose_in(argv: Sequence[str]) -> bool:
  """Whether `--verbose_errors` is on the command line (before parsing)."""
  verbose = False
  for arg in argv[1:]:
    if arg == '--':
      break
    name, _, value = arg.lstrip('-').partition('=')
    if name == VERBOSE_FLAG:
      verbose = value.lower() not in ('0', 'false', 'no')
    elif name == 'no' + VERBOSE_FLAG:
      verbose = False
  return verbose


def _flag_error(text: str) -> str:
  """absl's message, with a config file's embedded traceback cut down to
  its last line (the exception that `get_config` raised)."""
  if 'Traceback (most recent call last)' in text:
    head = text.split('Traceback (most recent call last)', maxsplit=1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = f'{head.strip()} {lines[-1]}'
  return ' '.join(text.split())


def _override_error(text: str, argv: Sequence[str]) -> str:
  """'no config key 'x' in --config.x=1. Did you mean ...' for a typo."""
  match = re.match(r"'([^']*)'(.*)", text)
  if not match:
    return f'bad --config override: {text}'
  key, rest = match.group(1), match.group(2).strip()
  culprits = [
    arg
    for arg in argv[1:]
    if arg.startswith('--')
    and '.' in arg.split('=')[0]
    and key in arg.split('=')[0].split('.')[1:]
  ]
  where = f' in {culprits[0]}' if culprits else ''
  suggestion = f' {rest}' if rest else ''
  return f'no config key {key!r}{where}.{suggestion}'


def _check_config_flags(argv: Sequence[str]) -> None:
  """Fails in one line if a `--config` file did not load.

  ml_collections defers a config file's IOError until the config is used,
  which would surface as a traceback deep inside `main`.
  """
  for name in list(flags.FLAGS):
    value = flags.FLAGS[name].value
    if type(value).__name__ != '_ErrorConfig':
      continue
    if _verbose_in(argv):
      return
    error = vars(value).get('_error')
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    given = next(
      (a for a in sys.argv[1:] if a.split('=')[0].lstrip('-') == name),
      f'--{name}',
    )
    fail(
      f'cannot load the config file of {given}: {lines[-1] if lines else ""}',
      USAGE_ERROR,
      hint=f'(--{name}=path/to/config.py[:argument])',
    )


# --- Logs ---


class _DropLibraryRecords(std_logging.Filter):
  """Drops orbax's records below `level`."""

  def __init__(self, level):
    super().__init__()
    self.level = level

  def filter(self, record):
    return record.levelno >= self.level or 'orbax' not in record.pathname


_FILTERS = {}


def quiet_library_logs(tool: bool = False) -> None:
  """Keeps orbax's chatter out of a program's output.

  Args:
    tool: True for a command whose output is its answer: absl verbosity
      WARNING (unless `--verbosity`/`-v` was given) and orbax only from
      ERROR. False (training): absl INFO, orbax from WARNING.
  """
  level = std_logging.ERROR if tool else std_logging.WARNING
  absl_logger = std_logging.getLogger('absl')
  if 'filter' in _FILTERS:
    absl_logger.removeFilter(_FILTERS['filter'])
  _FILTERS['filter'] = _DropLibraryRecords(level)
  absl_logger.addFilter(_FILTERS['filter'])
  verbosity_given = 'verbosity' in flags.FLAGS and (
    flags.FLAGS['verbosity'].present
  )
  if not verbosity_given:
    logging.set_verbosity(logging.WARNING if tool else logging.INFO)
