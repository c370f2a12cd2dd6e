"""Every command and Python snippet in README.md and docs/ runs, at tiny sizes.

`REGISTRY` holds, for each command as written in the docs, how the test runs
it: the command itself, with flags appended that only shrink step counts and
sizes or point data paths at test fixtures (absl takes the last value of a
flag), in a scratch directory that holds the files the command names.
Commands that cannot run here (installs, downloads, the test command itself)
are listed with the reason. A command in the docs that is not in the
registry fails `test_every_documented_command_is_registered`, and a
registered command that is no longer in the docs fails
`test_every_registered_command_is_documented`: editing a documented command
means updating its entry here. A task adds its own entries in
`tests/experiments/<task>/<task>_docs.py` (see `_merge_task_fragments`).

The commands run in one scratch directory, in registry order, so that
`runs/mlm` exists for the commands that read it.
"""

import functools
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import doc_commands
import flow_fixtures
import parity_test
import safe_pickle_test
import trainer_test

ROOT = doc_commands.ROOT
Names = doc_commands.Names
NotRun = doc_commands.NotRun
Run = doc_commands.Run
steps = doc_commands.steps
PARITY = ROOT / 'tests' / 'testdata' / 'parity'
RUNNER = ROOT / 'tests' / 'command_runner.py'
TIMEOUT_S = 300


DIGITS = 'python -m experiments.image_classification --config=configs/image_classification.py:digits --workdir=runs/digits'
MLM = 'python -m experiments.masked_lm --config=configs/masked_lm.py:local --workdir=runs/mlm'
FLOW = 'python -m experiments.optical_flow --config=configs/optical_flow.py:local --workdir=runs/flow'
CONVERT = 'python -m perceiver_io.pretrained imagenet_conv_preprocessing.pystate imagenet_conv.npz'
FILL_OURS = 'python -m experiments.masked_lm.fill_mask --checkpoint=runs/mlm \'--text=The "if" statement is used for conditional[[ execution]]:\''
FILL_RELEASED = "python -m experiments.masked_lm.fill_mask --checkpoint=language_perceiver_io_bytes.pickle '--text=This is an incomplete sentence where some words are missing.' --spans=51:60"

_MLM_TINY = (
  *steps(),
  '--config.eval_batch_size=512',
)
_LANGUAGE_SMALL_GLUE = (
  '--config.batch_size=4',
  '--config.eval_batch_size=8',
  '--config.data.seq_len=32',
  '--config.num_epochs=0.01',
  '--config.num_train_steps=-1',
)
_FLOW_TINY = (
  *steps(),
  '--config.data.num_eval_pairs=2',
  '--config.eval_batch_size=2',
  '--config.batch_size=2',
  '--config.data.num_workers=1',
)
_FLOW_FIXTURES = (
  ('fixtures/AutoFlow', 'autoflow'),
  ('fixtures/Sintel', 'sintel'),
  ('fixtures/KITTI', 'kitti'),
)
_FLOW_ROOTS = (
  '--config.data.root=fixtures/AutoFlow',
  '--config.eval.sintel_root=fixtures/Sintel',
  '--config.eval.kitti_root=fixtures/KITTI',
  '--config.eval.tile_batch_size=2',
  '--config.eval.min_overlap=4',
)
_TFDS_MLM_TINY = (
  *steps(),
  '--config.batch_size=2',
  '--config.eval_batch_size=2',
  '--config.model.max_seq_len=32',
  '--config.data.seq_len=32',
  '--config.model.d_model=16',
  '--config.model.encoder.num_self_attends_per_block=1',
  '--config.model.encoder.z_index_dim=4',
  '--config.model.encoder.num_z_channels=16',
  '--config.model.encoder.qk_channels=8',
  '--config.model.encoder.v_channels=16',
  '--config.model.decoder.qk_channels=8',
  '--config.data.num_eval_examples=4',
  '--config.data.shuffle_buffer=4',
)

