"""Tests for experiments.multimodal_autoencoding.kinetics on files written
here with PyAV: good, corrupt and too-short videos."""

import os

import av
import numpy as np
from absl.testing import absltest

from configs import multimodal_autoencoding as config_lib
from experiments.multimodal_autoencoding import kinetics


def write_video(path, num_frames, size=(32, 40), fps=25, audio_rate=44100):
  """A clip whose frame t is uniformly t * 10 (red) with a 440 Hz tone."""
  with av.open(path, 'w') as out:
    video = out.add_stream('mpeg4', rate=fps)
    video.width, video.height = size[1], size[0]
    video.pix_fmt = 'yuv420p'
    audio = out.add_stream('aac', rate=audio_rate)
    audio.layout = 'mono'
    for t in range(num_frames):
      rgb = np.zeros((*size, 3), np.uint8)
      rgb[..., 0] = t * 10
      frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
      for packet in video.encode(frame):
        out.mux(packet)
    n = int(audio_rate * num_frames / fps)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / audio_rate)
    samples = tone.astype(np.float32)[None]
    for start in range(0, n, 1024):
      frame = av.AudioFrame.from_ndarray(
        samples[:, start : start + 1024], format='flt', layout='mono'
      )
      frame.sample_rate = audio_rate
      for packet in audio.encode(frame):
        out.mux(packet)
    for stream in (video, audio):
      for packet in stream.encode(None):
        out.mux(packet)


def make_kinetics(root):
  """train: 2 good clips (classes b, a), 1 corrupt, 1 too short."""
  os.makedirs(os.path.join(root, 'train'))
  os.makedirs(os.path.join(root, 'validate'))
  ids = ['goodvideo01', 'goodvideo02', 'corruptvid1', 'shortvideo1']
  write_video(os.path.join(root, 'train', ids[0] + '_000000_000010.mp4'), 20)
  write_video(os.path.join(root, 'train', ids[1] + '.mp4'), 20)
  with open(os.path.join(root, 'train', ids[2] + '.mp4'), 'wb') as f:
    f.write(b'\x00\x00\x00\x18ftypmp42' + b'garbage' * 50)
  write_video(os.path.join(root, 'train', ids[3] + '.mp4'), 3)
  write_video(os.path.join(root, 'validate', 'valvideo001.mp4'), 20)
  csv = os.path.join(root, 'annotations.csv')
  with open(csv, 'w') as f:
    f.write('label,youtube_id,time_start,time_end,split\n')
    for label, vid in zip('baab', ids, strict=True):
      f.write(f'{label},{vid},0,10,train\n')
    f.write('a,valvideo001,0,10,validate\n')
  return csv


class KineticsTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    config = config_lib.get_config('local,tiny')
    config.data.source = 'kinetics'
    config.data.kinetics_dir = self.root
    config.data.annotations_csv = make_kinetics(self.root)
    config.data.audio_rate = 48000
    config.data.num_frames = 16
    config.data.image_size = (16, 16)
    config.data.audio_samples = 30720
    config.batch_size = 3
    self.config = config

  def test_clip_is_16_frames_at_25_fps_with_48khz_audio(self):
    path = os.path.join(self.root, 'train', 'goodvideo02.mp4')
    clip = kinetics.load_clip(path, self.config.data)
    self.assertEqual(clip['images'].shape, (16, 16, 16, 3))
    self.assertEqual(clip['audio'].shape, (30720, 1))
    red = clip['images'][..., 0].mean(axis=(1, 2)) * 255
    np.testing.assert_allclose(red, np.arange(16) * 10, atol=6)
    # 440 Hz at 48 kHz: the spectrum peaks at 440 * 30720 / 48000 cycles.
    spectrum = np.abs(np.fft.rfft(clip['audio'][:, 0]))
    self.assertAlmostEqual(int(spectrum.argmax()), round(440 * 0.64), delta=2)

  def test_bad_files_are_skipped_and_counted(self):
    with self.assertRaisesRegex(kinetics.ClipError, 'Cannot decode .*corrupt'):
      kinetics.load_clip(
        os.path.join(self.root, 'train', 'corruptvid1.mp4'), self.config.data
      )
    with self.assertRaisesRegex(kinetics.ClipError, 'too short: 3 frames'):
      kinetics.load_clip(
        os.path.join(self.root, 'train', 'shortvideo1.mp4'), self.config.data
      )
    source = kinetics.KineticsData(self.config)
    batch = next(source.train_batches(0))
    self.assertEqual(batch['images'].shape, (3, 16, 16, 16, 3))
    self.assertEqual(sorted(set(batch['label'].tolist())), [0, 1])
    self.assertGreaterEqual(source.skips.skipped, 2)
    again = next(kinetics.KineticsData(self.config).train_batches(0))
    np.testing.assert_array_equal(batch['label'], again['label'])
    eval_set = source.eval_set()
    self.assertEqual(eval_set['label'].tolist(), [0])  # 'a' sorts first.

  def test_missing_columns_and_folders_are_named(self):
    bad = os.path.join(self.root, 'bad.csv')
    with open(bad, 'w') as f:
      f.write('label,youtube_id\n')
    with self.assertRaisesRegex(ValueError, 'time_start'):
      kinetics.read_annotations(bad)
    self.config.data.kinetics_dir = os.path.join(self.root, 'nowhere')
    with self.assertRaisesRegex(FileNotFoundError, 'nowhere'):
      kinetics.split_files(self.config.data, 'train')


if __name__ == '__main__':
  absltest.main()
