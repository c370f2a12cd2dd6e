"""Tests of the ImageNet ops, each run eagerly and inside tf.data."""

import io

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from PIL import Image
from PIL import ImageOps

from experiments.image_classification import augment

tf.config.set_visible_devices([], 'GPU')


def _image(height=40, width=56, seed=0):
  rs = np.random.RandomState(seed)
  return rs.randint(0, 256, (height, width, 3)).astype(np.uint8)


def _jpeg(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _seed(a=0, b=1):
  return tf.constant([a, b], tf.int64)


def _in_tf_data(fn, *args):
  """Runs fn(*args) as a tf.data map and returns the numpy result."""
  ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
  return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _both(fn, *args):
  """(eager result, tf.data result) as numpy; the test checks they agree."""
  eager = tf.nest.map_structure(np.asarray, fn(*args))
  return eager, _in_tf_data(fn, *args)


class CropTest(parameterized.TestCase):
  def test_center_crop_is_deepminds_geometry(self):
    image = _image(300, 400)
    eager, graph = _both(augment.center_crop, image)
    # side = int(224 / 256 * 300) = 262; offsets ((300-262)+1)//2 = 19 and
    # ((400-262)+1)//2 = 69.
    np.testing.assert_array_equal(eager, image[19 : 19 + 262, 69 : 69 + 262])
    np.testing.assert_array_equal(eager, graph)

  def test_center_crop_of_jpeg_decodes_the_window(self):
    image = _image(120, 90)
    crop = augment.center_crop(tf.constant(_jpeg(image)))
    # side = int(0.875 * 90) = 78, offsets (120-78+1)//2 = 21, (90-78+1)//2 = 6.
    self.assertEqual(crop.shape, (78, 78, 3))
    full = tf.io.decode_jpeg(_jpeg(image)).numpy()
    # Decoding only the window (as DeepMind does) differs from decode-then-
    # crop only near the window's edges (chroma upsampling).
    diff = np.abs(crop.numpy().astype(int) - full[21:99, 6:84].astype(int))
    self.assertGreater((diff <= 2).mean(), 0.95)

  def test_inception_crop(self):
    image = _image(100, 120)
    eager, graph = _both(augment.inception_crop, image, _seed())
    np.testing.assert_array_equal(eager, graph)
    h, w, _ = eager.shape
    self.assertBetween(h * w, 0.08 * 100 * 120 - 1, 100 * 120)
    self.assertBetween(w / h, 3 / 4 - 0.05, 4 / 3 + 0.05)
    other = augment.inception_crop(image, _seed(5, 6)).numpy()
    self.assertFalse(other.shape == eager.shape and (other == eager).all())
    jpeg = augment.inception_crop(tf.constant(_jpeg(image)), _seed())
    self.assertEqual(jpeg.shape, eager.shape)  # Same window from the JPEG.

  def test_flip(self):
    image = _image()
    flips = set()
    for i in range(8):
      eager, graph = _both(augment.random_flip, image, _seed(i, 0))
      np.testing.assert_array_equal(eager, graph)
      if (eager == image).all():
        flips.add(False)
      else:
        np.testing.assert_array_equal(eager, image[:, ::-1])
        flips.add(True)
    self.assertEqual(flips, {True, False})

  def test_resize_and_normalize(self):
    mean = np.array(augment.MEAN_RGB, np.float32)
    image = np.broadcast_to(mean, (10, 12, 3)).astype(np.float32)
    eager, graph = _both(lambda x: augment.resize_and_normalize(x, 7), image)
    self.assertEqual(eager.shape, (7, 7, 3))
    np.testing.assert_allclose(eager, 0.0, atol=1e-4)
    np.testing.assert_allclose(eager, graph, atol=1e-6)
    white = augment.normalize(np.full((1, 1, 3), 255.0, np.float32))
    np.testing.assert_allclose(
      white[0, 0],
      (255.0 - mean) / np.array(augment.STDDEV_RGB),
      rtol=1e-6,
    )


class OpsTest(parameterized.TestCase):
  @parameterized.parameters(*augment.RANDAUGMENT_OPS)
  def test_each_op_eager_equals_tf_data(self, name):
    image = _image()
    fn = lambda x, s: augment.apply_op(x, name, 5.0, s)  # noqa: E731
    eager, graph = _both(fn, image, _seed(3, 4))
    self.assertEqual(eager.dtype, np.uint8)
    self.assertEqual(eager.shape, image.shape)
    np.testing.assert_array_equal(eager, graph)

  @parameterized.parameters('Color', 'Contrast', 'Brightness', 'Sharpness')
  def test_enhance_ops_are_identity_at_magnitude_5(self, name):
    # DeepMind's factor is 1.8 * 5 / 10 + 0.1 = 1.0.
    image = _image()
    out = augment.apply_op(image, name, 5.0, _seed()).numpy()
    np.testing.assert_array_equal(out, image)

  def test_pixel_ops(self):
    image = _image()
    np.testing.assert_array_equal(augment.invert(image), 255 - image)
    post = augment.posterize(tf.constant(image), 2).numpy()
    np.testing.assert_array_equal(post, image & 0b11000000)
    sol = augment.solarize(image, 128).numpy()
    np.testing.assert_array_equal(
      sol, np.where(image < 128, image, 255 - image)
    )
    add = augment.solarize_add(image, 55).numpy()
    expected = np.where(
      image < 128, np.minimum(image.astype(int) + 55, 255), image
    )
    np.testing.assert_array_equal(add, expected)
    dark = augment.brightness(image, 0.0).numpy()
    np.testing.assert_array_equal(dark, 0)
    gray = augment.color(image, 0.0).numpy()
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])

  def test_equalize_and_autocontrast_match_pil(self):
    rs = np.random.RandomState(1)
    image = (rs.beta(2, 5, (32, 48, 3)) * 200 + 20).astype(np.uint8)
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(
      augment.equalize(image).numpy(), np.asarray(ImageOps.equalize(pil))
    )
    ours = augment.autocontrast(image).numpy().astype(int)
    theirs = np.asarray(ImageOps.autocontrast(pil)).astype(int)
    np.testing.assert_allclose(ours, theirs, atol=1)
    self.assertEqual((ours.min(), ours.max()), (0, 255))

  def test_geometry(self):
    image = _image(24, 24)
    rotated = augment.rotate(image, tf.constant(90.0)).numpy()
    np.testing.assert_array_equal(rotated, np.rot90(image))  # Anticlockwise.
    np.testing.assert_array_equal(
      augment.rotate(image, tf.constant(0.0)).numpy(), image
    )
    moved = augment.translate_x(image, tf.constant(3.0)).numpy()
    np.testing.assert_array_equal(moved[:, :-3], image[:, 3:])
    np.testing.assert_array_equal(moved[:, -3:], augment.FILL_VALUE)
    moved = augment.translate_y(image, tf.constant(-2.0)).numpy()
    np.testing.assert_array_equal(moved[2:], image[:-2])
    sheared = augment.shear_x(image, tf.constant(0.0)).numpy()
    np.testing.assert_array_equal(sheared, image)

  def test_cutout(self):
    image = np.zeros((40, 40, 3), np.uint8)
    out = augment.cutout(image, 5, _seed()).numpy()
    rows, cols = np.nonzero(out[..., 0] == augment.FILL_VALUE)
    self.assertLessEqual(len(rows), 100)
    self.assertEqual(
      len(rows), (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    )

  def test_randaugment(self):
    image = _image()
    fn = lambda x, s: augment.randaugment(x, 4, 5.0, s)  # noqa: E731
    eager, graph = _both(fn, image, _seed(1, 2))
    np.testing.assert_array_equal(eager, graph)
    self.assertEqual(eager.dtype, np.uint8)
    outputs = {fn(image, _seed(i, 0)).numpy().tobytes() for i in range(6)}
    self.assertGreater(len(outputs), 1)
    with self.assertRaisesRegex(ValueError, 'Unknown RandAugment op'):
      augment.apply_op(image, 'Blur', 5.0, _seed())


class MixTest(parameterized.TestCase):
  def _batch(self, n=8, size=6):
    rs = np.random.RandomState(0)
    return {
      'images': rs.randn(n, size, size, 3).astype(np.float32),
      'labels': np.arange(n, dtype=np.int32),
    }

  def test_mixup_first_half_cutmix_second(self):
    batch = self._batch()
    fn = lambda b, s: augment.mixup_cutmix(b, s, 0.2, True)  # noqa: E731
    out, graph = _both(fn, batch, _seed())
    for key in out:
      np.testing.assert_allclose(out[key], graph[key], rtol=1e-6)
    x = batch['images']
    np.testing.assert_array_equal(out['labels'], batch['labels'])
    np.testing.assert_array_equal(out['mix_labels'], [3, 2, 1, 0, 7, 6, 5, 4])
    r = out['ratio']
    self.assertTrue(((r >= 0) & (r <= 1)).all())
    for i in range(4):  # MixUp: a convex combination with the partner.
      np.testing.assert_allclose(
        out['images'][i], r[i] * x[i] + (1 - r[i]) * x[3 - i], atol=1e-5
      )
    for i in range(4, 8):  # CutMix: each pixel from one of the two.
      own = np.isclose(out['images'][i], x[i]).all(-1)
      other = np.isclose(out['images'][i], x[11 - i]).all(-1)
      self.assertTrue((own | other).all())
      self.assertAlmostEqual(own.mean(), r[i], delta=1e-6 + other.mean() * 0)

  def test_cutmix_mask(self):
    areas = []
    for i in range(20):
      mask = augment.cutmix_mask(_seed(i, 0), 16, 16).numpy()
      self.assertEqual(mask.shape, (16, 16, 1))
      self.assertTrue(np.isin(mask, [0.0, 1.0]).all())
      areas.append(mask.mean())
    self.assertGreater(np.std(areas), 0.05)

  def test_only_one_or_none(self):
    batch = self._batch()
    out = augment.mixup_cutmix(batch, _seed(), None, False)
    self.assertIs(out, batch)
    out = augment.mixup_cutmix(batch, _seed(), None, True)
    np.testing.assert_array_equal(out['mix_labels'], np.arange(8)[::-1])
    with self.assertRaisesRegex(ValueError, 'even'):
      augment.mixup_cutmix(self._batch(n=7), _seed(), 0.2, True)

  def test_beta_samples(self):
    samples = augment.sample_beta(_seed(), 0.2, [4000]).numpy()
    self.assertAlmostEqual(samples.mean(), 0.5, delta=0.03)
    # Beta(0.2, 0.2) puts most mass near 0 and 1.
    self.assertGreater(((samples < 0.1) | (samples > 0.9)).mean(), 0.5)


class PreprocessTest(parameterized.TestCase):
  def test_train_and_eval(self):
    example = {'image': tf.constant(_jpeg(_image(64, 80))), 'label': 7}
    fn = lambda e, s: augment.train_preprocess(e, s, image_size=32)  # noqa: E731
    out, graph = _both(fn, example, _seed())
    self.assertEqual(out['images'].shape, (32, 32, 3))
    self.assertEqual(out['images'].dtype, np.float32)
    self.assertEqual(int(out['labels']), 7)
    np.testing.assert_allclose(out['images'], graph['images'], atol=1e-5)
    ev, ev_graph = _both(
      lambda e: augment.eval_preprocess(e, image_size=32), example
    )
    self.assertEqual(ev['images'].shape, (32, 32, 3))
    np.testing.assert_allclose(ev['images'], ev_graph['images'], atol=1e-5)


if __name__ == '__main__':
  absltest.main()
