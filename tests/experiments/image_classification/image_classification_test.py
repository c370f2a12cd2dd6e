"""End-to-end tests of the image classification experiment.

Digits through the real command line (with a SIGKILL and a restart), mock
ImageNet through `train_and_evaluate` (with a preemption and a resume), and
the eval-only mode on released-format checkpoints.
"""

import io
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl.testing import absltest
from PIL import Image

import trainer_test
from configs import image_classification as image_config
from experiments import metrics_writer
from experiments import trainer
from experiments.image_classification import train

REPO = pathlib.Path(__file__).resolve().parents[3]
PARITY_DIR = REPO / 'tests' / 'testdata' / 'parity'
DIGITS_FLAGS = (
  '--config=configs/image_classification.py:digits',
  '--config.num_train_steps=20',
  '--config.schedule.warmup_steps=5',
  '--config.log_every_steps=5',
  '--config.eval_every_steps=10',
  '--config.checkpoint_every_steps=10',
  '--config.model.encoder.num_self_attends_per_block=1',
)


def _no_perf(records):
  return [
    {k: v for k, v in r.items() if not k.startswith('perf/')} for r in records
  ]


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  env.update(trainer_test.compilation_cache_env())
  return env


def _fake_imagenet(num_examples, num_classes):
  """A `mock_data` dataset of JPEGs of mixed sizes with labels in range."""
  rs = np.random.RandomState(0)
  examples = []
  for i in range(num_examples):
    shape = (40 + 7 * (i % 3), 48 + 5 * (i % 4), 3)
    buffer = io.BytesIO()
    Image.fromarray(rs.randint(0, 256, shape).astype(np.uint8)).save(
      buffer, format='JPEG'
    )
    examples.append(
      {
        'image': buffer.getvalue(),
        'label': i % num_classes,
        'file_name': f'{i}.JPEG',
      }
    )

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={
        'image': tf.TensorSpec([], tf.string),
        'label': tf.TensorSpec([], tf.int64),
        'file_name': tf.TensorSpec([], tf.string),
      },
    )

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


