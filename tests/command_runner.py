r"""Runs one documented command the way a user would, with test stand-ins.

  python tests/command_runner.py [--mock=imagenet|tfds] \
    [--released_sizes=PARITY_CASE] -- python -m MODULE ARGS...

runs `python -m MODULE ARGS...` in this process (so the stand-ins below are
in place) with `sys.argv` as the shell would give it, and exits with the
program's status. `python -c CODE` and `python FILE.py` work the same way.

Stand-ins, none of which changes the program's code path:
- `--mock=tfds`: `tfds.testing.mock_data` (random examples of the real
  features) for every TFDS dataset, such as c4, wikipedia and glue.
- `--mock=imagenet`: mock `imagenet2012` of JPEGs of mixed sizes.
- `--released_sizes=CASE`: `perceiver_io.models.get_config` returns the
  sizes of the parity case `tests/testdata/parity/CASE.json` for that case's
  architecture, so a command that names a released checkpoint runs on the
  small released-format file the test put under the released name.
"""

import runpy
import sys

sys.path.insert(0, __file__.rsplit('/', 1)[0])
import search_paths  # noqa: E402

search_paths.add_to_sys_path()


def _released_sizes(case):
  import json

  import parity_test
  from perceiver_io import models

  name = dict(parity_test.CASES)[case]
  description = json.loads(
    (parity_test.PARITY_DIR / f'{case}.json').read_text(encoding='utf-8')
  )
  real_get_config = models.get_config

  def get_config(arch):
    if arch == name:
      models.get_config = real_get_config
      try:
        config = parity_test.config_for_case(name, description)
        if 'image_size' in config and 'image_size' in description['case']:
          size = description['case']['image_size']
          config.image_size = (size, size) if isinstance(size, int) else size
        return config
      finally:
        models.get_config = get_config
    return real_get_config(arch)

  models.get_config = get_config


def _mock(kind):
  import tensorflow_datasets as tfds

  if kind == 'imagenet':
    import image_classification_test

    return image_classification_test._fake_imagenet(  # pylint: disable=protected-access
      num_examples=12, num_classes=5
    )
  if kind == 'tfds':
    return tfds.testing.mock_data(num_examples=16)
  raise SystemExit(f'command_runner: unknown --mock={kind}')


def main(argv):
  options, command = {}, []
  for i, arg in enumerate(argv):
    if arg == '--':
      command = argv[i + 1 :]
      break
    key, _, value = arg.lstrip('-').partition('=')
    options[key] = value
  if not command or command[0] not in ('python', 'python3'):
    raise SystemExit('command_runner: give -- python -m MODULE ARGS...')
  if 'released_sizes' in options:
    _released_sizes(options['released_sizes'])
  mock = _mock(options['mock']) if 'mock' in options else None
  if mock is not None:
    mock.__enter__()
  if command[1] == '-m':
    sys.argv = [command[2], *command[3:]]
    runpy.run_module(command[2], run_name='__main__', alter_sys=True)
  elif command[1] == '-c':
    sys.argv = ['-c', *command[3:]]
    exec(compile(command[2], '<string>', 'exec'), {'__name__': '__main__'})  # noqa: S102
  else:
    sys.argv = command[1:]
    runpy.run_path(command[1], run_name='__main__')


if __name__ == '__main__':
  main(sys.argv[1:])