REGISTRY = {
  'pip install -r requirements.txt && pip install -e .': NotRun(
    'the install: .ci/run runs it on a clean checkout before the tests'
  ),
  DIGITS: Run(steps(4), expect=r'eval/accuracy='),
  'python -m pytest tests': NotRun('the test command itself: CI runs it'),
  "pip install 'jax[cuda13]==0.10.2'": NotRun(
    'needs an NVIDIA GPU; test_accelerator_pins_match_requirements checks '
    'the version'
  ),
  "pip install 'jax[cuda12]==0.10.2'": NotRun(
    'needs an NVIDIA GPU; the version is checked as above'
  ),
  "pip install 'jax[tpu]==0.10.2'": NotRun(
    'needs a Cloud TPU VM; the version is checked as above'
  ),
  "python -c 'import jax; print(jax.devices())'": Run(expect=r'CpuDevice'),
  MLM: Run(_MLM_TINY, expect=r'eval/masked_accuracy='),
  'python -m experiments.masked_lm.fill_mask': Names(
    'experiments.masked_lm.fill_mask'
  ),
  'python -m experiments.glue': Names('experiments.glue'),
  FLOW: Run(_FLOW_TINY, expect=r'eval/epe='),
  'python -m experiments.optical_flow.predict': Names(
    'experiments.optical_flow.predict'
  ),
  CONVERT: Run(
    files=(('imagenet_conv_preprocessing.pystate', 'imagenet_conv_pystate'),),
    released_sizes='imagenet_conv_small',
    expect=r'imagenet_conv\.npz',
  ),
  'python -m experiments.masked_lm --config=configs/masked_lm.py:local --workdir=runs/mlm_notes --config.data.source=files '
  "'--config.data.files=~/notes/*.txt,~/books/*.md'": Run(
    _MLM_TINY,
    files=(('home/notes/a.txt', 'text'), ('home/books/b.md', 'text')),
    env=(('HOME', 'home'),),
    expect=r'eval/masked_accuracy=',
  ),
  'python -m experiments.masked_lm --config=configs/masked_lm.py:paper --workdir=runs/mlm_paper': Run(
    _TFDS_MLM_TINY, mock='tfds', expect=r'eval/masked_accuracy='
  ),
  FILL_OURS: Run(needs=MLM, expect=r'bytes \d+:\d+ -> '),
  FILL_RELEASED: Run(
    files=(('language_perceiver_io_bytes.pickle', 'language_pickle'),),
    released_sizes='language_small',
    expect=r'bytes 51:60 -> ',
  ),
  'python -m experiments.glue --config=configs/glue.py:mrpc --config.init_from=language_perceiver_io_bytes.pickle '
  '--workdir=runs/glue/mrpc': Run(
    _LANGUAGE_SMALL_GLUE,
    files=(('language_perceiver_io_bytes.pickle', 'language_pickle'),),
    released_sizes='language_small',
    mock='tfds',
    expect=r'eval/score=',
  ),
  'python -m experiments.glue --config=configs/glue.py:variant=local --config.init_from=runs/mlm --tasks=all --grid '
  '--workdir=runs/glue': Run(
    (
      *_LANGUAGE_SMALL_GLUE,
      '--config.grid.batch_sizes=4',
      '--config.grid.learning_rates=1e-4',
    ),
    needs=MLM,
    mock='tfds',
    expect=r'GLUE average',
    check='glue_summary',
  ),
  'python -m experiments.optical_flow --config=configs/optical_flow.py:paper --workdir=runs/flow_autoflow '
  '--config.data.root=/data/AutoFlow --config.eval.sintel_root=/data/Sintel --config.eval.kitti_root=/data/KITTI': Run(
    (*_FLOW_TINY, *_FLOW_ROOTS, '--config.num_epochs=-1'),
    files=_FLOW_FIXTURES,
    released_sizes='optical_flow_small',
    expect=r"sintel_clean: \{'epe'",
  ),
  'python -m experiments.optical_flow --config=configs/optical_flow.py:paper --config.mode=eval '
  '--config.init_from=optical_flow_checkpoint.pystate --config.eval.sintel_root=/data/Sintel '
  '--config.eval.kitti_root=/data/KITTI --workdir=runs/flow_eval': Run(
    _FLOW_ROOTS,
    files=(
      *_FLOW_FIXTURES,
      ('optical_flow_checkpoint.pystate', 'flow_pystate'),
    ),
    released_sizes='optical_flow_small',
    expect=r"kitti: \{'epe'",
  ),
  'python -m experiments.optical_flow.predict --checkpoint=optical_flow_checkpoint.pystate --frame1=a.png --frame2=b.png '
  '--output=out/flow': Run(
    files=(
      ('optical_flow_checkpoint.pystate', 'flow_pystate'),
      ('a.png', 'frame1'),
      ('b.png', 'frame2'),
    ),
    released_sizes='optical_flow_small',
    expect=r'out/flow\.png',
  ),
  'python -m benchmarks.init_time': Run(
    ('--models=small',), expect=r'small first init: compiled is'
  ),
  'XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.image_classification '
  '--config=configs/image_classification.py:digits --workdir=runs/digits_8': Run(
    steps(4), expect=r'Devices: 8 \(1 processes\)'
  ),
  'python -m experiments.multiprocess --num_processes=2 --devices_per_process=4 -- -m '
  'experiments.image_classification --config=configs/image_classification.py:digits '
  '--workdir=runs/digits_2x4': Run(
    steps(2), expect=r'Devices: 8 \(2 processes\)'
  ),
  'srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 python -m experiments.image_classification '
  '--config=configs/image_classification.py:fourier --workdir=/shared/runs/imagenet': NotRun(
    'needs a SLURM GPU cluster; multiprocess_test runs the same code path'
  ),
  'JAX_COORDINATOR_ADDRESS=10.0.0.1:8476 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=0 python -m '
  'experiments.image_classification --config=configs/image_classification.py:fourier '
  '--workdir=/shared/runs/imagenet': NotRun(
    'needs 4 hosts; parallel_test checks that these variables reach '
    'jax.distributed.initialize and multiprocess_test runs that code path'
  ),
  "gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --command='cd perceiver-io "
  '&& python -m experiments.image_classification --config=configs/image_classification.py:fourier '
  "--workdir=gs://my-bucket/runs/imagenet --jax_distributed'": NotRun(
    'needs a Cloud TPU pod slice'
  ),
  'python -m experiments.image_classification --config=configs/image_classification.py:fourier '
  '--workdir=runs/imagenet_b256 --config.batch_size=256 --config.num_epochs=10 --config.schedule.base_lr=1e-3 '
  '--config.model.encoder.num_blocks=4 --config.data.data_dir=/data/tfds': Run(
    (
      *steps(),
      '--config.num_epochs=-1',
      '--config.batch_size=4',
      '--config.eval_batch_size=4',
      '--config.data.image_size=16',
      '--config.data.shuffle_buffer=4',
      '--config.data.num_train_examples=12',
    ),
    released_sizes='imagenet_fourier_small',
    mock='imagenet',
    expect=r'eval/accuracy=',
  ),
  'wget https://storage.googleapis.com/perceiver_io/imagenet_fourier_position_encoding.pystate': NotRun(
    'a download; the next command runs on a released-format file instead'
  ),
  'python -m experiments.image_classification --config=configs/image_classification.py:fourier --workdir=runs/eval_ff '
  '--config.mode=eval --config.init_from=imagenet_fourier_position_encoding.pystate '
  '--config.data.data_dir=/path/to/tensorflow_datasets': Run(
    ('--config.data.image_size=16', '--config.eval_batch_size=4'),
    files=(
      (
        'imagenet_fourier_position_encoding.pystate',
        'imagenet_fourier_pystate',
      ),
    ),
    released_sizes='imagenet_fourier_small',
    mock='imagenet',
    expect=r'eval/top_5_accuracy=',
  ),
}

