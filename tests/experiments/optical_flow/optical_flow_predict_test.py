"""Tests for experiments.optical_flow.predict: two image files -> .flo, .npy, .png."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from absl.testing import absltest

import flow_fixtures
from configs import optical_flow as flow_config
from experiments.optical_flow import flow_files
from experiments.optical_flow import predict
from experiments.optical_flow import train
from perceiver_io import flow_tiling
from perceiver_io import flow_viz
from perceiver_io import pretrained

_REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


class FlowPredictTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = os.path.join(absltest.get_default_test_tmpdir(), 'predict')
    shutil.rmtree(cls.root, ignore_errors=True)
    os.makedirs(cls.root)
    # A tiny model with a random (non-zero) output layer, saved as .npz.
    config = flow_config.get_config('tiny')
    cls.model = train.build_model(config)
    params, cls.state = cls.model.init(
      jax.random.PRNGKey(0), frames=np.zeros((1, 2, 8, 12, 3), np.float32)
    )
    rng = np.random.default_rng(0)
    cls.params = jax.tree.map(
      lambda p: np.asarray(p) + rng.normal(0, 0.3, p.shape).astype(p.dtype),
      params,
    )
    cls.npz = os.path.join(cls.root, 'tiny.npz')
    pretrained.save_params(
      cls.npz, cls.params, cls.state, name='optical_flow', config=config.model
    )
    # Two frames of a size that is no multiple of the 8x12 tile.
    pair = flow_fixtures._pairs((13, 30), 1, seed=0)[0]
    cls.frame1 = os.path.join(cls.root, 'a.png')
    cls.frame2 = os.path.join(cls.root, 'b.png')
    flow_files.write_image(cls.frame1, pair['frames'][0])
    flow_files.write_image(cls.frame2, pair['frames'][1])
    cls.frames = pair['frames']
    # A training workdir (its config gives the sizes and motion range).
    cls.workdir = os.path.join(cls.root, 'run')
    config = flow_config.get_config('tiny')
    config.num_train_steps = 1
    config.checkpoint_every_steps = 1
    config.data.eval_name = ''
    train.run(config, cls.workdir)

  def test_command_writes_consistent_outputs(self):
    prefix = os.path.join(self.root, 'out', 'flow')
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.optical_flow.predict',
        f'--checkpoint={self.npz}',
        f'--frame1={self.frame1}',
        f'--frame2={self.frame2}',
        f'--output={prefix}',
        '--min_overlap=2',
      ],
      cwd=_REPO,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('Flow 13x30', result.stdout)
    flo = flow_files.read_flo(prefix + '.flo')
    npy = np.load(prefix + '.npy')
    np.testing.assert_array_equal(flo, npy)
    self.assertEqual(npy.shape, (13, 30, 2))
    self.assertGreater(np.abs(npy).max(), 1e-3)
    png = flow_files.read_image(prefix + '.png')
    # The coding, with the legend wheel to its right.
    np.testing.assert_array_equal(
      png, flow_viz.with_legend(flow_viz.flow_to_color(npy))
    )
    radius = np.sqrt(np.sum(npy**2, axis=-1)).max()
    self.assertIn(f"legend wheel's rim) is {radius:.3f} px", result.stdout)
    # The same numbers as tiling the model directly.
    frames = train.to_model_frames(self.frames)
    flow_fn = flow_tiling.make_flow_fn(self.model, self.params, self.state)
    expected = flow_tiling.compute_flow(
      frames, flow_fn, tile_size=(8, 12), min_overlap=2
    )
    np.testing.assert_allclose(npy, expected, rtol=1e-5, atol=1e-5)

  def test_small_frames_and_workdir_checkpoints(self):
    # A training workdir works as a checkpoint (its config gives the sizes).
    model, params, state = predict.load_flow_model(self.workdir)
    self.assertEqual(tuple(model.config.train_size), (8, 12))
    image = (self.frames[0][:5, :7]).copy()  # Smaller than a tile.
    for mode in ('resize', 'pad'):
      flow = predict.predict_flow(
        model, params, state, image, image, small_frames=mode, min_overlap=2
      )
      self.assertEqual(flow.shape, (5, 7, 2))
      self.assertTrue(np.isfinite(flow).all())
    paths = predict.write_outputs(os.path.join(self.root, 's', 'f'), flow)
    self.assertTrue(all(os.path.exists(p) for p in paths))
    # Without the legend the PNG is the coding alone.
    paths = predict.write_outputs(
      os.path.join(self.root, 's', 'g'), flow, legend=False
    )
    np.testing.assert_array_equal(
      flow_files.read_image(paths[2]), flow_viz.flow_to_color(flow)
    )

  def test_training_motion_is_read_from_the_run(self):
    trained = predict.training_motion(self.workdir)
    max_motion = flow_config.get_config('tiny').data.synthetic.max_motion
    self.assertEqual(trained['train_size'], (8, 12))
    self.assertLessEqual(trained['max_motion'], max_motion + 1e-5)
    self.assertGreater(trained['max_motion'], 0.8 * max_motion)
    self.assertLess(trained['mean_motion'], trained['max_motion'])
    # Also from checkpoints/ inside the run.
    self.assertEqual(
      predict.training_motion(os.path.join(self.workdir, 'checkpoints')),
      trained,
    )
    # Released or converted weights record no motion range.
    self.assertIsNone(predict.training_motion(self.npz))

  def test_training_motion_of_a_run_without_max_motion(self):
    # Runs from before `max_motion` record only the flow's parts.
    old = os.path.join(self.root, 'old_run')
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(self.workdir, old)
    with open(os.path.join(old, 'config.json'), encoding='utf-8') as f:
      config = json.load(f)
    del config['data']['synthetic']['max_motion']
    config['data']['synthetic'].update(
      max_translation=1.5, max_affine=0.5, local_amplitude=0.3
    )
    with open(os.path.join(old, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f)
    trained = predict.training_motion(old)
    # The old 16x16 `local` flows: at most about 2.5 px, mean about 1.
    self.assertGreater(trained['max_motion'], 1.5)
    self.assertLess(trained['max_motion'], 3.5)
    self.assertLess(trained['mean_motion'], 1.5)
    # A real dataset's run records no range.
    config['data']['name'] = 'chairs'
    with open(os.path.join(old, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f)
    self.assertIsNone(predict.training_motion(old))

  def test_motion_warning_names_the_range_and_the_prediction(self):
    trained = {'max_motion': 2.5, 'mean_motion': 1.0, 'train_size': (16, 16)}
    small = np.full((20, 30, 2), 0.5, np.float32)
    self.assertIsNone(predict.motion_warning(small, trained))
    self.assertIsNone(predict.motion_warning(small * 10, None))
    near = np.full((20, 30, 2), [2.4, 0.0], np.float32)
    warning = predict.motion_warning(near, trained)
    self.assertIn('trained on motions up to 2.50 px', warning)
    self.assertIn('the predicted flow nears that range', warning)
    self.assertIn('mean |flow| 2.40 px, 99th pct 2.40 px', warning)
    self.assertNotIn('\n', warning)
    # Frames far larger than the training frames warn even at small flows.
    warning = predict.motion_warning(
      np.full((427, 640, 2), 0.3, np.float32), trained
    )
    self.assertIn('427x640 frames are 40x its 16x16 training frames', warning)
    self.assertIn('mean |flow| 0.42 px', warning)
    self.assertNotIn('nears', warning)

  def test_command_warns_beyond_the_trained_range(self):
    # 40x60 frames are 5x the tiny run's 8x12 training frames.
    pair = flow_fixtures._pairs((40, 60), 1, seed=1)[0]
    frame1 = os.path.join(self.root, 'big_a.png')
    frame2 = os.path.join(self.root, 'big_b.png')
    flow_files.write_image(frame1, pair['frames'][0])
    flow_files.write_image(frame2, pair['frames'][1])
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.optical_flow.predict',
        f'--checkpoint={self.workdir}',
        f'--frame1={frame1}',
        f'--frame2={frame2}',
        f'--output={os.path.join(self.root, "big", "flow")}',
      ],
      cwd=_REPO,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    lines = [
      line
      for line in (result.stdout + result.stderr).splitlines()
      if 'trained on motions up to' in line
    ]
    self.assertLen(lines, 1)
    self.assertIn('40x60 frames are 5x its 8x12 training frames', lines[0])

  def test_default_overlap_fits_the_tile(self):
    self.assertEqual(predict.default_min_overlap((368, 496)), 20)
    self.assertEqual(predict.default_min_overlap((16, 16)), 4)
    self.assertEqual(predict.default_min_overlap((8, 12)), 2)

  def test_errors_are_named(self):
    with self.assertRaisesRegex(ValueError, 'differ in size'):
      predict.predict_flow(
        self.model,
        self.params,
        self.state,
        self.frames[0],
        self.frames[1][:, :20],
      )
    with self.assertRaises(FileNotFoundError):
      predict.load_flow_model(os.path.join(self.root, 'missing.npz'))


if __name__ == '__main__':
  absltest.main()
