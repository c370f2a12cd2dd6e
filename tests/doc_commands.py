"""The commands and Python snippets written in README.md and docs/*.md.

`extract()` finds them: every line of a shell code block (``` with no
language, or sh/bash/shell), joined over trailing backslashes, and every
inline code span that starts with `python -m` or `python -c`; every ```python
block is a snippet. `docs_commands_test.py` runs each one at tiny sizes.
"""

import dataclasses
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_GLOBS = ('README.md', 'docs/*.md')
SHELL_LANGUAGES = ('', 'sh', 'bash', 'shell', 'console')
_FENCE = re.compile(r'^\s*```(\w*)\s*$')
_INLINE = re.compile(r'`(python3? -[mc] [^`]+)`')


@dataclasses.dataclass(frozen=True)
class Found:
  """One command or snippet, where it was written."""

  text: str  # A command normalised by `normalize`, or a snippet as written.
  kind: str  # 'command' or 'python'.
  where: str  # 'path:line'.


def normalize(command: str) -> str:
  """The command's shell words, re-joined: spacing and comments do not count.

  Raises:
    ValueError: if the shell cannot split it (an unclosed quote).
  """
  return ' '.join(shlex.quote(w) for w in shlex.split(command, comments=True))


def doc_files() -> list[pathlib.Path]:
  files = []
  for pattern in DOC_GLOBS:
    files.extend(sorted(ROOT.glob(pattern)))
  return files


def extract(path: pathlib.Path) -> list[Found]:
  """The commands and snippets of one markdown file, in order."""
  found = []
  rel = path.relative_to(ROOT)
  lines = path.read_text(encoding='utf-8').splitlines()
  i = 0
  while i < len(lines):
    match = _FENCE.match(lines[i].strip())
    if not match:
      for inline in _INLINE.finditer(lines[i]):
        found.append(
          Found(normalize(inline.group(1)), 'command', f'{rel}:{i + 1}')
        )
      i += 1
      continue
    language, start = match.group(1).lower(), i + 1
    i += 1
    block = []
    while i < len(lines) and lines[i].strip() != '```':
      block.append(lines[i])
      i += 1
    i += 1  # The closing fence.
    if language == 'python':
      found.append(Found('\n'.join(block) + '\n', 'python', f'{rel}:{start}'))
    elif language in SHELL_LANGUAGES:
      logical, first = '', None
      for offset, line in enumerate(block):
        if first is None:
          first = start + offset + 1
        if line.rstrip().endswith('\\'):
          logical += line.rstrip()[:-1] + ' '
          continue
        logical += line
        if normalize(logical):
          found.append(Found(normalize(logical), 'command', f'{rel}:{first}'))
        logical, first = '', None
  return found


def extract_all() -> list[Found]:
  found = []
  for path in doc_files():
    found.extend(extract(path))
  return found


# --- How docs_commands_test runs a command ---


@dataclasses.dataclass(frozen=True)
class Run:
  """Run the command with `extra` flags appended.

  files: scratch-directory paths to create, each from a `_FILES` maker name.
  mock: command_runner's `--mock` ('tfds', 'imagenet').
  released_sizes: command_runner's `--released_sizes` (a parity case).
  needs: the documented command whose outputs this one reads.
  expect: a regex the output must contain.
  env: extra environment variables.
  check: a `_CHECKS` name: a function of the test and the scratch directory
    that inspects what the command wrote.
  """

  extra: tuple[str, ...] = ()
  files: tuple[tuple[str, str], ...] = ()
  mock: str = ''
  released_sizes: str = ''
  needs: str = ''
  expect: str = ''
  env: tuple[tuple[str, str], ...] = ()
  check: str = ''


@dataclasses.dataclass(frozen=True)
class Names:
  """An inline mention of a program; the module must exist and run `main`."""

  module: str


@dataclasses.dataclass(frozen=True)
class NotRun:
  reason: str


def steps(n=2):
  """Flags that shrink a training command to `n` steps."""
  return (
    f'--config.num_train_steps={n}',
    f'--config.log_every_steps={n}',
    f'--config.eval_every_steps={n}',
    f'--config.checkpoint_every_steps={n}',
    '--config.schedule.warmup_steps=1',
  )
