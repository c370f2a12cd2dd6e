"""Tests of config helpers: common fields, arguments and durations."""

import json

import ml_collections
from absl.testing import absltest
from absl.testing import parameterized

from experiments import config_utils
from experiments import metrics_writer
from perceiver_io import models
from perceiver_io import runtime as runtime_lib


class AddTrainerFieldsTest(absltest.TestCase):
  def test_defaults_overrides_and_kept_values(self):
    config = ml_collections.ConfigDict({'seed': 7, 'model': {'x': 1}})
    config_utils.add_trainer_fields(config, batch_size=32)
    self.assertEqual(config.seed, 7)
    self.assertEqual(config.batch_size, 32)
    self.assertEqual(config.model.x, 1)
    for key in (
      'num_train_steps',
      'num_epochs',
      'log_every_steps',
      'eval_every_steps',
      'checkpoint_every_steps',
      'init_from',
      'mode',
      'grad_accum_steps',
      'eval_batch_size',
      'checkpoint_keep',
      'checkpoint_async',
    ):
      self.assertIn(key, config)
    self.assertEqual(config.optimizer.name, 'lamb')
    self.assertEqual(config.schedule.name, 'constant_cosine')
    self.assertIn('data', config)

  def test_placeholders_accept_overrides_after_lock(self):
    config = config_utils.add_trainer_fields(ml_collections.ConfigDict())
    config.lock()
    config.num_epochs = 3.5
    config.eval_batch_size = 10
    with self.assertRaises(AttributeError):
      config.num_epoch = 3  # A typo is an error in a locked config.


class ResolveStepsTest(parameterized.TestCase):
  def _config(self, steps, epochs, batch=100):
    config = config_utils.add_trainer_fields(
      ml_collections.ConfigDict(), batch_size=batch, num_train_steps=steps
    )
    config.num_epochs = epochs
    return config

  def test_steps(self):
    self.assertEqual(
      config_utils.resolve_steps(self._config(42, None), None), 42
    )

  def test_epochs_follow_the_batch_size(self):
    # The paper: 110 epochs of 1,281,167 images at batch 1024.
    config = self._config(-1, 110.0, batch=1024)
    self.assertEqual(config_utils.resolve_steps(config, 1_281_167), 137_625)
    config.batch_size = 512
    self.assertEqual(config_utils.resolve_steps(config, 1_281_167), 275_250)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'only one of'):
      config_utils.resolve_steps(self._config(10, 1.0), 100)
    with self.assertRaisesRegex(ValueError, 'num_train_steps > 0'):
      config_utils.resolve_steps(self._config(-1, None), 100)
    with self.assertRaisesRegex(ValueError, 'size of the train split'):
      config_utils.resolve_steps(self._config(-1, 2.0), None)

  def test_steps_of(self):
    cfg = ml_collections.ConfigDict({'warmup_steps': 0, 'warmup_epochs': 1.5})
    self.assertEqual(config_utils.steps_of(cfg, 'warmup', 1000, 100), 15)
    cfg.warmup_epochs = 0.0
    self.assertEqual(config_utils.steps_of(cfg, 'warmup', 1000, 100), 0)


