"""experiments.autoregressive: data held out by file, n-gram, loss, resume."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import preemption
from absl.testing import absltest

from configs import autoregressive as ar_config
from experiments import metrics_writer
from experiments import runs
from experiments import trainer
from experiments.autoregressive import data
from experiments.autoregressive import generate
from experiments.autoregressive import latent_sweep
from experiments.autoregressive import ngram
from experiments.autoregressive import train
from perceiver_io import generation

SOURCE = (
  'def f(x):\n  """Doubles x."""\n  return 2 * x\n\n'
  'class A:\n  def g(self, y):\n    return [y] * 3\n'
)


def _write_tree(root, num_files=24):
  """A small source tree: files with varied text, a test dir, a cache dir."""
  for i in range(num_files):
    folder = os.path.join(root, f'pkg{i % 3}')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'm{i}.py'), 'w') as f:
      f.write(f'# module {i}\n' + SOURCE * (2 + i % 4))
  for skipped in ('tests', '__pycache__'):
    os.makedirs(os.path.join(root, skipped), exist_ok=True)
    with open(os.path.join(root, skipped, 'x.py'), 'w') as f:
      f.write('skipped = True\n')
  return root


def tiny_config(root, **overrides):
  config = ar_config.get_config('local,tiny')
  config.data.root = root
  config.data.eval_percent = 25.0
  config.update(overrides)
  return config


def _no_perf(records):
  return [
    {k: v for k, v in r.items() if not k.startswith('perf/')} for r in records
  ]


class DataTest(absltest.TestCase):
  def test_files_are_held_out_whole_and_tests_skipped(self):
    root = _write_tree(self.create_tempdir().full_path)
    train_files, eval_files = data.split_files(root, 25.0)
    self.assertEmpty(set(train_files) & set(eval_files))
    self.assertLen(train_files + eval_files, 24)
    self.assertNotIn(os.path.join('tests', 'x.py'), train_files + eval_files)
    # The split depends on the path alone: the same on every machine.
    self.assertEqual(data.split_files(root, 25.0), (train_files, eval_files))
    stream = data.read_stream(root, eval_files)
    self.assertEqual(
      int(np.sum(stream == data.FILE_SEPARATOR[0])), len(eval_files)
    )

  def test_train_batches_restart_at_any_step(self):
    stream = np.frombuffer(SOURCE.encode() * 20, np.uint8)
    full = data.stream_train_batches(stream, 16, seed=3, batch_size=4)
    batches = [next(full) for _ in range(5)]
    resumed = data.stream_train_batches(
      stream, 16, seed=3, batch_size=4, start_step=3
    )
    np.testing.assert_array_equal(next(resumed)['tokens'], batches[3]['tokens'])
    self.assertEqual(batches[0]['tokens'].shape, (4, 17))
    # Each process gets its rows of the same global batch.
    half = data.stream_train_batches(
      stream, 16, seed=3, batch_size=4, process_index=1, process_count=2
    )
    np.testing.assert_array_equal(
      next(half)['tokens'], batches[0]['tokens'][2:]
    )

  def test_errors_name_the_problem(self):
    with self.assertRaisesRegex(FileNotFoundError, 'not a directory'):
      data.source_files('/no/such/dir')
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, r'No \*\.py files'):
      data.source_files(empty)
    stream = np.zeros(10, np.uint8)
    with self.assertRaisesRegex(ValueError, 'fewer than one window'):
      next(data.stream_train_batches(stream, 16, seed=0, batch_size=1))
    with self.assertRaisesRegex(ValueError, 'does not fit before'):
      data.stream_windows(stream, np.array([8]), 16)

  def test_eval_windows_end_at_the_same_places_for_any_context(self):
    root = _write_tree(self.create_tempdir().full_path)
    short = train.eval_set(tiny_config(root), context=8)
    long = train.eval_set(tiny_config(root), context=64)
    # The targets scored at the N = 8 latents are the same bytes.
    np.testing.assert_array_equal(
      short['tokens'][:, -8:], long['tokens'][:, -8:]
    )
    np.testing.assert_allclose(
      short['ngram_bits'][:, -8:], long['ngram_bits'][:, -8:]
    )


class NGramTest(absltest.TestCase):
  def test_matches_a_hand_computation(self):
    # Vocabulary {0, 1}, alpha 1, training stream 0 1 1 0 1.
    model = ngram.fit([np.array([0, 1, 1, 0, 1])], vocab_size=2, alpha=1.0)
    p1 = (np.array([2, 3]) + 0.5) / (5 + 1)  # Unigram over uniform.
    # After "1": bigrams 1->1 once, 1->0 once.
    p2_after_1 = (np.array([1, 1]) + p1) / (2 + 1)
    # After "0 1": trigrams 0 1 1 once.
    p3 = (np.array([0, 1]) + p2_after_1) / (1 + 1)
    np.testing.assert_allclose(ngram.probabilities(model, [0, 1]), p3)
    stream = np.array([1, 0, 1, 1])
    bits = ngram.bits(model, stream)
    expected = [
      -math.log2(ngram.probabilities(model, stream[:t])[stream[t]])
      for t in range(4)
    ]
    np.testing.assert_allclose(bits, expected)
    for history in ([], [1], [0, 1], [1, 1, 0]):
      self.assertAlmostEqual(ngram.probabilities(model, history).sum(), 1.0)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'order'):
      ngram.fit([np.zeros(3, np.int64)], order=4)
    with self.assertRaisesRegex(ValueError, 'alpha'):
      ngram.fit([np.zeros(3, np.int64)], alpha=0.0)
    with self.assertRaisesRegex(ValueError, r'Tokens must be in \[0, 4\)'):
      ngram.fit([np.array([5])], vocab_size=4)


class LossTest(absltest.TestCase):
  def test_loss_only_at_the_latents_and_any_n_at_eval(self):
    config = tiny_config('')
    model = train.build_model(config)
    m, n = config.model.max_context, config.model.num_latents
    tokens = np.random.default_rng(0).integers(0, 256, (2, m + 1))
    batch = {
      'tokens': tokens.astype(np.int32),
      'token_mask': np.ones_like(tokens, np.int32),
    }
    params, state = model.init(
      jax.random.PRNGKey(0), tokens=batch['tokens'][:, :-1]
    )
    params = jax.tree.map(lambda p: p + 0.1, params)  # Non-zero logits.
    loss_fn = train.make_loss_fn(model, z_loss=0.0, context_dropout=0.0)
    loss, (metrics, _) = jax.jit(loss_fn, static_argnums=4)(
      params, state, batch, None, False
    )
    logits, _ = jax.jit(model.apply)(
      params, state, None, tokens=batch['tokens'][:, :-1]
    )
    self.assertEqual(logits.shape, (2, n, 256))
    targets = tokens[:, -n:]
    log_p = jax.nn.log_softmax(logits, -1)
    nll = -np.take_along_axis(np.asarray(log_p), targets[..., None], -1)
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
    self.assertAlmostEqual(
      float(metrics['bits_per_byte']), float(nll.mean()) / math.log(2), 4
    )
    # Eval may use another N with the same parameters; padded examples
    # (mask 0) count nothing.
    eval_fn = train.make_eval_fn(model, num_latents=2 * n)
    sums = jax.jit(eval_fn)(
      params,
      state,
      dict(
        batch,
        ngram_bits=np.ones((2, m), np.float32),
        mask=np.array([1.0, 0.0], np.float32),
      ),
    )
    self.assertEqual(float(sums['targets']), 2 * n)  # One real example.
    self.assertEqual(float(sums['ngram_bits']), 2 * n)

  def test_prefix_dropout_keeps_the_latents(self):
    mask = jnp.ones((3, 20), jnp.int32)
    out = train.prefix_dropout(jax.random.PRNGKey(0), mask, 5, 0.9)
    np.testing.assert_array_equal(out[:, -5:], 1)
    self.assertLess(int(out[:, :-5].sum()), 3 * 15 // 2)
    np.testing.assert_array_equal(
      train.prefix_dropout(jax.random.PRNGKey(0), mask, 5, 0.0), mask
    )

  def test_config_errors(self):
    config = tiny_config('')
    config.model.num_latents = config.model.max_context + 1
    with self.assertRaisesRegex(ValueError, 'num_latents=.* must be in'):
      train.build_task(config)
    config = tiny_config('')
    config.model.depth = 3
    with self.assertRaisesRegex(ValueError, "Unknown config.model key 'depth'"):
      train.build_model(config)
    config = tiny_config(
      '',
    )
    config.data.source = 'web'
    with self.assertRaisesRegex(ValueError, "Unknown config.data.source 'web'"):
      train.eval_set(config)
    with self.assertRaisesRegex(ValueError, 'Unknown variant'):
      ar_config.get_config('wikitext')
    for arg in (
      'local',
      'local,context_factor=1',
      'pg19',
      'imagenet64',
      'local,tiny',
      'pg19,tiny',
      'imagenet64,tiny',
    ):
      config = ar_config.get_config(arg)
      train.build_model(config)
      self.assertLessEqual(config.model.num_latents, config.model.max_context)
    self.assertEqual(
      ar_config.get_config('local,context_factor=1').model.max_context, 256
    )
    self.assertEqual(ar_config.get_config('local').model.max_context, 2048)

  def test_tfds_dataset_not_prepared(self):
    config = ar_config.get_config('pg19,tiny')
    config.data.data_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, 'pg19.* is not prepared'):
      data.tfds_builder(config.data)
    config.data.tfds_name = 'enwik8'
    with self.assertRaisesRegex(ValueError, 'Unknown config.data.tfds_name'):
      data.tfds_builder(config.data)


class EndToEndTest(absltest.TestCase):
  def test_train_preempt_resume_exact(self):
    root = _write_tree(self.create_tempdir().full_path)
    config = tiny_config(root)
    full_dir = self.create_tempdir().full_path
    full = trainer.train_and_evaluate(
      config, full_dir, train.build_task(config)
    )
    part_dir = self.create_tempdir().full_path
    part = trainer.train_and_evaluate(
      config,
      part_dir,
      preemption.sigterm_at_step(train.build_task(config), 2),
    )
    self.assertTrue(part['preempted'])
    resumed = trainer.train_and_evaluate(
      config, part_dir, train.build_task(config)
    )
    self.assertEqual(
      _no_perf(metrics_writer.read_metrics(full_dir)),
      _no_perf(metrics_writer.read_metrics(part_dir)),
    )
    self.assertEqual(full['eval/bits_per_byte'], resumed['eval/bits_per_byte'])
    for key in (
      'eval/bits_per_byte',
      'eval/ngram_bits_per_byte',
      'eval/accuracy',
    ):
      self.assertTrue(np.isfinite(full[key]), key)
    self.assertGreater(full['eval/targets'], 0)


class GenerateTest(absltest.TestCase):
  def test_a_trained_run_generates_with_and_without_cache(self):
    root = _write_tree(self.create_tempdir().full_path)
    config = tiny_config(root)
    config.num_train_steps = 2
    workdir = self.create_tempdir().full_path
    trainer.train_and_evaluate(config, workdir, train.build_task(config))
    params, kwargs, n = generate.load(workdir)
    self.assertEqual(n, config.model.num_latents)
    prompt = b'def f(x):\n  return'
    outs = [
      generation.generate(
        params,
        prompt,
        model_kwargs=kwargs,
        num_latents=n,
        max_new_bytes=12,
        temperature=0.0,
        use_cache=use_cache,
      )
      for use_cache in (True, False)
    ]
    self.assertLen(outs[0], 12)
    self.assertEqual(outs[0], outs[1])
    # The trained parameters are the ones generation reads: its logits at
    # the latents equal the training model's.
    tokens = np.frombuffer(prompt, np.uint8).astype(np.int32)[None]
    model = train.build_model(config)
    logits, _ = model.apply(
      params, {}, None, tokens=tokens, num_latents=min(n, tokens.shape[1])
    )
    self.assertEqual(int(np.argmax(logits[0, -1])), outs[0][0])
    # The same run evaluated at other latent counts.
    run = runs.load_run(workdir)
    rows = latent_sweep.sweep(run, [2, n], batch_size=3)
    windows = config.data.num_eval_windows
    self.assertEqual([r['targets'] for r in rows], [2 * windows, n * windows])
    for row in rows:
      self.assertTrue(np.isfinite(row['bits_per_byte']))
      self.assertTrue(np.isfinite(row['ngram_bits_per_byte']))
    self.assertEqual(latent_sweep.default_latents(8, 20), [2, 4, 8, 16])
    with self.assertRaisesRegex(ValueError, 'N=99 must be in'):
      latent_sweep.sweep(run, [99])

  def test_prompt_fitting_and_errors(self):
    self.assertEqual(generate.fit_prompt(b'abcdef', 8, 4), b'cdef')
    self.assertEqual(generate.fit_prompt(b'ab', 8, 4), b'ab')
    with self.assertRaisesRegex(ValueError, 'prompt is empty'):
      generate.fit_prompt(b'', 8, 4)
    with self.assertRaisesRegex(ValueError, 'use at most 7'):
      generate.fit_prompt(b'ab', 8, 8)
    with self.assertRaisesRegex(ValueError, 'at least one'):
      generate.fit_prompt(b'ab', 8, 0)
    with self.assertRaisesRegex(FileNotFoundError, 'No run at'):
      generate.load(os.path.join(self.create_tempdir().full_path, 'nothing'))


if __name__ == '__main__':
  absltest.main()