# Python snippets: the first line that is not an import, and how to run it.
SNIPPETS = {
  "model = pretrained.load('imagenet_fourier_position_encoding.pystate')": Run(
    files=(
      (
        'imagenet_fourier_position_encoding.pystate',
        'imagenet_fourier_pystate',
      ),
    ),
    released_sizes='imagenet_fourier_small',
    # The snippet's `images`: the parity case's own inputs.
    env=(('DOC_SNIPPET_PRELUDE', 'images'),),
  ),
  "config = models.get_config('imagenet_fourier_position_encoding')": Run(
    expect=r'^546645$'
  ),
  "run = runs.load_run('runs/digits')  # The newest checkpoint; step=N for another.": Run(
    needs=DIGITS,
    expect=r'^step 4: held-out accuracy 0\.\d+$',
    check='load_run',
  ),
  "lm = fill_mask.load_language_model('language_perceiver_io_bytes.pickle')": Run(
    files=(('language_perceiver_io_bytes.pickle', 'language_pickle'),),
    released_sizes='language_small',
    expect=r'This is an incomplete sentence where some words are',
  ),
}


# --- Files the commands name ---


def _released_pickle(case, path):
  _, params, state, _, _ = parity_test.load_case(case)
  tree = safe_pickle_test.released_layout(params, state if state else None)
  path.write_bytes(safe_pickle_test.dumps(tree, protocol=4))