class ParseArgTest(parameterized.TestCase):
  @parameterized.parameters(
    (None, 'fourier', False, 0),
    ('', 'fourier', False, 0),
    ('conv', 'conv', False, 0),
    ('conv,runlocal', 'conv', True, 0),
    ('variant=learned,runlocal=false,size=3', 'learned', False, 3),
    ('runlocal=1', 'fourier', True, 0),
  )
  def test_forms(self, arg, variant, runlocal, size):
    args = config_utils.parse_arg(
      arg, variant='fourier', runlocal=False, size=0
    )
    self.assertEqual(
      (args.variant, args.runlocal, args.size), (variant, runlocal, size)
    )

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "Unknown config argument 'bad'"):
      config_utils.parse_arg('bad=1', variant='a')
    with self.assertRaisesRegex(ValueError, 'not a bool'):
      config_utils.parse_arg('flag=maybe', variant='a', flag=False)
    with self.assertRaisesRegex(ValueError, 'not a int'):
      config_utils.parse_arg('size=big', variant='a', size=1)

  def test_to_dict_is_json_friendly(self):
    config = ml_collections.ConfigDict({'a': (1, 2), 'b': {'c': (3,)}})
    self.assertEqual(
      config_utils.to_dict(config), {'a': [1, 2], 'b': {'c': [3]}}
    )

  def test_config_changes(self):
    old = {'batch_size': 64, 'model': {'width': 8, 'sizes': [1, 2]}, 'x': 1}
    new = {'batch_size': 32, 'model': {'width': 8, 'sizes': [1, 3]}, 'y': 2}
    changes = config_utils.config_changes(old, new, ignore=('x',))
    self.assertEqual(
      changes,
      [
        ('batch_size', 64, 32),
        ('model.sizes', [1, 2], [1, 3]),
        ('y', config_utils.ABSENT, 2),
      ],
    )
    self.assertEqual(
      config_utils.format_changes(changes, limit=2),
      'batch_size: 64 -> 32; model.sizes: [1, 2] -> [1, 3]; and 1 more',
    )
    self.assertEqual(
      config_utils.format_changes(changes[2:]), 'y: (absent) -> 2'
    )
    # An empty section is no section: a run recorded with `model: {}`
    # resumes under a config that adds an ignored `model.runtime`.
    self.assertEqual(
      config_utils.config_changes(
        {'model': {}, 'z': {}},
        {'model': {'runtime': {'attention_impl': 'einsum'}}},
        ignore=('model.runtime',),
      ),
      [],
    )
    # A section in `ignore` hides all of its keys.
    self.assertEqual(
      config_utils.config_changes(old, new, ('batch_size', 'model', 'x', 'y')),
      [],
    )


class UpgradeConfigRecordTest(absltest.TestCase):
  def _legacy(self):
    """A config.json of the version before `model.runtime`."""
    model = models.get_config(models.IMAGENET_FOURIER).to_dict()
    del model['runtime']
    model['encoder'].update(
      attention_impl='chunked',
      remat_blocks=True,
      remat_layers=False,
      scan_blocks=True,
      scan_layers=False,
      compute_dtype=None,
    )
    model['decoder']['attention_impl'] = 'einsum'
    model['input_preprocessor']['grid_inputs'] = False
    return {'batch_size': 8, 'compute_dtype': 'bfloat16', 'model': model}

  def test_moves_runtime_fields_to_model_runtime(self):
    record = config_utils.upgrade_config_record(self._legacy())
    self.assertNotIn('compute_dtype', record)
    runtime = record['model']['runtime']
    self.assertEqual(
      runtime,
      runtime_lib.config(
        attention_impl='chunked',  # The encoder's.
        remat_blocks=True,
        compute_dtype='bfloat16',
        grid_inputs=False,
      ).to_dict(),
    )
    for section in ('encoder', 'decoder', 'input_preprocessor'):
      self.assertEmpty(
        set(record['model'][section]) & set(runtime_lib.FIELDS), section
      )
    # The upgraded model config builds.
    config = ml_collections.ConfigDict(record['model'])
    models.build(models.IMAGENET_FOURIER, config)

  def test_todays_record_is_unchanged(self):
    record = {'model': models.get_config(models.LANGUAGE).to_dict(), 'seed': 1}
    self.assertEqual(config_utils.upgrade_config_record(record), record)
    self.assertEqual(config_utils.upgrade_config_record({'a': 1}), {'a': 1})

  def test_read_config_upgrades(self):
    workdir = self.create_tempdir().full_path
    legacy = dict(self._legacy(), run={'experiment': 'experiments.masked_lm'})
    with open(f'{workdir}/{metrics_writer.CONFIG_FILE}', 'w') as f:
      json.dump(legacy, f)
    record = metrics_writer.read_config(workdir)
    self.assertEqual(record['model']['runtime']['compute_dtype'], 'bfloat16')
    self.assertNotIn('attention_impl', record['model']['encoder'])
    self.assertEqual(record['run']['experiment'], 'experiments.masked_lm.train')


if __name__ == '__main__':
  absltest.main()
