"""Tests for experiments.glue.model: shapes, names and pretrained loading."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import masked_lm as masked_lm_config
from experiments.glue import model as task_model
from experiments.masked_lm import train
from perceiver_io import models

OFFICIAL = os.path.join(
  os.path.dirname(__file__),
  '..',
  '..',
  'testdata',
  'official_checkpoints',
  'language_perceiver_io_bytes.json',
)


def tiny_model(num_outputs=3):
  base = masked_lm_config.get_config('local,tiny').model
  return task_model.build(task_model.get_config(num_outputs, base))


class ModelTest(absltest.TestCase):
  def test_logits_shape_and_padding_invariance(self):
    model = tiny_model(3)
    params, state = task_model.init_params(model, 32, seed=0)
    inputs = np.full((2, 32), 50, np.int32)
    mask = np.ones((2, 32), np.int32)
    mask[1, 10:] = 0
    logits, _ = model.apply(params, state, None, inputs=inputs, input_mask=mask)
    self.assertEqual(logits.shape, (2, 3))
    # Padding content must not matter.
    changed = inputs.copy()
    changed[1, 10:] = 99
    logits2, _ = model.apply(
      params, state, None, inputs=changed, input_mask=mask
    )
    np.testing.assert_allclose(logits[1], logits2[1], atol=1e-5)

  def test_needs_num_outputs(self):
    with self.assertRaisesRegex(ValueError, 'num_outputs'):
      task_model.build(models.get_config(models.LANGUAGE))

  def test_config_from_a_locked_base(self):
    # `--config` from the command line is locked (config_flags).
    base = masked_lm_config.get_config('local,tiny').model
    base.lock()
    config = task_model.get_config(3, base)
    self.assertEqual(config.num_outputs, 3)
    self.assertTrue(config.is_locked)
    self.assertNotIn('num_outputs', base)

  def test_encoder_names_match_the_released_checkpoint(self):
    if not os.path.isfile(OFFICIAL):
      self.skipTest(f'{OFFICIAL} is not available.')
    with open(OFFICIAL, encoding='utf-8') as f:
      released = json.load(f)['params']
    model = task_model.build(task_model.get_config(2))
    inputs = jnp.zeros((1, 64), jnp.int32)
    shapes = jax.eval_shape(
      lambda: model.init(
        jax.random.PRNGKey(0), inputs=inputs, input_mask=jnp.ones_like(inputs)
      )
    )[0]
    pretrained = [m for m in shapes if task_model.is_pretrained_module(m)]
    self.assertLen([m for m in pretrained if 'self_attention' in m], 26 * 8)
    for module in pretrained:
      self.assertIn(module, released)
      for name, leaf in shapes[module].items():
        self.assertEqual(list(leaf.shape), released[module][name], module)
    fresh = [m for m in shapes if not task_model.is_pretrained_module(m)]
    self.assertTrue(all(m not in released for m in fresh))


class TransferTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    config = masked_lm_config.get_config('local,tiny')
    self.mlm, _ = train.build_model(config).init(
      jax.random.PRNGKey(1),
      inputs=np.zeros((1, 32), np.int32),
      input_mask=np.ones((1, 32), np.int32),
    )
    self.mlm = jax.device_get(self.mlm)
    self.model = tiny_model(2)
    self.fresh, _ = task_model.init_params(self.model, 32, seed=0)

  def test_encoder_is_loaded_and_the_rest_kept(self):
    out = task_model.transfer_pretrained(self.fresh, self.mlm)
    for module, leaves in out.items():
      for name, value in leaves.items():
        source = (
          self.mlm if task_model.is_pretrained_module(module) else self.fresh
        )
        np.testing.assert_array_equal(value, source[module][name])
    self.assertIn('embed', out)
    self.assertIn('classification_head/linear', out)

  def test_shape_mismatch_names_the_parameter(self):
    bad = dict(self.mlm)
    bad['embed'] = {'embeddings': np.zeros((262, 8), np.float32)}
    with self.assertRaisesRegex(
      ValueError, r'embed/embeddings has shape \(262, 8\)'
    ):
      task_model.transfer_pretrained(self.fresh, bad, source='ckpt')

  def test_missing_module(self):
    bad = {k: v for k, v in self.mlm.items() if 'self_attention_1' not in k}
    with self.assertRaisesRegex(ValueError, 'has no module'):
      task_model.transfer_pretrained(self.fresh, bad)


if __name__ == '__main__':
  absltest.main()