class DigitsCommandLineTest(absltest.TestCase):
  def _command(self, workdir, *extra):
    return [
      sys.executable,
      '-m',
      'experiments.image_classification',
      f'--workdir={workdir}',
      *DIGITS_FLAGS,
      *extra,
    ]

  def test_sigkill_and_restart_end_identical(self):
    reference = self.create_tempdir().full_path
    subprocess.run(
      self._command(reference),
      cwd=REPO,
      env=_env(),
      check=True,
      capture_output=True,
      timeout=300,
    )
    workdir = self.create_tempdir().full_path
    proc = subprocess.Popen(
      self._command(workdir),
      cwd=REPO,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.isdir(
      os.path.join(workdir, 'checkpoints', '10')
    ):
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    out = subprocess.run(
      self._command(workdir),
      cwd=REPO,
      env=_env(),
      check=True,
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertIn('Resuming from', out.stderr)
    self.assertEqual(
      _no_perf(metrics_writer.read_metrics(reference)),
      _no_perf(metrics_writer.read_metrics(workdir)),
    )
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['data']['name'], 'digits')

  def test_unknown_config_key_is_an_error(self):
    out = subprocess.run(
      self._command(self.create_tempdir().full_path, '--config.batchsize=3'),
      cwd=REPO,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
    )
    self.assertNotEqual(out.returncode, 0)
    self.assertIn('batchsize', out.stderr)
    self.assertIn('Did you mean "batch_size"', out.stderr)


class MockImagenetTest(absltest.TestCase):
  def _config(self, variant='fourier', **overrides):
    config = image_config.get_config(f'{variant},runlocal')
    config.num_train_steps = 6
    config.eval_every_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    # Synchronous saves under tfds' mock file system (see config_utils).
    config.checkpoint_async = False
    config.data.num_train_examples = 20
    # One RandAugment layer keeps graph tracing short; the ops themselves
    # are tested in image_classification_augment_test.
    config.data.randaugment_layers = 1
    config.update(overrides)
    return config

  def test_train_checkpoint_resume_exact(self):
    config = self._config()
    with tfds.testing.mock_data(
      num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE
    ):
      full_dir = self.create_tempdir().full_path
      full = trainer.train_and_evaluate(
        config, full_dir, train.build_task(config)
      )
      # What a run killed after its step-3 checkpoint leaves behind: that
      # checkpoint, and metrics logged up to step 4.
      part_dir = self.create_tempdir().full_path
      shutil.copytree(
        os.path.join(full_dir, 'checkpoints', '3'),
        os.path.join(part_dir, 'checkpoints', '3'),
      )
      with open(os.path.join(part_dir, 'metrics.jsonl'), 'w') as f:
        for record in metrics_writer.read_metrics(full_dir):
          if record['step'] <= 4:
            f.write(json.dumps(record) + '\n')
      resumed = trainer.train_and_evaluate(
        config, part_dir, train.build_task(config)
      )
    records = metrics_writer.read_metrics(full_dir)
    self.assertEqual(
      _no_perf(records), _no_perf(metrics_writer.read_metrics(part_dir))
    )
    self.assertEqual(full['eval/accuracy'], resumed['eval/accuracy'])
    last = records[-1]
    for key in (
      'loss',
      'accuracy',
      'top_5_accuracy',
      'eval/loss',
      'eval/accuracy',
      'eval/top_5_accuracy',
      'learning_rate',
    ):
      self.assertIn(key, last)
      self.assertTrue(np.isfinite(last[key]))
    self.assertEqual(last['eval/count'], 20)

  def test_missing_imagenet_fails_before_compiling(self):
    config = self._config()
    config.data.data_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, 'manual download'):
      train.build_task(config)

  def test_eval_only_on_deepmind_format_checkpoint(self):
    # A released-format (.pystate pickle of {'params', 'state'}) conv model
    # written by DeepMind's code at a small size, with BatchNorm state.
    case = json.loads((PARITY_DIR / 'imagenet_conv_small.json').read_text())
    config = self._config('conv', mode='eval')
    config.init_from = str(PARITY_DIR / 'imagenet_conv_small.pystate')
    model = config.model
    model.encoder.update(case['case']['encoder'])
    model.input_preprocessor.fourier_position_encoding_kwargs.num_bands = 4
    model.decoder.num_classes = 10
    model.decoder.num_z_channels = 32
    model.decoder.trainable_position_encoding_kwargs.num_channels = 32
    with _fake_imagenet(num_examples=12, num_classes=10):
      task = train.build_task(config)
      result = trainer.train_and_evaluate(
        config, self.create_tempdir().full_path, task
      )
      batches = list(task.eval_batches())
    from perceiver_io import pretrained

    params, state = pretrained.load_params(config.init_from)
    logits = np.concatenate(
      [
        task.model.apply(params, state, None, images=b['images'])[0]
        for b in batches
      ]
    )[:12]
    labels = np.concatenate([b['labels'] for b in batches])[:12]
    log_probs = jax.nn.log_softmax(logits)
    expected_loss = -np.mean(log_probs[np.arange(12), labels])
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    self.assertEqual(result['eval/count'], 12)
    self.assertAlmostEqual(result['eval/loss'], expected_loss, places=5)
    self.assertAlmostEqual(
      result['eval/accuracy'], np.mean(logits.argmax(-1) == labels)
    )
    self.assertAlmostEqual(
      result['eval/top_5_accuracy'], np.mean((top5 == labels[:, None]).any(-1))
    )

  def test_eval_only_rejects_mismatched_checkpoint(self):
    config = self._config('conv', mode='eval')
    config.init_from = str(PARITY_DIR / 'imagenet_conv_small.pystate')
    with (
      _fake_imagenet(num_examples=4, num_classes=10),
      self.assertRaisesRegex(ValueError, r'Checkpoint mismatch .*shape'),
    ):
      trainer.train_and_evaluate(
        config,
        self.create_tempdir().full_path,
        train.build_task(config),
      )

  def test_pickled_params_in_released_layout(self):
    # Our own tiny fourier model saved the way DeepMind's files are laid out.
    config = self._config(mode='eval')
    model = train.build_model(config)
    params, state = model.init(
      jax.random.PRNGKey(3),
      is_training=True,
      images=np.zeros((1, 32, 32, 3), np.float32),
    )
    path = os.path.join(
      self.create_tempdir().full_path,
      'imagenet_fourier_position_encoding.pystate',
    )
    with open(path, 'wb') as f:
      pickle.dump(
        {
          'params': jax.tree.map(np.asarray, params),
          'state': jax.tree.map(np.asarray, state),
        },
        f,
      )
    config.init_from = path
    with _fake_imagenet(num_examples=6, num_classes=1000):
      result = trainer.train_and_evaluate(
        config,
        self.create_tempdir().full_path,
        train.build_task(config),
      )
    self.assertEqual(result['eval/count'], 6)
    self.assertTrue(np.isfinite(result['eval/loss']))


