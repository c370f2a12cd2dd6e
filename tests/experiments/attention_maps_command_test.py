"""experiments.attention_maps: the encoder's cross-attention drawn as a PNG."""

import os
import subprocess
import sys

import matplotlib.image
import numpy as np
from absl.testing import absltest

import parity_test
from experiments import attention_maps
from perceiver_io import models
from perceiver_io import pretrained

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _npz(root, case, name):
  """A converted file of a parity case, with its small config inside."""
  description, params, state, _, _ = parity_test.load_case(case)
  config = parity_test.config_for_case(name, description)
  path = os.path.join(root, f'{case}.npz')
  pretrained.save_params(path, params, state, name=name, config=config)
  return path


class AttentionMapsCommandTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = absltest.get_default_test_tmpdir()
    cls.language = _npz(cls.root, 'language_small', models.LANGUAGE)
    cls.image = _npz(cls.root, 'imagenet_conv_small', models.IMAGENET_CONV)

  def test_text_map_of_a_language_model(self):
    out = os.path.join(self.root, 'text.png')
    info = attention_maps.write_map(
      self.language, out, [0, 3], text='Perceiver IO reads bytes.'
    )
    heads, num_latents, num_inputs = info['shape']
    self.assertEqual((num_latents, num_inputs), (16, 25))  # The text only.
    self.assertGreater(info['sums'].min(), 0.0)
    self.assertLessEqual(info['sums'].max(), 1.0 + 1e-5)  # Padding excluded.
    self.assertEqual(matplotlib.image.imread(out).ndim, 3)

  def test_image_map_of_an_imagenet_model(self):
    photo = os.path.join(self.root, 'photo.png')
    rng = np.random.default_rng(0)
    matplotlib.image.imsave(photo, rng.uniform(size=(40, 50, 3)))
    out = os.path.join(self.root, 'pixels.png')
    info = attention_maps.write_map(self.image, out, [0, 1], image=photo)
    # The conv preprocessing downsamples by 4: the latents read
    # (H / 4) * (W / 4) positions, and each sums to 1 over them.
    height, width = attention_maps.load(self.image)[1].image_size
    self.assertEqual(info['shape'][1:], (8, height * width // 16))
    np.testing.assert_allclose(info['sums'], 1.0, atol=1e-5)
    self.assertTrue(os.path.exists(out))

  def test_named_errors(self):
    out = os.path.join(self.root, 'x.png')
    with self.assertRaisesRegex(ValueError, 'language model: pass --text'):
      attention_maps.write_map(self.language, out)
    with self.assertRaisesRegex(ValueError, 'image model: pass --image'):
      attention_maps.write_map(self.image, out, text='abc')
    with self.assertRaisesRegex(ValueError, r'ImageNet model: pass --image'):
      attention_maps.write_map(self.image, out)
    with self.assertRaisesRegex(ValueError, r'latents \[99\] out of range'):
      attention_maps.write_map(self.language, out, [99], text='abc')
    bad = os.path.join(self.root, 'bad.png')
    with open(bad, 'wb') as f:
      f.write(b'not an image')
    with self.assertRaisesRegex(ValueError, 'Cannot read the image'):
      attention_maps.write_map(self.image, out, image=bad)

  def test_command(self):
    out = os.path.join(self.root, 'cmd.png')
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.attention_maps',
        f'--checkpoint={self.language}',
        '--text=hello',
        '--latents=1,2',
        f'--out={out}',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('weights [heads, latents, inputs] (4, 16, 5)', result.stdout)
    self.assertIn(f'latents [1, 2] drawn to {out}', result.stdout)
    self.assertTrue(os.path.exists(out))


if __name__ == '__main__':
  absltest.main()
