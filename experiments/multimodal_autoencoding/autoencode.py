r"""Autoencodes one's own video with a trained or released model.

  python -m experiments.multimodal_autoencoding.autoencode \
    --checkpoint=runs/mmae --video=in.mp4 --output_dir=out

Any length and size: the video is decoded with PyAV, resampled to the
model's frame rate (config.data.fps), each frame resized (shorter side) and
centre-cropped to the model's frame size, and cut into consecutive windows
of the model's frame count (16 for the released model; frames after the last
whole window are dropped). The audio is resampled to the model's rate and
cut with the frames. The label input is masked. Writes to --output_dir:

  reconstruction.mp4  the reconstructed frames, at the model's frame rate
  strip.png           the first window's frames, original above reconstruction
  reconstruction.wav  the reconstructed audio (original.wav beside it)
  results.json        video and audio PSNR per window and overall, top-5 classes

and prints the PSNRs and the top-5 class names (averaged logits over the
windows). --checkpoint is our run directory, or a released
`video_autoencoding_checkpoint.pystate` (then the `paper` config). A
700-class model's classes are named by the shipped Kinetics-700 names
(`kinetics_classes.py`, sorted), the digits model's by digit;
--class_names, a file with one name a line, overrides either.
"""

import json
import os
import wave

import numpy as np

from experiments.multimodal_autoencoding import kinetics
from experiments.multimodal_autoencoding import kinetics_classes


class AutoencodeError(ValueError):
  """Bad input to the command, naming the file or setting."""


def load_model(checkpoint: str):
  """(model, params, state, config) of our run or a released file."""
  from configs import multimodal_autoencoding as config_lib
  from experiments import runs
  from experiments.multimodal_autoencoding import train

  if os.path.isdir(checkpoint):
    run = runs.load_run(checkpoint)
    return run.model, run.params, run.state, run.config
  weights = runs.load_weights(checkpoint)
  config = config_lib.get_config('paper')
  return train.build_model(config), weights.params, weights.state, config


def windows(path: str, data) -> tuple[np.ndarray, np.ndarray]:
  """([W, T, H, W, 3] frames in [0, 1], [W, A, 1] audio) of `path`.

  Raises:
    AutoencodeError: undecodable file, a clip shorter than one window, or
      a config whose audio rate does not give whole samples per frame.
  """
  T, A = data.num_frames, data.audio_samples
  rate = data.audio_rate
  if abs(rate * T - A * data.fps) > 1e-6:
    raise AutoencodeError(
      f'Mismatched audio rate: the model takes {A} samples per {T} frames, '
      f'{A * data.fps / T:g} Hz at {data.fps} fps, but config.data.'
      f'audio_rate is {rate}.'
    )
  try:
    video, sound = kinetics.decode_video(path, fps=data.fps, audio_rate=rate)
  except kinetics.ClipError as e:
    raise AutoencodeError(str(e)) from e
  count = len(video) // T
  if not count:
    raise AutoencodeError(
      f'{path} is shorter than the window: {len(video)} frames at '
      f'{data.fps} fps, the model reads {T}.'
    )
  frames = np.stack(
    [kinetics._resize_crop(f, data.image_size) for f in video[: count * T]]  # pylint: disable=protected-access
  ).reshape(count, T, *data.image_size, 3)
  if sound is None:
    sound = np.zeros(count * A, np.float32)
  sound = np.pad(sound, (0, max(0, count * A - len(sound))))[: count * A]
  audio = np.clip(sound, -1, 1).reshape(count, A, 1).astype(np.float32)
  return frames, audio


def write_wav(path, audio, rate):
  pcm = (np.clip(audio, -1, 1) * 32767).astype('<i2')
  with wave.open(path, 'wb') as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(int(rate))
    f.writeframes(pcm.tobytes())


def write_mp4(path, frames, fps):
  import av

  T, H, W = frames.shape[:3]
  with av.open(path, 'w') as out:
    stream = out.add_stream('mpeg4', rate=int(fps))
    stream.width, stream.height = W + W % 2, H + H % 2
    stream.pix_fmt = 'yuv420p'
    for frame in frames:
      rgb = np.zeros((stream.height, stream.width, 3), np.uint8)
      rgb[:H, :W] = np.round(np.clip(frame, 0, 1) * 255)
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, 'rgb24')):
        out.mux(packet)
    for packet in stream.encode(None):
      out.mux(packet)


def write_strip(path, original, reconstruction):
  from PIL import Image

  top = np.concatenate(list(original), axis=1)
  bottom = np.concatenate(list(reconstruction), axis=1)
  strip = np.concatenate([top, bottom], axis=0)
  Image.fromarray(np.round(np.clip(strip, 0, 1) * 255).astype(np.uint8)).save(
    path
  )


