"""Tests of the digits data and the TFDS ImageNet pipeline on mock data."""

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from absl.testing import parameterized

from configs import image_classification as image_config
from experiments.image_classification import data as task_data


def _mock(num_examples=20):
  return tfds.testing.mock_data(
    num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
  )


def _imagenet_data(num_examples=20):
  config = image_config.get_config('fourier,runlocal')
  config.data.num_train_examples = num_examples
  return config.data


class DigitsTest(parameterized.TestCase):
  def test_split_is_fixed_stratified_and_scaled(self):
    data = task_data.load_digits()
    self.assertEqual(data['train_images'].shape, (1437, 8, 8, 1))
    self.assertEqual(data['test_images'].shape, (360, 8, 8, 1))
    self.assertEqual(data['train_images'].dtype, np.float32)
    self.assertEqual(data['train_images'].min(), -1.0)
    self.assertEqual(data['train_images'].max(), 1.0)
    counts = np.bincount(data['test_labels'], minlength=10)
    self.assertLessEqual(counts.max() - counts.min(), 2)
    again = task_data.load_digits()
    np.testing.assert_array_equal(data['test_labels'], again['test_labels'])
    other = task_data.load_digits(split_seed=1)
    self.assertFalse(np.array_equal(data['test_labels'], other['test_labels']))

  def test_stream_covers_each_epoch_once(self):
    idx = task_data.stream_indices(10, seed=3, start=0, count=30)
    for epoch in range(3):
      self.assertCountEqual(idx[epoch * 10 : (epoch + 1) * 10], range(10))
    self.assertFalse(np.array_equal(idx[:10], idx[10:20]))
    np.testing.assert_array_equal(
      task_data.stream_indices(10, seed=3, start=7, count=9), idx[7:16]
    )

  def test_train_batches_restart_exactly(self):
    data = task_data.load_digits()
    stream = task_data.digits_train_batches(data, 64, 0, 0, max_shift=1)
    batches = [next(stream) for _ in range(30)]  # Crosses an epoch.
    resumed = task_data.digits_train_batches(data, 64, 0, 25, max_shift=1)
    for expected in batches[25:]:
      got = next(resumed)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    self.assertEqual(batches[0]['images'].shape, (64, 8, 8, 1))
    np.testing.assert_array_equal(batches[0]['ratio'], 1.0)

  def test_shift_images(self):
    images = np.full((3, 8, 8, 1), -1.0, np.float32)
    images[:, 3:5, 3:5] = 1.0
    rng = np.random.default_rng(0)
    shifted = task_data.shift_images(images, rng, 1)
    self.assertEqual(shifted.shape, images.shape)
    np.testing.assert_array_equal((shifted == 1.0).sum(axis=(1, 2, 3)), 4)
    self.assertIs(task_data.shift_images(images, rng, 0), images)

  def test_padded_eval_batches(self):
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    labels = np.arange(10, dtype=np.int32)
    batches = list(task_data.padded_batches(images, labels, 4))
    self.assertLen(batches, 3)
    np.testing.assert_array_equal(batches[-1]['mask'], [1, 1, 0, 0])
    self.assertEqual(sum(b['mask'].sum() for b in batches), 10)


class ImagenetTest(parameterized.TestCase):
  def test_train_stream_shapes_and_exact_restart(self):
    data = _imagenet_data()
    with _mock():
      ds = task_data.imagenet_train_dataset(data, 0, 8, 0)
      batches = list(tfds.as_numpy(ds.take(6)))  # 48 examples: 3 epochs.
      resumed = task_data.imagenet_train_dataset(data, 0, 8, 4)
      again = list(tfds.as_numpy(resumed.take(2)))
    first = batches[0]
    self.assertEqual(first['images'].shape, (8, 32, 32, 3))
    self.assertEqual(first['images'].dtype, np.float32)
    self.assertEqual(first['labels'].dtype, np.int32)
    self.assertEqual(first['mix_labels'].shape, (8,))
    self.assertTrue(((first['ratio'] >= 0) & (first['ratio'] <= 1)).all())
    np.testing.assert_array_equal(
      first['mix_labels'][:4], first['labels'][3::-1]
    )
    for expected, got in zip(batches[4:], again, strict=True):
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    # Different epochs are shuffled differently.
    self.assertFalse(np.array_equal(batches[0]['labels'], batches[3]['labels']))

  def test_seed_changes_the_stream(self):
    data = _imagenet_data()
    with _mock():
      a = next(
        iter(tfds.as_numpy(task_data.imagenet_train_dataset(data, 0, 8, 0)))
      )
      b = next(
        iter(tfds.as_numpy(task_data.imagenet_train_dataset(data, 1, 8, 0)))
      )
    self.assertFalse(np.array_equal(a['images'], b['images']))

  def test_eval_batches_are_padded(self):
    data = _imagenet_data()
    with _mock(num_examples=10):
      batches = list(task_data.imagenet_eval_batches(data, 4))
    self.assertLen(batches, 3)
    self.assertEqual(batches[-1]['images'].shape, (4, 32, 32, 3))
    np.testing.assert_array_equal(batches[-1]['mask'], [1, 1, 0, 0])

  def test_missing_dataset_says_how_to_get_it(self):
    data = _imagenet_data()
    data.data_dir = self.create_tempdir().full_path
    with self.assertRaisesRegex(
      FileNotFoundError, 'manual download.*downloads/manual.*data_dir'
    ):
      task_data.imagenet_train_dataset(data, 0, 8, 0)
    with self.assertRaisesRegex(FileNotFoundError, 'imagenet2012:5.1.0'):
      next(task_data.imagenet_eval_batches(data, 8))
    with self.assertRaisesRegex(FileNotFoundError, 'data_dir'):
      task_data.check_available(data)


if __name__ == '__main__':
  absltest.main()