def _frame(index, path):
  from experiments.optical_flow import flow_files

  pair = flow_fixtures._pairs((24, 32), 1, seed=5)[0]  # pylint: disable=protected-access
  flow_files.write_image(str(path), pair['frames'][index])


_FILES = {
  'imagenet_conv_pystate': lambda p: shutil.copy(
    PARITY / 'imagenet_conv_small.pystate', p
  ),
  'imagenet_fourier_pystate': functools.partial(
    _released_pickle, 'imagenet_fourier_small'
  ),
  'flow_pystate': functools.partial(_released_pickle, 'optical_flow_small'),
  'language_pickle': lambda p: shutil.copy(PARITY / 'language_small.pickle', p),
  'text': lambda p: p.write_text(
    'Perceiver IO reads bytes of any text. ' * 40, encoding='utf-8'
  ),
  'frame1': functools.partial(_frame, 0),
  'frame2': functools.partial(_frame, 1),
  'autoflow': lambda p: flow_fixtures.make_autoflow(str(p), size=(12, 16)),
  'sintel': lambda p: flow_fixtures.make_sintel(str(p), size=(12, 20)),
  'kitti': lambda p: flow_fixtures.make_kitti(
    str(p), sizes=((12, 20), (13, 22))
  ),
}


# What each GLUE task's final eval must report (besides score and loss).
_GLUE_METRICS = {
  'cola': ('matthews_corr', 'accuracy'),
  'stsb': ('pearson', 'spearman'),
  'mnli': ('matched/accuracy', 'mismatched/accuracy'),
  'mrpc': ('f1', 'accuracy'),
  'qqp': ('f1', 'accuracy'),
}


def _check_glue_summary(test, cwd, output):
  """Every task ran from our MLM; summary.json averages the 8 tasks."""
  del output
  from experiments.glue import data as task_data
  from experiments.glue import metrics as task_metrics
  from experiments.glue import train

  workdir = cwd / 'runs' / 'glue'
  summary = json.loads((workdir / train.SUMMARY_FILE).read_text())
  test.assertTrue(summary['complete'], summary)
  test.assertEqual(summary['num_average_tasks'], 8)
  scores = {}
  for task in task_data.TASKS:
    result = train.final_eval(str(workdir / task / 'bs4_lr0.0001'))
    test.assertIsNotNone(result, task)
    for key in (*_GLUE_METRICS.get(task, ('accuracy',)), 'score', 'loss'):
      test.assertTrue(np.isfinite(result[key]), f'{task}: {key}')
    # Mock splits hold 16 examples; MNLI evaluates two of them.
    test.assertEqual(result['count'], 32 if task == 'mnli' else 16, task)
    test.assertAlmostEqual(
      summary['tasks'][task]['score'], 100 * result['score']
    )
    scores[task] = result['score']
  test.assertAlmostEqual(
    summary['glue_average'], 100 * task_metrics.glue_average(scores)['average']
  )


