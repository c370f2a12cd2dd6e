"""Kinetics-700 clips from a folder of video files and the annotation CSV.

The layout users have after downloading Kinetics:

  <data.kinetics_dir>/<split>/<anything><youtube_id><anything>.mp4 (or any
      container PyAV reads)
  <data.annotations_csv>: a CSV with a header naming at least `label`,
      `youtube_id`, `time_start`, `time_end` and `split` ('train',
      'validate' or 'test'); files cut to the annotated 10 s start at 0.

Each file is decoded with PyAV (pinned in requirements.txt): the first
`data.num_frames` frames resampled to `data.fps` (nearest frame by time),
each resized (shorter side) and centre-cropped to `data.image_size`, values
in [0, 1]; the audio resampled to `data.audio_rate` Hz mono, the
`data.audio_samples` samples from the clip's start, in [-1, 1]. A file that
cannot be decoded, or is shorter than the clip, is skipped and counted
(`SkipCounter`, logged), never a crash mid-run.

Class names: `data.class_names_file` (one name a line, 700 lines) if given,
else the sorted set of labels in the CSV (the Kinetics convention).
"""

import csv
import glob
import logging
import os
from collections.abc import Iterator

import numpy as np

REQUIRED_COLUMNS = ('label', 'youtube_id', 'time_start', 'time_end', 'split')
SPLITS = {'train': 'train', 'eval': 'validate'}


class ClipError(ValueError):
  """A video file that cannot give a clip (undecodable, too short, ...)."""


