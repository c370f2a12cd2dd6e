"""Tests for the own-video command, on a clip written here with PyAV."""

import json
import os
import tempfile

import multimodal_autoencoding_kinetics_test as kinetics_test
from absl.testing import absltest
from PIL import Image

from configs import multimodal_autoencoding as config_lib
from experiments import trainer
from experiments.multimodal_autoencoding import autoencode
from experiments.multimodal_autoencoding import kinetics_classes
from experiments.multimodal_autoencoding import train


class AutoencodeTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A fresh folder: a run left by an earlier session must not resume.
    os.makedirs(absltest.get_default_test_tmpdir(), exist_ok=True)
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.run_dir = os.path.join(root, 'mmae_run')
    config = config_lib.get_config('local,tiny')
    config.num_train_steps = 1
    config.log_every_steps = config.checkpoint_every_steps = 1
    trainer.train_and_evaluate(config, cls.run_dir, train.build_task(config))

  def test_outputs_of_a_generated_clip(self):
    tmp = self.create_tempdir().full_path
    video = os.path.join(tmp, 'in.mp4')
    kinetics_test.write_video(video, 5, size=(30, 50))  # 2 windows of 2.
    names = os.path.join(tmp, 'names.txt')
    with open(names, 'w') as f:
      f.write('\n'.join(f'custom {k}' for k in range(10)))
    out = os.path.join(tmp, 'out')
    results = autoencode.autoencode(self.run_dir, video, out, names)
    self.assertEqual(results['windows'], 2)
    self.assertLen(results['video_psnr'], 2)
    self.assertLen(results['top5'], 5)
    self.assertEqual(
      [t['name'] for t in results['top5']],
      [f'custom {t["class"]}' for t in results['top5']],
    )
    # Without --class_names the digits model names its classes by digit.
    default = autoencode.autoencode(self.run_dir, video, out)
    self.assertEqual(
      [t['name'] for t in default['top5']],
      [f'digit {t["class"]}' for t in default['top5']],
    )
    for name in ('reconstruction.mp4', 'reconstruction.wav', 'original.wav'):
      self.assertGreater(os.path.getsize(os.path.join(out, name)), 0)
    strip = Image.open(os.path.join(out, 'strip.png'))
    self.assertEqual(strip.size, (2 * 24, 2 * 24))  # 2 frames, 2 rows.
    with open(os.path.join(out, 'results.json')) as f:
      self.assertEqual(json.load(f)['windows'], 2)

  def test_kinetics_700_names_are_shipped_sorted(self):
    names = kinetics_classes.KINETICS_700
    self.assertLen(set(names), 700)
    self.assertEqual(list(names), sorted(names))  # kinetics.class_names order.
    for name in ('abseiling', "massaging person's head", 'zumba'):
      self.assertIn(name, names)
    paper = config_lib.get_config('paper')
    self.assertEqual(autoencode.default_class_names(paper), list(names))

  def test_named_errors(self):
    tmp = self.create_tempdir().full_path
    bad = os.path.join(tmp, 'bad.mp4')
    with open(bad, 'wb') as f:
      f.write(b'not a video')
    with self.assertRaisesRegex(autoencode.AutoencodeError, 'bad.mp4'):
      autoencode.autoencode(self.run_dir, bad, tmp)
    short = os.path.join(tmp, 'short.mp4')
    kinetics_test.write_video(short, 1)
    with self.assertRaisesRegex(autoencode.AutoencodeError, 'shorter than'):
      autoencode.autoencode(self.run_dir, short, tmp)
    data = config_lib.get_config('local,tiny').data
    data.audio_rate = 48000
    with self.assertRaisesRegex(autoencode.AutoencodeError, 'Mismatched audio'):
      autoencode.windows(short, data)


if __name__ == '__main__':
  absltest.main()