def _check_load_run(test, cwd, output):
  """The snippet's accuracy is the run's own last eval/accuracy."""
  from experiments import metrics_writer

  printed = float(re.search(r'held-out accuracy ([\d.]+)', output).group(1))
  records = metrics_writer.read_metrics(str(cwd / 'runs' / 'digits'))
  logged = [r['eval/accuracy'] for r in records if 'eval/accuracy' in r][-1]
  test.assertAlmostEqual(printed, logged, places=3)


_CHECKS = {'glue_summary': _check_glue_summary, 'load_run': _check_load_run}


def _snippet_key(snippet):
  for line in snippet.splitlines():
    line = line.strip()
    if line and not line.startswith(('import ', 'from ', '#')):
      return line
  return snippet.strip()


def _documented():
  found = doc_commands.extract_all()
  commands = {}
  snippets = {}
  for item in found:
    if item.kind == 'command':
      commands.setdefault(item.text, item.where)
    else:
      snippets.setdefault(_snippet_key(item.text), (item.where, item.text))
  return commands, snippets


def _merge_task_fragments():
  """Adds the entries of every task's `tests/experiments/<task>/<task>_docs.py`.

  A fragment is a module that defines `REGISTRY` and optionally `SNIPPETS`,
  `FILES` (maker name -> function of the path) and `CHECKS` (name -> function
  of the test, the scratch directory and the output), as above; its commands
  run after the ones here, in the same scratch directory. A key that two
  places define is an error.
  """
  for path in sorted((ROOT / 'tests').glob('experiments/*/*_docs.py')):
    fragment = importlib.import_module(path.stem)
    for mine, theirs in (
      (REGISTRY, getattr(fragment, 'REGISTRY', {})),
      (SNIPPETS, getattr(fragment, 'SNIPPETS', {})),
      (_FILES, getattr(fragment, 'FILES', {})),
      (_CHECKS, getattr(fragment, 'CHECKS', {})),
    ):
      twice = sorted(set(mine) & set(theirs))
      if twice:
        raise ValueError(f'{path.name} redefines {twice}')
      mine.update(theirs)


_merge_task_fragments()

_NORMALIZED = {doc_commands.normalize(k): v for k, v in REGISTRY.items()}