class LossTest(absltest.TestCase):
  def test_mixed_targets_and_smoothing(self):
    def forward(params, state, rng, images, is_training):
      del params, rng, is_training
      return images[:, 0, 0, :4], state

    loss_fn = train.make_loss_fn(forward, 4, 0.1)
    logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1]], np.float32))
    batch = {
      'images': logits[:, None, None, :],
      'labels': np.array([0]),
      'mix_labels': np.array([1]),
      'ratio': np.array([0.75], np.float32),
    }
    loss, (metrics, _) = loss_fn({}, {}, batch, None, True)
    targets = 0.9 * np.array([0.75, 0.25, 0, 0]) + 0.1 / 4
    self.assertAlmostEqual(float(loss), -np.sum(targets * logits[0]), places=5)
    self.assertEqual(float(metrics['accuracy']), 1.0)

  def test_bfloat16_compute(self):
    config = image_config.get_config('digits')
    config.model.runtime.compute_dtype = 'bfloat16'
    task = train.build_task(config)
    model = train.build_model(config)
    params, state = model.init(
      jax.random.PRNGKey(0), is_training=True, **task.init_batch
    )
    batch = next(task.train_batches(0))
    loss_fn = jax.jit(task.loss_fn, static_argnums=4)
    loss, _ = loss_fn(params, state, batch, None, True)
    self.assertEqual(loss.dtype, np.float32)
    config.model.runtime.compute_dtype = 'float32'
    f32_task = train.build_task(config)
    f32_loss, _ = jax.jit(f32_task.loss_fn, static_argnums=4)(
      params, state, batch, None, True
    )
    self.assertNotEqual(float(loss), float(f32_loss))  # It did cast.
    self.assertAlmostEqual(float(loss), float(f32_loss), delta=0.05)
    config.model.runtime.compute_dtype = 'float16'
    with self.assertRaisesRegex(ValueError, 'compute_dtype=float16'):
      trainer.check_compute_dtype(config)

  def test_remat_blocks_changes_nothing_but_memory(self):
    config = image_config.get_config('digits')
    grads = []
    for remat in (False, True):
      config.model.runtime.remat_blocks = remat
      task = train.build_task(config)
      params, state = task.model.init(
        jax.random.PRNGKey(0), is_training=True, **task.init_batch
      )
      batch = next(task.train_batches(0))
      grad_fn = jax.jit(
        jax.grad(lambda p, s, b, t=task: t.loss_fn(p, s, b, None, True)[0])
      )
      grads.append(grad_fn(params, state, batch))
    for a, b in zip(
      jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