def read_annotations(path: str) -> list[dict[str, str]]:
  """The CSV's rows as dicts.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a required column is missing (naming it and the file).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'No annotation CSV at {path!r} (config.data.annotations_csv).'
    )
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    missing = [
      c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])
    ]
    if missing:
      raise ValueError(
        f'{path} lacks the column(s) {missing}; a Kinetics annotation CSV '
        f'has {list(REQUIRED_COLUMNS)}.'
      )
    return list(reader)


def class_names(rows, names_file: str = '') -> list[str]:
  if names_file:
    with open(names_file, encoding='utf-8') as f:
      return [line.strip() for line in f if line.strip()]
  return sorted({row['label'] for row in rows})


def _resize_crop(frame: np.ndarray, size) -> np.ndarray:
  """[h, w, 3] uint8 -> [H, W, 3] float32 in [0, 1]: the shorter side
  resized to fit (nearest neighbour), then centre-cropped."""
  H, W = size
  h, w = frame.shape[:2]
  scale = max(H / h, W / w)
  nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
  rows = np.minimum((np.arange(nh) / scale).astype(int), h - 1)
  cols = np.minimum((np.arange(nw) / scale).astype(int), w - 1)
  frame = frame[rows][:, cols]
  top, left = (nh - H) // 2, (nw - W) // 2
  return frame[top : top + H, left : left + W].astype(np.float32) / 255.0


def decode_video(path: str, *, fps: float, audio_rate: int):
  """All frames (resampled to `fps`) and mono audio at `audio_rate`.

  Returns:
    (uint8[F, h, w, 3], float32[S] audio or None if the file has none).

  Raises:
    ClipError: the file cannot be decoded (naming it and why).
  """
  import av

  try:
    with av.open(path) as container:
      frames, times = [], []
      audio = []
      streams = [s for s in container.streams if s.type in ('video', 'audio')]
      resampler = av.AudioResampler(
        format='flt', layout='mono', rate=audio_rate
      )
      for packet in container.demux(streams):
        for frame in packet.decode():
          if packet.stream.type == 'video':
            frames.append(frame.to_ndarray(format='rgb24'))
            times.append(float(frame.time or 0.0))
          else:
            for out in resampler.resample(frame):
              audio.append(out.to_ndarray().reshape(-1))
      for out in resampler.resample(None):
        audio.append(out.to_ndarray().reshape(-1))
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise ClipError(f'Cannot decode {path}: {e}') from e
  if not frames:
    raise ClipError(f'Cannot decode {path}: it has no video frames.')
  times = np.asarray(times)
  step = times[1] - times[0] if len(times) > 1 else 1.0 / fps
  duration = times[-1] + step
  wanted = np.arange(0.0, duration - 1e-6, 1.0 / fps)
  pick = np.searchsorted(times, wanted + 1e-6, side='right') - 1
  video = np.stack([frames[i] for i in np.clip(pick, 0, len(frames) - 1)])
  sound = np.concatenate(audio).astype(np.float32) if audio else None
  return video, sound


def load_clip(path: str, data) -> dict[str, np.ndarray]:
  """The first clip of `path` at the config's sizes.

  Returns:
    {'images': float32[T, H, W, 3], 'audio': float32[A, 1]}.

  Raises:
    ClipError: undecodable, or fewer frames or audio samples than a clip.
  """
  video, sound = decode_video(path, fps=data.fps, audio_rate=data.audio_rate)
  T, A = data.num_frames, data.audio_samples
  if len(video) < T:
    raise ClipError(
      f'{path} is too short: {len(video)} frames at {data.fps} fps, a clip '
      f'needs {T}.'
    )
  if sound is None:
    sound = np.zeros(A, np.float32)  # Silent videos count as silence.
  if len(sound) < A:
    sound = np.pad(sound, (0, A - len(sound)))
  images = np.stack([_resize_crop(f, data.image_size) for f in video[:T]])
  return {
    'images': images,
    'audio': np.clip(sound[:A], -1, 1)[:, None].astype(np.float32),
  }


class SkipCounter:
  """Counts (and logs) the files that gave no clip."""

  def __init__(self):
    self.skipped = 0
    self.reasons: list[str] = []

  def skip(self, error: Exception):
    self.skipped += 1
    self.reasons.append(str(error))
    logging.warning('Skipping a video (%d so far): %s', self.skipped, error)


def split_files(data, split: str) -> list[tuple[str, int]]:
  """(path, class index) of each annotated video found for `split`."""
  rows = read_annotations(data.annotations_csv)
  names = class_names(rows, data.get('class_names_file', ''))
  index = {n: i for i, n in enumerate(names)}
  split = SPLITS.get(split, split)
  folder = os.path.join(data.kinetics_dir, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f'No folder {folder!r} of {split} videos (config.data.kinetics_dir).'
    )
  by_id = {}
  for path in sorted(glob.glob(os.path.join(folder, '*'))):
    name = os.path.basename(path)
    by_id.setdefault(name[:11], path)  # YouTube ids are 11 characters.
  found = []
  for row in rows:
    if row['split'] != split:
      continue
    path = by_id.get(row['youtube_id'])
    if path is not None and row['label'] in index:
      found.append((path, index[row['label']]))
  if not found:
    raise FileNotFoundError(
      f'None of the {split} rows of {data.annotations_csv} has a video file '
      f'in {folder} (files are matched by their first 11 characters, the '
      'YouTube id).'
    )
  return found


class KineticsData:
  """The `kinetics` source of `train.build_task` (same interface as digits)."""

  def __init__(self, config):
    self._config = config
    self.skips = SkipCounter()

  def _clips(self, files, rng) -> Iterator[dict[str, np.ndarray]]:
    """Endless clips of `files` in an order drawn from `rng`, skipping bad
    ones; stops only if every file is bad."""
    while True:
      good = 0
      for i in rng.permutation(len(files)):
        path, label = files[i]
        try:
          clip = load_clip(path, self._config.data)
        except ClipError as e:
          self.skips.skip(e)
          continue
        good += 1
        yield {**clip, 'label': np.int32(label)}
      if not good:
        raise ClipError(
          f'No readable clip among {len(files)} files '
          f'({self.skips.skipped} skipped).'
        )

  def train_batches(self, start_step):
    from experiments.multimodal_autoencoding import data as digits

    c = self._config
    files = split_files(c.data, 'train')
    step = start_step
    # Each step's batch is drawn from (seed, step), so restarts are exact.
    while True:
      rng = np.random.default_rng([c.seed, step])
      clips = self._clips(files, rng)
      items = [next(clips) for _ in range(c.batch_size)]
      batch = {k: np.stack([x[k] for x in items]) for k in items[0]}
      batch['label_mask'] = (
        rng.random(c.batch_size) < c.data.label_mask_prob
      ).astype(np.float32)
      batch['image_points'], batch['audio_points'] = digits.output_points(
        c.data, c.model, c.batch_size, rng
      )
      yield batch
      step += 1

  def eval_set(self):
    c = self._config
    files = split_files(c.data, 'eval')[: c.data.num_eval_examples]
    items = []
    for path, label in files:
      try:
        items.append({**load_clip(path, c.data), 'label': np.int32(label)})
      except ClipError as e:
        self.skips.skip(e)
    logging.info(
      'Eval clips: %d read, %d skipped.', len(items), self.skips.skipped
    )
    if not items:
      raise ClipError(f'No readable eval clip among {len(files)} files.')
    arrays = {k: np.stack([x[k] for x in items]) for k in items[0]}
    arrays['label_mask'] = np.ones(len(items), np.float32)
    return arrays

  def statistics(self, num_clips: int = 64):
    """Mean video and audio value of up to `num_clips` training clips, and
    the majority class of the training rows."""
    c = self._config
    files = split_files(c.data, 'train')
    clips = self._clips(files, np.random.default_rng([c.seed, 7919]))
    items = [next(clips) for _ in range(min(num_clips, len(files)))]
    counts = np.bincount([label for _, label in files])
    return (
      float(np.mean([x['images'].mean() for x in items])),
      float(np.mean([x['audio'].mean() for x in items])),
      int(counts.argmax()),
    )
