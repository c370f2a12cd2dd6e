"""Tests for experiments.masked_lm: init, loss, eval and a tiny run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import preemption
from absl.testing import absltest
from absl.testing import parameterized

from configs import masked_lm as masked_lm_config
from experiments import metrics_writer
from experiments import trainer
from experiments.masked_lm import train
from perceiver_io import models

TEXT = (
  'The "if" statement is used for conditional execution. It selects '
  'exactly one of the suites by evaluating the expressions one by one. '
  'Grüße, naïve café, 東京.\n'
)


def tiny_config(files, **overrides):
  config = masked_lm_config.get_config('local,tiny')
  config.data.source = 'files'
  config.data.files = files
  config.data.holdout_fraction = 0.3
  config.update(overrides)
  return config


def _no_perf(records):
  return [
    {k: v for k, v in r.items() if not k.startswith('perf/')} for r in records
  ]


def _ln(x):
  return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)


class InitTest(parameterized.TestCase):
  @parameterized.parameters(1, 2, 4)
  def test_fourier_table_is_a_shift_invariant_kernel_per_head(self, heads):
    table = train.fourier_table(np.arange(64), 64, 32, heads)
    self.assertEqual(table.shape, (64, 32))
    self.assertAlmostEqual(float(np.std(table)), 1.0, delta=0.02)
    width = 32 // heads
    for h in range(heads):
      group = table[:, h * width : (h + 1) * width]
      gram = group @ group.T
      np.testing.assert_allclose(gram[10, 13], gram[40, 43], atol=1e-4)
      self.assertTrue(np.all(np.diag(gram) >= gram.max() - 1e-4))

  def test_fourier_table_needs_pairs_per_head(self):
    with self.assertRaisesRegex(ValueError, 'divisible'):
      train.fourier_table(np.arange(8), 8, 6, 2)

  def test_reinit_changes_values_not_names(self):
    config = masked_lm_config.get_config('local,tiny')
    inputs = dict(
      inputs=np.zeros((1, 32), np.int32), input_mask=np.ones((1, 32), np.int32)
    )
    rng = jax.random.PRNGKey(0)
    plain, _ = models.build(models.LANGUAGE, config.model).init(rng, **inputs)
    model = train.build_model(config)
    params, _ = model.init(rng, **inputs)
    self.assertEqual(
      jax.tree.map(jnp.shape, plain), jax.tree.map(jnp.shape, params)
    )
    embed = params[train.EMBED]['embeddings']
    init = config.model_init
    # A normal truncated at 2 std has 0.88 of the std.
    self.assertAlmostEqual(
      float(jnp.std(embed)), init.embed_init_scale * 0.88, delta=0.02
    )
    self.assertGreater(float(jnp.std(plain[train.EMBED]['embeddings'])), 0.5)
    heads = config.model.encoder.num_cross_attend_heads
    for name in (train.INPUT_POSITIONS, train.QUERY_POSITIONS):
      np.testing.assert_allclose(
        params[name]['pos_embs'],
        init.position_init_scale
        * train.fourier_table(np.arange(32), 32, 16, heads),
        rtol=1e-5,
      )

  def test_local_init_makes_latents_pool_nearby_bytes(self):
    config = masked_lm_config.get_config('local')
    model = train.build_model(config)
    seq_len = config.model.max_seq_len
    tokens = np.random.default_rng(0).integers(6, 262, (1, seq_len))
    params, _ = model.init(
      jax.random.PRNGKey(0),
      inputs=tokens.astype(np.int32),
      input_mask=np.ones((1, seq_len), np.int32),
    )
    p = jax.device_get(params)
    heads = config.model.encoder.num_cross_attend_heads
    x = (
      p['embed']['embeddings'][tokens[0]]
      + p['trainable_position_encoding']['pos_embs']
    )
    z = p[train.LATENTS]['pos_embs']
    enc = train.ENCODER_ATTENTION
    q = _ln(z) @ p[enc + 'linear']['w']  # [N, d]
    k = _ln(x) @ p[enc + 'linear_1']['w']  # [S, d]
    num_latents, d = q.shape
    logits = np.einsum(
      'nhc,mhc->hnm',
      q.reshape(num_latents, heads, -1),
      k.reshape(seq_len, heads, -1),
    ) / np.sqrt(d // heads)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    centres = (np.arange(num_latents) + 0.5) * seq_len / num_latents - 0.5
    near = np.abs(np.arange(seq_len)[None] - centres[:, None]) <= 4  # [N, S]
    # The lowest band's head reads mostly the 8 bytes around each centre.
    self.assertGreater(float((weights[0] * near).sum(-1).mean()), 0.8)

  def test_local_init_checks_sizes(self):
    config = masked_lm_config.get_config('local,tiny')
    config.model.decoder.qk_channels = 8
    model = train.build_model(config)
    with self.assertRaisesRegex(ValueError, 'qk_channels == d_model'):
      model.init(
        jax.random.PRNGKey(0),
        inputs=np.zeros((1, 32), np.int32),
        input_mask=np.ones((1, 32), np.int32),
      )

  def test_unknown_position_init(self):
    config = masked_lm_config.get_config('local,tiny')
    config.model_init.position_init = 'sinusoid'
    with self.assertRaisesRegex(ValueError, 'position_init'):
      train.build_model(config)


class LossTest(absltest.TestCase):
  def test_loss_and_accuracy_on_weighted_positions(self):
    logits = jnp.log(
      jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]])
    )
    targets = jnp.array([[0, 0, 2]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    loss, metrics = train.masked_lm_loss(logits, targets, weights)
    self.assertAlmostEqual(
      float(loss), -(np.log(0.7) + np.log(0.1)) / 2, places=5
    )
    self.assertAlmostEqual(float(metrics['masked_accuracy']), 0.5)
    self.assertEqual(float(metrics['masked_bytes']), 2.0)

  def test_visible_bytes_loss_is_added_with_its_weight(self):
    class Fixed:
      def apply(self, params, state, rng, *, is_training, inputs, input_mask):
        del params, rng, is_training, input_mask
        logits = jnp.log(jnp.full((*inputs.shape, 4), 0.1))
        return logits.at[:, :, 0].set(jnp.log(0.7)), state

    batch = {
      'inputs': np.zeros((1, 4), np.int32),
      'input_mask': np.array([[1, 1, 1, 0]], np.int32),
      'targets': np.array([[0, 1, 0, 0]], np.int32),
      'weights': np.array([[0.0, 1.0, 0.0, 0.0]], np.float32),
    }
    plain, (metrics, _) = train.make_loss_fn(Fixed())(
      None, {}, batch, None, True
    )
    both, (metrics, _) = train.make_loss_fn(Fixed(), 0.5)(
      None, {}, batch, None, True
    )
    self.assertAlmostEqual(float(plain), -np.log(0.1), places=5)
    # The visible real bytes are positions 0 and 2 (target 0: p = 0.7).
    self.assertAlmostEqual(float(metrics['unmasked_loss']), -np.log(0.7), 5)
    self.assertAlmostEqual(
      float(both), -np.log(0.1) - 0.5 * np.log(0.7), places=5
    )

  def test_no_masked_position_gives_zero(self):
    loss, metrics = train.masked_lm_loss(
      jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2))
    )
    self.assertEqual(float(loss), 0.0)
    self.assertEqual(float(metrics['masked_accuracy']), 0.0)

  def test_eval_ignores_padded_examples_and_splits_schemes(self):
    config = masked_lm_config.get_config('local,tiny')
    model = train.build_model(config)
    rng = np.random.default_rng(0)
    batch = {
      'inputs': rng.integers(6, 262, (3, 32)).astype(np.int32),
      'input_mask': np.ones((3, 32), np.int32),
      'targets': rng.integers(6, 262, (3, 32)).astype(np.int32),
      'weights': np.ones((3, 32), np.float32),
      'mask': np.array([1.0, 0.0, 1.0], np.float32),
      'scheme': np.array([0.0, 0.0, 1.0], np.float32),
    }
    # Example 2 (BERT scheme) shows its targets: a model can copy them.
    batch['weights'][2, 16:] = 0.0
    # Spans' leading whitespace (space, newline) counts in masked_accuracy,
    # not in word_masked_accuracy.
    batch['targets'][0] = ord('x') + 6
    batch['targets'][0, :3] = [ord(' ') + 6, ord('\n') + 6, ord(' ') + 6]
    params, state = model.init(
      jax.random.PRNGKey(0),
      inputs=batch['inputs'],
      input_mask=batch['input_mask'],
    )
    sums = train.make_eval_fn(model)(params, state, batch)
    self.assertEqual(float(sums['masked_bytes']), 32.0)
    self.assertEqual(float(sums['bert_masked_bytes']), 16.0)
    self.assertEqual(float(sums['count']), 1.0)
    results = train.eval_finalize(jax.device_get(sums))
    self.assertAlmostEqual(
      results['loss'], float(sums['loss_sum']) / 32.0, places=5
    )
    self.assertAlmostEqual(
      results['bert_masked_accuracy'], float(sums['bert_correct']) / 16.0
    )
    self.assertEqual(float(sums['word_masked_bytes']), 29.0)
    self.assertAlmostEqual(
      results['word_masked_accuracy'], float(sums['word_correct']) / 29.0
    )

  def test_eval_set_has_both_schemes_on_the_same_words(self):
    tmp = self.create_tempdir()
    tmp.create_file('a.txt', content=TEXT * 20)
    config = tiny_config(os.path.join(tmp.full_path, '*.txt'))
    arrays = train.eval_set(config.data)
    n = len(arrays['inputs']) // 2
    np.testing.assert_array_equal(arrays['scheme'], [0.0] * n + [1.0] * n)
    strict = {k: v[:n] for k, v in arrays.items()}
    bert = {k: v[n:] for k, v in arrays.items()}
    np.testing.assert_array_equal(strict['targets'], bert['targets'])
    np.testing.assert_array_equal(strict['weights'], bert['weights'])
    selected = strict['weights'] > 0
    self.assertGreater(selected.sum(), 20)
    # Strict: every selected byte is [MASK]; BERT: some are left unchanged.
    self.assertTrue(np.all(strict['inputs'][selected] == 3))
    unchanged = bert['inputs'][selected] == bert['targets'][selected]
    self.assertTrue(np.any(unchanged))
    self.assertLess(unchanged.mean(), 0.5)

  def test_sequence_longer_than_model(self):
    config = masked_lm_config.get_config('local,tiny')
    config.data.seq_len = 64
    with self.assertRaisesRegex(ValueError, 'max_seq_len'):
      train.build_task(config)


class EndToEndTest(absltest.TestCase):
  def test_train_preempt_resume_exact(self):
    tmp = self.create_tempdir()
    for i in range(3):
      tmp.create_file(f'text{i}.txt', content=f'{i} ' + TEXT * 3)
    config = tiny_config(os.path.join(tmp.full_path, '*.txt'))
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
    self.assertEqual(part['step'], 2)
    resumed = trainer.train_and_evaluate(
      config, part_dir, train.build_task(config)
    )
    records = metrics_writer.read_metrics(full_dir)
    self.assertEqual(
      _no_perf(records), _no_perf(metrics_writer.read_metrics(part_dir))
    )
    self.assertEqual(
      full['eval/masked_accuracy'], resumed['eval/masked_accuracy']
    )
    last = records[-1]
    for key in ('loss', 'masked_accuracy', 'eval/loss', 'eval/masked_accuracy'):
      self.assertTrue(np.isfinite(last[key]), key)
    self.assertGreater(last['eval/masked_bytes'], 0)
    self.assertTrue(os.path.isfile(os.path.join(full_dir, 'config.json')))


if __name__ == '__main__':
  absltest.main()
