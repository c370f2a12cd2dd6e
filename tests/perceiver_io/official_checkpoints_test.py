"""Full-size models have exactly the released checkpoints' parameters.

testdata/official_checkpoints/*.json list the name and shape of every
parameter (and state entry) of DeepMind's six released files.
"""

import json
import pathlib

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import models
from perceiver_io import pretrained

CHECKPOINTS_DIR = (
  pathlib.Path(__file__).resolve().parents[1]
  / 'testdata'
  / ('official_checkpoints')
)


def _shapes(tree):
  return {
    module: {name: list(np.shape(leaf)) for name, leaf in leaves.items()}
    for module, leaves in tree.items()
  }


class OfficialCheckpointsTest(parameterized.TestCase):
  @parameterized.parameters(*pretrained.RELEASED_FILES.items())
  def test_parameter_names_and_shapes(self, file_stem, name):
    released = json.loads((CHECKPOINTS_DIR / f'{file_stem}.json').read_text())
    model = models.build(name)
    inputs = models.example_inputs(name, model.config)
    params, state = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), **inputs)
    )
    self.assertEqual(_shapes(params), released['params'])
    self.assertEqual(_shapes(state), released['state'])
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    self.assertEqual(num_params, released['total_params'])

  @parameterized.parameters(*pretrained.RELEASED_FILES.items())
  def test_architecture_inferred_from_parameter_names(self, file_stem, name):
    released = json.loads((CHECKPOINTS_DIR / f'{file_stem}.json').read_text())
    params = {
      module: {leaf: np.zeros(0) for leaf in leaves}
      for module, leaves in released['params'].items()
    }
    self.assertEqual(
      pretrained.infer_architecture('weights.pickle', params), name
    )
    self.assertEqual(
      pretrained.infer_architecture(f'{file_stem}.pystate', {}), name
    )


if __name__ == '__main__':
  absltest.main()
