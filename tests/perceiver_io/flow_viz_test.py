"""Tests for perceiver_io.flow_viz: the Middlebury colour wheel."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import flow_viz


def _color(u, v, max_radius=1.0):
  flow = np.array([[[u, v]]], np.float64)
  return tuple(int(c) for c in flow_viz.flow_to_color(flow, max_radius)[0, 0])


class ColorWheelTest(parameterized.TestCase):
  def test_wheel_ramps(self):
    wheel = flow_viz.make_colorwheel()
    self.assertEqual(wheel.shape, (55, 3))
    # Each ramp starts on its primary or secondary colour.
    starts = {
      0: (255, 0, 0),
      15: (255, 255, 0),
      21: (0, 255, 0),
      25: (0, 255, 255),
      36: (0, 0, 255),
      49: (255, 0, 255),
    }
    for index, color in starts.items():
      np.testing.assert_array_equal(wheel[index], color)
    # Neighbouring entries never jump by more than one ramp step.
    steps = np.abs(np.diff(np.concatenate([wheel, wheel[:1]]), axis=0))
    self.assertLessEqual(steps.max(), 255 / 4 + 1e-9)

  @parameterized.named_parameters(
    ('zero_is_white', 0.0, 0.0, (255, 255, 255)),
    ('right_is_red', 1.0, 0.0, (255, 0, 0)),
    # Left: angle 0 -> wheel position 27, 2/11 into cyan -> blue.
    ('left_is_cyan_blue', -1.0, 0.0, (0, 208, 255)),
    # Down (v > 0): position 13.5 of the red -> yellow ramp.
    ('down_is_orange_yellow', 0.0, 1.0, (255, 229, 0)),
    # Up: position 40.5, 4.5/13 into blue -> magenta.
    ('up_is_violet', 0.0, -1.0, (88, 0, 255)),
  )
  def test_known_vectors(self, u, v, expected):
    self.assertEqual(_color(u, v), expected)

  def test_saturation_grows_with_length(self):
    half = _color(0.5, 0.0)
    self.assertEqual(half, (255, 127, 127))
    # Beyond the radius: the full colour, darkened to 3/4.
    self.assertEqual(_color(2.0, 0.0), (191, 0, 0))

  def test_default_radius_is_the_largest_vector(self):
    flow = np.array([[[2.0, 0.0], [1.0, 0.0]]])
    image = flow_viz.flow_to_color(flow)
    self.assertEqual(tuple(image[0, 0]), (255, 0, 0))
    self.assertEqual(tuple(image[0, 1]), (255, 127, 127))
    # All-zero flow does not divide by zero.
    np.testing.assert_array_equal(
      flow_viz.flow_to_color(np.zeros((2, 3, 2))), 255
    )

  def test_invalid_and_nan_pixels_are_black(self):
    flow = np.ones((2, 2, 2))
    flow[0, 0] = np.nan
    valid = np.array([[True, True], [False, True]])
    image = flow_viz.flow_to_color(flow, valid=valid)
    np.testing.assert_array_equal(image[0, 0], 0)
    np.testing.assert_array_equal(image[1, 0], 0)
    self.assertGreater(image[0, 1].max(), 0)

  def test_legend_is_the_wheel(self):
    legend = flow_viz.colorwheel_legend(21)
    self.assertEqual(legend.shape, (21, 21, 3))
    np.testing.assert_array_equal(legend[10, 10], 255)  # Centre: no motion.
    np.testing.assert_array_equal(legend[10, 20], (255, 0, 0))  # Right.

  def test_with_legend_keeps_the_image_and_adds_the_wheel(self):
    flow = np.random.default_rng(0).normal(size=(50, 70, 2))
    image = flow_viz.flow_to_color(flow)
    out = flow_viz.with_legend(image, size=21, margin=2)
    self.assertEqual(out.shape, (50, 70 + 25, 3))
    np.testing.assert_array_equal(out[:, :70], image)
    wheel = out[2:23, 72:93]
    np.testing.assert_array_equal(wheel[10, 10], 255)  # Centre: no motion.
    np.testing.assert_array_equal(wheel[10, 20], (255, 0, 0))  # Rim, right.
    np.testing.assert_array_equal(wheel[0, 0], 255)  # Outside the disc.
    np.testing.assert_array_equal(out[30:, 70:], 255)  # Below: white.
    # A frame lower than the wheel is padded below with white.
    small = flow_viz.with_legend(image[:10, :10], size=33)
    self.assertEqual(small.shape, (33 + 8, 10 + 33 + 8, 3))
    np.testing.assert_array_equal(small[10:, :10], 255)
    with self.assertRaisesRegex(ValueError, 'uint8'):
      flow_viz.with_legend(image.astype(np.float32))

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, r'\[H, W, 2\]'):
      flow_viz.flow_to_color(np.zeros((4, 4)))
    with self.assertRaisesRegex(ValueError, 'max_radius'):
      flow_viz.flow_to_color(np.zeros((1, 1, 2)), max_radius=-1.0)


if __name__ == '__main__':
  absltest.main()
