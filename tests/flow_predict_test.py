"""Tests for experiments.flow_predict: two image files -> .flo, .npy, .png."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from absl.testing import absltest

import flow_fixtures
from configs import optical_flow as flow_config
from experiments import flow_io
from experiments import flow_predict
from experiments import optical_flow
from perceiver_io import flow_tiling
from perceiver_io import flow_viz
from perceiver_io import pretrained

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FlowPredictTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = os.path.join(absltest.get_default_test_tmpdir(), 'predict')
    shutil.rmtree(cls.root, ignore_errors=True)
    os.makedirs(cls.root)
    # A tiny model with a random (non-zero) output layer, saved as .npz.
    config = flow_config.get_config('tiny')
    cls.model = optical_flow.build_model(config)
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
    flow_io.write_image(cls.frame1, pair['frames'][0])
    flow_io.write_image(cls.frame2, pair['frames'][1])
    cls.frames = pair['frames']

  def test_command_writes_consistent_outputs(self):
    prefix = os.path.join(self.root, 'out', 'flow')
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.flow_predict',
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
    flo = flow_io.read_flo(prefix + '.flo')
    npy = np.load(prefix + '.npy')
    np.testing.assert_array_equal(flo, npy)
    self.assertEqual(npy.shape, (13, 30, 2))
    self.assertGreater(np.abs(npy).max(), 1e-3)
    png = flow_io.read_image(prefix + '.png')
    np.testing.assert_array_equal(png, flow_viz.flow_to_color(npy))
    # The same numbers as tiling the model directly.
    frames = optical_flow.to_model_frames(self.frames)
    flow_fn = flow_tiling.make_flow_fn(self.model, self.params, self.state)
    expected = flow_tiling.compute_flow(
      frames, flow_fn, tile_size=(8, 12), min_overlap=2
    )
    np.testing.assert_allclose(npy, expected, rtol=1e-5, atol=1e-5)

  def test_small_frames_and_workdir_checkpoints(self):
    # A training workdir works as a checkpoint (its config gives the sizes).
    workdir = os.path.join(self.root, 'run')
    config = flow_config.get_config('tiny')
    config.num_train_steps = 1
    config.checkpoint_every_steps = 1
    config.data.eval_name = ''
    optical_flow.run(config, workdir)
    model, params, state = flow_predict.load_flow_model(workdir)
    self.assertEqual(tuple(model.config.train_size), (8, 12))
    image = (self.frames[0][:5, :7]).copy()  # Smaller than a tile.
    for mode in ('resize', 'pad'):
      flow = flow_predict.predict_flow(
        model, params, state, image, image, small_frames=mode, min_overlap=2
      )
      self.assertEqual(flow.shape, (5, 7, 2))
      self.assertTrue(np.isfinite(flow).all())
    paths = flow_predict.write_outputs(os.path.join(self.root, 's', 'f'), flow)
    self.assertTrue(all(os.path.exists(p) for p in paths))

  def test_default_overlap_fits_the_tile(self):
    self.assertEqual(flow_predict.default_min_overlap((368, 496)), 20)
    self.assertEqual(flow_predict.default_min_overlap((16, 16)), 4)
    self.assertEqual(flow_predict.default_min_overlap((8, 12)), 2)

  def test_errors_are_named(self):
    with self.assertRaisesRegex(ValueError, 'differ in size'):
      flow_predict.predict_flow(
        self.model,
        self.params,
        self.state,
        self.frames[0],
        self.frames[1][:, :20],
      )
    with self.assertRaises(FileNotFoundError):
      flow_predict.load_flow_model(os.path.join(self.root, 'missing.npz'))


if __name__ == '__main__':
  absltest.main()