class RegistryTest(absltest.TestCase):
  def test_every_documented_command_is_registered(self):
    commands, snippets = _documented()
    missing = [f'{w}: {c}' for c, w in commands.items() if c not in _NORMALIZED]
    missing += [
      f'{w}: python snippet starting {k!r}'
      for k, (w, _) in snippets.items()
      if k not in SNIPPETS
    ]
    self.assertEmpty(
      missing,
      'Documented commands without an entry in tests/docs_commands_test.py '
      'REGISTRY or SNIPPETS, or a task fragment <task>_docs.py (add one that runs them at tiny sizes):\n'
      + '\n'.join(missing),
    )

  def test_every_registered_command_is_documented(self):
    commands, snippets = _documented()
    stale = [c for c in _NORMALIZED if c not in commands]
    stale += [k for k in SNIPPETS if k not in snippets]
    self.assertEmpty(
      stale,
      'Registered commands that no doc contains any more (update or remove '
      'their entries):\n' + '\n'.join(stale),
    )

  def test_accelerator_pins_match_requirements(self):
    pins = dict(
      line.split('==')
      for line in (ROOT / 'requirements.txt').read_text().splitlines()
      if '==' in line and not line.startswith('#')
    )
    commands, _ = _documented()
    accelerator = [c for c in commands if re.match(r"pip install 'jax\[", c)]
    self.assertNotEmpty(accelerator)
    for command in accelerator:
      version = re.search(r'==([\w.]+)', command).group(1)
      self.assertEqual(version, pins['jax'], command)

  def test_extractor_finds_blocks_inline_and_continuations(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = pathlib.Path(tmp) / 'doc.md'
      path.write_text(
        'Run `python -m a --x=1` now.\n\n```\npython -m b \\\n  --y=2  # c\n'
        '```\n\n```text\nnot a command\n```\n\n```python\nimport os\nos.sep\n'
        '```\n',
        encoding='utf-8',
      )
      root = doc_commands.ROOT
      try:
        doc_commands.ROOT = pathlib.Path(tmp)
        found = doc_commands.extract(path)
      finally:
        doc_commands.ROOT = root
    self.assertEqual(
      [(f.kind, f.text) for f in found],
      [
        ('command', 'python -m a --x=1'),
        ('command', 'python -m b --y=2'),
        ('python', 'import os\nos.sep\n'),
      ],
    )


class CommandsTest(parameterized.TestCase):
  """Runs every registered command, in one scratch directory."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cwd = pathlib.Path(tempfile.mkdtemp(prefix='doc_commands_'))
    # The commands name configs/... and tests/...: the repository's, linked.
    for name in (
      'benchmarks',
      'configs',
      'experiments',
      'perceiver_io',
      'tests',
    ):
      (cls.cwd / name).symlink_to(ROOT / name)
    cls.done = {}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.cwd, ignore_errors=True)
    super().tearDownClass()

  def _run(self, words, spec, what):
    for path, maker in spec.files:
      target = self.cwd / path
      if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _FILES[maker](target)
    if spec.needs and spec.needs not in self.done:
      self._run(shlex.split(spec.needs), REGISTRY[spec.needs], spec.needs)
    env = dict(os.environ)
    while words and re.match(r'^[A-Z_][A-Z0-9_]*=', words[0]):
      key, value = words[0].split('=', 1)  # A shell `NAME=value command`.
      env[key] = value
      words = words[1:]
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    env.update(trainer_test.compilation_cache_env())
    for key, value in spec.env:
      env[key] = str(self.cwd / value) if key == 'HOME' else value
    options = []
    if spec.mock:
      options.append(f'--mock={spec.mock}')
    if spec.released_sizes:
      options.append(f'--released_sizes={spec.released_sizes}')
    argv = [sys.executable, str(RUNNER), *options, '--', *words, *spec.extra]
    result = subprocess.run(
      argv,
      cwd=self.cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
      check=False,
    )
    output = result.stdout + result.stderr
    self.assertEqual(
      result.returncode,
      0,
      f'{what}\nexited with {result.returncode}:\n{output[-4000:]}',
    )
    if spec.expect:
      self.assertRegex(
        output, re.compile(spec.expect, re.M), f'{what}\n{output[-4000:]}'
      )
    if spec.check:
      _CHECKS[spec.check](self, self.cwd, output)
    self.done[what] = output
    return output

  @parameterized.named_parameters(
    (f'{i:02d}', command) for i, command in enumerate(REGISTRY)
  )
  def test_command(self, command):
    spec = REGISTRY[command]
    if isinstance(spec, NotRun):
      self.skipTest(spec.reason)
    if isinstance(spec, Names):
      module = importlib.util.find_spec(spec.module)
      self.assertIsNotNone(module, command)
      if module.submodule_search_locations is not None:
        # A task package: `python -m` runs its __main__.py.
        module = importlib.util.find_spec(f'{spec.module}.__main__')
        self.assertIsNotNone(module, command)
      source = pathlib.Path(module.origin).read_text(encoding='utf-8')
      self.assertIn("if __name__ == '__main__':", source)
      return
    if command not in self.done:
      self._run(shlex.split(command), spec, command)

  @parameterized.named_parameters(
    (f'{i:02d}', key) for i, key in enumerate(SNIPPETS)
  )
  def test_snippet(self, key):
    _, snippets = _documented()
    self.assertIn(key, snippets, 'The snippet is not in the docs any more.')
    where, text = snippets[key]
    spec = SNIPPETS[key]
    if dict(spec.env).get('DOC_SNIPPET_PRELUDE') == 'images':
      case = spec.released_sizes
      text = (
        'import numpy as np\n'
        f"images = np.load('{PARITY / case}.npz')['inputs/images']\n" + text
      )
    self._run(['python', '-c', text], spec, f'the snippet at {where}')


if __name__ == '__main__':
  absltest.main()
