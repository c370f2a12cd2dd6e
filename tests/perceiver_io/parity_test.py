"""Outputs against DeepMind's official implementation (testdata/parity).

Each case holds small random parameters under the official Haiku names, the
inputs, and the outputs that DeepMind's code computed from them. See
testdata/parity/README.md.
"""

import json
import pathlib

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from perceiver_io import models
from perceiver_io import runtime

PARITY_DIR = pathlib.Path(__file__).resolve().parents[1] / 'testdata' / 'parity'
CASES = (
  ('language_small', models.LANGUAGE),
  ('imagenet_fourier_small', models.IMAGENET_FOURIER),
  ('imagenet_learned_small', models.IMAGENET_LEARNED),
  ('imagenet_conv_small', models.IMAGENET_CONV),
  ('optical_flow_small', models.OPTICAL_FLOW),
  ('video_autoencoding_small', models.VIDEO_AUTOENCODING),
)


def load_case(case):
  """(description, params, state, inputs, outputs) of one parity case."""
  description = json.loads((PARITY_DIR / f'{case}.json').read_text())
  arrays = np.load(PARITY_DIR / f'{case}.npz')
  trees = {'params': {}, 'state': {}, 'inputs': {}, 'outputs': {}}
  for key in arrays.files:
    kind, rest = key.split('/', 1)
    if kind in ('params', 'state'):
      module, name = rest.rsplit(':', 1)
      trees[kind].setdefault(module, {})[name] = arrays[key]
    else:
      trees[kind][rest] = arrays[key]
  return (
    description,
    trees['params'],
    trees['state'],
    trees['inputs'],
    trees['outputs'],
  )


def _update(config, section, kwargs):
  kwargs = {k: v for k, v in kwargs.items() if k != 'class'}
  config[section].update(kwargs)


def config_for_case(name, description):
  """Our config for a parity case: the official constructor kwargs as is."""
  config = models.get_config(name)
  modules = description['official_modules']
  case = description['case']
  if name == models.LANGUAGE:
    config.d_model = case['d_model']
    config.max_seq_len = case['max_seq_len']
    config.encoder.update(modules['encoder']['kwargs'])
    config.decoder.update(case['decoder'])
  elif name in models.IMAGENET_ARCHITECTURES:
    config.input_preprocessor = modules['input_preprocessor']['kwargs']
    config.encoder.update(modules['encoder']['kwargs'])
    config.decoder = modules['decoder']['kwargs']
  elif name == models.OPTICAL_FLOW:
    config.train_size = tuple(case['train_size'])
    config.input_preprocessor = modules['input_preprocessor']['kwargs']
    config.encoder.update(modules['encoder']['kwargs'])
    decoder = dict(modules['decoder']['kwargs'])
    del decoder['output_image_shape']  # Set from config.train_size.
    config.decoder = decoder
  else:
    preprocessor = modules['input_preprocessor']['kwargs']
    config.input_preprocessor = dict(
      min_padding_size=preprocessor['min_padding_size'],
      mask_probs=preprocessor['mask_probs'],
    )
    config.audio_preprocessor = preprocessor['modalities']['audio']['kwargs']
    config.image_preprocessor = preprocessor['modalities']['image']['kwargs']
    config.encoder.update(modules['encoder']['kwargs'])
    decoder = dict(modules['decoder']['kwargs'])
    sub = decoder.pop('modalities')
    for key in ('num_outputs', 'subsampled_index_dims'):
      del decoder[key]  # Set by the model from its inputs.
    config.decoder = decoder
    audio_decoder = dict(sub['audio']['kwargs'])
    for key in ('output_index_dims', 'subsampled_index_dims'):
      audio_decoder.pop(key, None)
    config.audio_decoder = audio_decoder
    image_decoder = dict(sub['image']['kwargs'])
    image_decoder.pop('output_shape')
    config.image_decoder = image_decoder
    label_decoder = dict(sub['label']['kwargs'])
    config.num_classes = label_decoder.pop('num_classes')
    config.label_decoder = label_decoder
  return config


def model_inputs(name, inputs):
  if name == models.VIDEO_AUTOENCODING:
    return dict(
      images=inputs['images'],
      audio=inputs['audio'],
      image_points=inputs['image_points'],
      audio_points=inputs['audio_points'],
    )
  return dict(inputs)


def assert_matches(test, outputs, expected):
  """|diff| <= 1e-4 relative to the output scale, per output."""
  if not isinstance(expected, dict):
    outputs, expected = {'out': outputs}, {'out': expected}
  test.assertEqual(set(outputs), set(expected))
  for key, want in expected.items():
    got = np.asarray(outputs[key])
    test.assertEqual(got.shape, want.shape, key)
    scale = max(np.max(np.abs(want)), 1e-6)
    err = np.max(np.abs(got - want)) / scale
    test.assertLessEqual(err, 1e-4, f'{key}: relative error {err:.2e}')


class ParityTest(parameterized.TestCase):
  @parameterized.product(case=CASES, implementation=runtime.ATTENTION_IMPLS)
  def test_outputs_match_official(self, case, implementation):
    case_name, name = case
    description, params, state, inputs, expected = load_case(case_name)
    config = config_for_case(name, description)
    config.runtime.attention_impl = implementation
    model = models.build(name, config)
    inputs = model_inputs(name, inputs)

    # The parameter tree we build equals the official one.
    init_params, init_state = model.init(jax.random.PRNGKey(0), **inputs)
    shapes = jax.tree.map(np.shape, params)
    self.assertEqual(jax.tree.map(np.shape, init_params), shapes)
    self.assertEqual(
      jax.tree.map(np.shape, init_state), jax.tree.map(np.shape, state)
    )

    outputs, _ = jax.jit(model.apply)(params, state, None, **inputs)
    if len(expected) == 1 and name != models.VIDEO_AUTOENCODING:
      expected = next(iter(expected.values()))
    assert_matches(self, outputs, expected)


if __name__ == '__main__':
  absltest.main()