def default_class_names(config):
  """The shipped names of the config's classes, or None."""
  K = config.model.num_classes
  if len(kinetics_classes.KINETICS_700) == K:
    return list(kinetics_classes.KINETICS_700)
  if config.data.source == 'digits':
    return [f'digit {k}' for k in range(K)]
  return None


def autoencode(checkpoint, video, output_dir, class_names_file=''):
  """Runs the command; returns the results dict it writes."""
  import jax

  from experiments.multimodal_autoencoding import train

  model, params, state, config = load_model(checkpoint)
  data = config.data
  frames, audio = windows(video, data)
  K = config.model.num_classes
  apply = jax.jit(
    lambda images, audio: model.apply(
      params,
      state,
      None,
      is_training=False,
      images=images,
      audio=audio,
      label=jax.numpy.zeros((images.shape[0], K)),
      label_mask=jax.numpy.ones((images.shape[0],)),
    )[0]
  )
  recon_v, recon_a, logits = [], [], []
  for i in range(len(frames)):
    out = jax.device_get(apply(frames[i : i + 1], audio[i : i + 1]))
    recon_v.append(out['image'].reshape(frames.shape[1:]))
    recon_a.append(out['audio'].reshape(-1))
    logits.append(out['label'][0])
  recon_v, recon_a = np.stack(recon_v), np.stack(recon_a)
  video_mse = ((recon_v - frames) ** 2).mean(axis=(1, 2, 3, 4))
  audio_mse = ((recon_a - audio[..., 0]) ** 2).mean(axis=1)
  to_db = lambda mse, r: [  # noqa: E731
    float(x) for x in np.asarray(train.psnr(mse, r))
  ]
  names = default_class_names(config)
  if class_names_file:
    with open(class_names_file, encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
    if len(names) != K:
      raise AutoencodeError(
        f'{class_names_file} has {len(names)} names; the model has {K} classes.'
      )
  mean_logits = np.mean(logits, axis=0)
  top5 = np.argsort(-mean_logits)[:5]
  probs = np.exp(mean_logits - mean_logits.max())
  probs /= probs.sum()
  results = {
    'windows': len(frames),
    'video_psnr': to_db(video_mse, config.eval.video_data_range),
    'audio_psnr': to_db(audio_mse, config.eval.audio_data_range),
    'video_psnr_overall': to_db(
      np.float32([video_mse.mean()]), config.eval.video_data_range
    )[0],
    'audio_psnr_overall': to_db(
      np.float32([audio_mse.mean()]), config.eval.audio_data_range
    )[0],
    'top5': [
      {
        'class': int(k),
        'name': names[k] if names else f'class {k}',
        'probability': float(probs[k]),
      }
      for k in top5
    ],
  }
  os.makedirs(output_dir, exist_ok=True)
  write_mp4(
    os.path.join(output_dir, 'reconstruction.mp4'),
    recon_v.reshape(-1, *frames.shape[2:]),
    data.fps,
  )
  write_strip(os.path.join(output_dir, 'strip.png'), frames[0], recon_v[0])
  write_wav(
    os.path.join(output_dir, 'reconstruction.wav'),
    recon_a.reshape(-1),
    data.audio_rate,
  )
  write_wav(
    os.path.join(output_dir, 'original.wav'),
    audio.reshape(-1),
    data.audio_rate,
  )
  with open(os.path.join(output_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  return results


def main(argv):
  from absl import flags

  del argv
  FLAGS = flags.FLAGS
  results = autoencode(
    FLAGS.checkpoint, FLAGS.video, FLAGS.output_dir, FLAGS.class_names
  )
  print(
    f'{results["windows"]} window(s): video PSNR '
    f'{results["video_psnr_overall"]:.2f} dB, audio PSNR '
    f'{results["audio_psnr_overall"]:.2f} dB'
  )
  for item in results['top5']:
    print(f'  {item["probability"]:.3f}  {item["name"]}')
  print(
    f'Wrote {FLAGS.output_dir}/reconstruction.mp4, strip.png, '
    'reconstruction.wav, results.json'
  )


if __name__ == '__main__':
  from absl import flags

  flags.DEFINE_string(
    'checkpoint', None, 'Our run directory or a released file.'
  )
  flags.DEFINE_string('video', None, 'The video file to autoencode.')
  flags.DEFINE_string('output_dir', None, 'Where the outputs go.')
  flags.DEFINE_string(
    'class_names',
    '',
    'Class names, one a line; default: the shipped Kinetics-700 names for '
    'a 700-class model, digits for the local one.',
  )
  flags.mark_flags_as_required(['checkpoint', 'video', 'output_dir'])
  from experiments import cli

  cli.run(main)
