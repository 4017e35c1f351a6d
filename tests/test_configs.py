"""Every training config: loads, has the reference's keys and values, fixes its defects, builds.

The table `_REFERENCE` holds values read from the reference implementation's config files
(yang-song/score_sde, configs/), with its two typos resolved as intended (ve/ncsn/celeba.py
`training.loss` -> `training.sde`, ve/ncsnv2/bedroom.py `continuouse` -> `continuous`).
"""
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import load_config  # noqa: E402
from scoresde_jax import models  # noqa: E402
from scoresde_jax.run import networks  # noqa: E402

CONFIG_DIR = ROOT / 'configs'
# The score models' configs (the GANs' of configs/gan/ have other sections: tests/test_gan.py).
CONFIG_FILES = sorted(
    str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob('*.py')
    if p.name != '__init__.py' and not p.name.startswith('default_')
    and p.relative_to(CONFIG_DIR).parts[0] != 'gan')

_KEYS = ('training.sde', 'training.continuous', 'training.n_iters', 'training.batch_size',
         'training.reduce_mean', 'data.dataset', 'data.image_size', 'data.centered', 'model.name',
         'model.nf', 'model.ch_mult', 'model.num_res_blocks', 'model.sigma_max',
         'model.num_scales', 'model.ema_rate', 'sampling.predictor', 'sampling.corrector',
         'sampling.snr', 'optim.lr')

# Reference values of _KEYS, per config file.
_REFERENCE = {
    'subvp/cifar10_ddpm_continuous.py': ('subvpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ddpm', 128, (1, 2, 2, 2), 2, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'subvp/cifar10_ddpmpp_continuous.py': ('subvpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'subvp/cifar10_ddpmpp_deep_continuous.py': ('subvpsde', True, 950001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 8, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'subvp/cifar10_ncsnpp_continuous.py': ('subvpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'subvp/cifar10_ncsnpp_deep_continuous.py': ('subvpsde', True, 950001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 8, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    've/bedroom_ncsnpp_continuous.py': ('vesde', True, 2400001, 64, False, 'LSUN', 256, False, 'ncsnpp', 128, (1, 1, 2, 2, 2, 2, 2), 2, 378, 2000, 0.999, 'reverse_diffusion', 'langevin', 0.075, 0.0002),
    've/celeba_ncsnpp.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsnpp', 128, (1, 2, 2, 2), 4, 90.0, 1000, 0.999, 'reverse_diffusion', 'langevin', 0.17, 0.0002),
    've/celebahq_256_ncsnpp_continuous.py': ('vesde', True, 2400001, 64, False, 'CelebAHQ', 256, False, 'ncsnpp', 128, (1, 1, 2, 2, 2, 2, 2), 2, 348, 2000, 0.999, 'reverse_diffusion', 'langevin', 0.075, 0.0002),
    've/celebahq_ncsnpp_continuous.py': ('vesde', True, 2400001, 8, False, 'CelebAHQ', 1024, False, 'ncsnpp', 16, (1, 2, 4, 8, 16, 32, 32, 32), 1, 1348, 2000, 0.9999, 'reverse_diffusion', 'langevin', 0.15, 0.0002),
    've/church_ncsnpp_continuous.py': ('vesde', True, 2400001, 64, False, 'LSUN', 256, False, 'ncsnpp', 128, (1, 1, 2, 2, 2, 2, 2), 2, 380, 2000, 0.999, 'reverse_diffusion', 'langevin', 0.075, 0.0002),
    've/cifar10_ddpm.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ddpm', 128, (1, 2, 2, 2), 2, 50, 1000, 0.999, 'reverse_diffusion', 'langevin', 0.16, 0.0002),
    've/cifar10_ncsnpp.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.999, 'reverse_diffusion', 'langevin', 0.16, 0.0002),
    've/cifar10_ncsnpp_continuous.py': ('vesde', True, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.999, 'reverse_diffusion', 'langevin', 0.16, 0.0002),
    've/cifar10_ncsnpp_deep_continuous.py': ('vesde', True, 950001, 128, False, 'CIFAR10', 32, False, 'ncsnpp', 128, (1, 2, 2, 2), 8, 50, 1000, 0.999, 'reverse_diffusion', 'langevin', 0.16, 0.0002),
    've/ffhq_256_ncsnpp_continuous.py': ('vesde', True, 2400001, 64, False, 'FFHQ', 256, False, 'ncsnpp', 128, (1, 1, 2, 2, 2, 2, 2), 2, 348, 2000, 0.999, 'reverse_diffusion', 'langevin', 0.075, 0.0002),
    've/ffhq_ncsnpp_continuous.py': ('vesde', True, 2400001, 8, True, 'FFHQ', 1024, False, 'ncsnpp', 16, (1, 2, 4, 8, 16, 32, 32, 32), 1, 1348, 2000, 0.9999, 'reverse_diffusion', 'langevin', 0.15, 0.0002),
    've/ncsn/celeba.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsn', 128, None, None, 1.0, 10, 0.0, 'none', 'ald', 0.316, 0.001),
    've/ncsn/celeba_124.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsn', 128, None, None, 90.0, 500, 0.0, 'none', 'ald', 0.128, 0.001),
    've/ncsn/celeba_1245.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsn', 128, None, None, 90.0, 500, 0.999, 'none', 'ald', 0.128, 0.001),
    've/ncsn/celeba_5.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsn', 128, None, None, 1.0, 10, 0.999, 'none', 'ald', 0.316, 0.001),
    've/ncsn/cifar10.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsn', 128, None, None, 1, 10, 0.0, 'none', 'ald', 0.316, 0.001),
    've/ncsn/cifar10_124.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsn', 128, None, None, 50, 232, 0.0, 'none', 'ald', 0.176, 0.001),
    've/ncsn/cifar10_1245.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsn', 128, None, None, 50, 232, 0.999, 'none', 'ald', 0.176, 0.001),
    've/ncsn/cifar10_5.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsn', 128, None, None, 1, 10, 0.999, 'none', 'ald', 0.316, 0.001),
    've/ncsnv2/bedroom.py': ('vesde', False, 2400001, 128, False, 'LSUN', 128, False, 'ncsnv2_128', 128, None, None, 190, 1086, 0.9999, 'none', 'ald', 0.095, 0.0001),
    've/ncsnv2/celeba.py': ('vesde', False, 1300001, 128, False, 'CELEBA', 64, False, 'ncsnv2_64', 128, None, None, 90.0, 500, 0.999, 'none', 'ald', 0.128, 0.0001),
    've/ncsnv2/cifar10.py': ('vesde', False, 1300001, 128, False, 'CIFAR10', 32, False, 'ncsnv2_64', 128, None, None, 50, 232, 0.999, 'none', 'ald', 0.176, 0.0001),
    'vp/cifar10_ddpmpp.py': ('vpsde', False, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'ancestral_sampling', 'none', 0.16, 0.0002),
    'vp/cifar10_ddpmpp_continuous.py': ('vpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'vp/cifar10_ddpmpp_deep_continuous.py': ('vpsde', True, 950001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 8, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'vp/cifar10_ncsnpp.py': ('vpsde', False, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'reverse_diffusion', 'none', 0.16, 0.0002),
    'vp/cifar10_ncsnpp_continuous.py': ('vpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 4, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'vp/cifar10_ncsnpp_deep_continuous.py': ('vpsde', True, 950001, 128, True, 'CIFAR10', 32, True, 'ncsnpp', 128, (1, 2, 2, 2), 8, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'vp/ddpm/bedroom.py': ('vpsde', False, 2400001, 64, True, 'LSUN', 256, True, 'ddpm', 128, (1, 1, 2, 2, 4, 4), 2, 378, 1000, 0.9999, 'ancestral_sampling', 'none', 0.075, 2e-05),
    'vp/ddpm/celebahq.py': ('vpsde', False, 2400001, 64, True, 'CelebAHQ', 256, True, 'ddpm', 128, (1, 1, 2, 2, 4, 4), 2, 378, 1000, 0.9999, 'ancestral_sampling', 'none', 0.075, 2e-05),
    'vp/ddpm/church.py': ('vpsde', False, 2400001, 64, True, 'LSUN', 256, True, 'ddpm', 128, (1, 1, 2, 2, 4, 4), 2, 378, 1000, 0.9999, 'ancestral_sampling', 'none', 0.075, 2e-05),
    'vp/ddpm/cifar10.py': ('vpsde', False, 1300001, 128, True, 'CIFAR10', 32, True, 'ddpm', 128, (1, 2, 2, 2), 2, 50, 1000, 0.9999, 'ancestral_sampling', 'none', 0.16, 0.0002),
    'vp/ddpm/cifar10_continuous.py': ('vpsde', True, 1300001, 128, True, 'CIFAR10', 32, True, 'ddpm', 128, (1, 2, 2, 2), 2, 50, 1000, 0.9999, 'euler_maruyama', 'none', 0.16, 0.0002),
    'vp/ddpm/cifar10_unconditional.py': ('vpsde', False, 1300001, 128, True, 'CIFAR10', 32, True, 'ddpm', 128, (1, 2, 2, 2), 2, 50, 1000, 0.9999, 'ancestral_sampling', 'none', 0.16, 0.0002),
}

# Keys every config carries (the reference's, plus model.dtype and data.tfrecords_path).
REQUIRED = {
    'training': ('batch_size', 'n_iters', 'snapshot_freq', 'log_freq', 'eval_freq',
                 'snapshot_freq_for_preemption', 'snapshot_sampling', 'likelihood_weighting',
                 'continuous', 'n_jitted_steps', 'reduce_mean', 'sde'),
    'sampling': ('method', 'predictor', 'corrector', 'n_steps_each', 'noise_removal',
                 'probability_flow', 'snr'),
    'eval': ('begin_ckpt', 'end_ckpt', 'batch_size', 'enable_sampling', 'num_samples',
             'enable_loss', 'enable_bpd', 'bpd_dataset'),
    'data': ('dataset', 'image_size', 'random_flip', 'centered', 'uniform_dequantization',
             'num_channels', 'tfrecords_path'),
    'model': ('name', 'sigma_min', 'sigma_max', 'num_scales', 'beta_min', 'beta_max', 'dropout',
              'ema_rate', 'nf', 'nonlinearity', 'normalization', 'scale_by_sigma', 'dtype'),
    'optim': ('weight_decay', 'optimizer', 'lr', 'beta1', 'eps', 'warmup', 'grad_clip'),
}
UNET_KEYS = ('ch_mult', 'num_res_blocks', 'attn_resolutions', 'resamp_with_conv', 'conditional')
NCSNPP_KEYS = ('fir', 'fir_kernel', 'skip_rescale', 'resblock_type', 'progressive',
               'progressive_input', 'progressive_combine', 'attention_type', 'init_scale',
               'embedding_type')
SDES = {'vesde', 'vpsde', 'subvpsde'}
PREDICTORS = {'euler_maruyama', 'reverse_diffusion', 'ancestral_sampling', 'none'}
CORRECTORS = {'langevin', 'ald', 'none'}
TFRECORD_DATASETS = {'CelebAHQ', 'FFHQ'}
DATASETS = {'CIFAR10', 'CELEBA', 'LSUN', 'DIGITS', 'FOLDER'} | TFRECORD_DATASETS


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


@pytest.fixture(scope='module')
def configs():
  return {name: load_config(str(CONFIG_DIR / name)) for name in CONFIG_FILES}


def test_every_reference_config_exists():
  missing = sorted(set(_REFERENCE) - set(CONFIG_FILES))
  assert not missing, f'reference configs without a counterpart: {missing}'
  for extra in ('ve/cifar10.py', 'vp/cifar10.py', 'subvp/cifar10.py', 've/digits.py',
                'vp/digits.py', 'subvp/digits.py'):
    assert extra in CONFIG_FILES


@pytest.mark.parametrize('name', sorted(_REFERENCE))
def test_reference_hyperparameters(configs, name):
  config = configs[name]
  for key, want in zip(_KEYS, _REFERENCE[name]):
    got = _get(config, key)
    assert got == want and type(got) is type(want), f'{name}: {key} = {got!r}, reference {want!r}'


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_values_are_valid(configs, name):
  config = configs[name]
  assert isinstance(config, ml_collections.ConfigDict)
  for section, keys in REQUIRED.items():
    for key in keys:
      assert key in config[section], f'{name}: missing {section}.{key}'
  assert isinstance(config.seed, int)
  training, sampling, data, model = config.training, config.sampling, config.data, config.model
  assert training.sde in SDES
  assert sampling.method == 'pc'
  assert sampling.predictor in PREDICTORS and sampling.corrector in CORRECTORS
  assert not (sampling.predictor == 'none' and sampling.corrector == 'none')
  assert data.dataset in DATASETS
  assert data.num_channels in (1, 3)
  assert model.dtype in ('float32', 'bfloat16')
  assert 0 <= model.ema_rate < 1
  assert 0 < model.sigma_min < model.sigma_max
  assert 0 < model.beta_min < model.beta_max
  assert isinstance(model.num_scales, int) and model.num_scales > 1
  assert 0 <= model.dropout < 1
  assert config.eval.begin_ckpt <= config.eval.end_ckpt
  assert config.eval.bpd_dataset in ('train', 'test')
  # Fused steps must land exactly on every logging/checkpoint step.
  for freq in ('snapshot_freq', 'log_freq', 'eval_freq', 'snapshot_freq_for_preemption'):
    assert training[freq] % training.n_jitted_steps == 0, f'{name}: {freq}'
  assert training.batch_size > 0 and training.n_iters > 0
  assert data.image_size in (8, 16, 32, 64, 128, 256, 1024)
  if model.name in ('ncsnpp', 'ddpm'):
    for key in UNET_KEYS:
      assert key in model, f'{name}: missing model.{key}'
    levels = len(model.ch_mult)
    assert data.image_size % 2 ** (levels - 1) == 0
    resolutions = {data.image_size // 2 ** i for i in range(levels)}
    assert set(model.attn_resolutions) <= resolutions, f'{name}: attention at a missing level'
    assert model.normalization == 'GroupNorm'
  if model.name == 'ncsnpp':
    for key in NCSNPP_KEYS:
      assert key in model, f'{name}: missing model.{key}'
    assert model.resblock_type in ('biggan', 'ddpm')
    assert model.progressive in ('none', 'output_skip', 'residual')
    assert model.progressive_input in ('none', 'input_skip', 'residual')
    assert model.progressive_combine in ('sum', 'cat')
    assert model.embedding_type in ('fourier', 'positional')
  if model.name.startswith('ncsn') and model.name != 'ncsnpp':
    assert model.normalization == 'InstanceNorm++'
    assert model.interpolation == 'bilinear'
    assert not training.continuous, 'NCSN/NCSNv2 take noise-level indices: discrete training'
    assert training.sde == 'vesde'
  # Sub-VP and continuous VP models take t * 999 labels: a positional/Fourier net either way.
  if training.sde in ('vpsde', 'subvpsde'):
    assert data.centered and not model.scale_by_sigma


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_reference_defects_are_fixed(configs, name):
  config = configs[name]
  assert 'loss' not in config.training, 'training.loss is not a key; training.sde is'
  assert 'continuouse' not in config.training
  assert 'device' not in config, 'torch device in a JAX config'
  if config.model.name == 'ncsn':
    assert config.model.num_classes == config.model.num_scales
  if config.data.dataset in TFRECORD_DATASETS:
    assert config.data.tfrecords_path == '', 'TFRecord paths are user settings, empty by default'
  for section in config.values():
    if isinstance(section, ml_collections.ConfigDict):
      for value in section.values():
        assert not (isinstance(value, str) and value.startswith('/')), f'{name}: personal path'


def test_ncsn_num_classes_follows_num_scales():
  config = load_config(str(CONFIG_DIR / 've/ncsn/cifar10.py'))
  config.model.num_scales = 37  # What a --config.model.num_scales=37 override does.
  assert config.model.num_classes == 37


def test_short_names_are_the_headline_models(configs):
  pairs = (('ve/cifar10.py', 've/cifar10_ncsnpp_deep_continuous.py'),
           ('vp/cifar10.py', 'vp/cifar10_ddpmpp_deep_continuous.py'),
           ('subvp/cifar10.py', 'subvp/cifar10_ddpmpp_deep_continuous.py'))
  for short, full in pairs:
    assert configs[short].to_dict() == configs[full].to_dict()


def test_one_kilopixel_configs_carry_default_keys(configs):
  # The reference wrote these from scratch and dropped keys the defaults have.
  default = load_config(str(CONFIG_DIR / 've/church_ncsnpp_continuous.py'))
  for name in ('ve/celebahq_ncsnpp_continuous.py', 've/ffhq_ncsnpp_continuous.py'):
    for section in ('training', 'sampling', 'eval', 'data', 'optim'):
      assert set(default[section]) - {'category'} <= set(configs[name][section]), (name, section)


def test_digits_configs(configs):
  for sde in ('ve', 'vp', 'subvp'):
    config = configs[f'{sde}/digits.py']
    assert config.data.dataset == 'DIGITS'
    assert config.data.image_size == 8 and config.data.num_channels == 1
    assert config.training.continuous and config.training.batch_size == 64
    assert config.training.n_jitted_steps == 1  # XLA:CPU runs gradients in loops slowly
    assert config.model.nf == 32 and tuple(config.model.ch_mult) == (1, 2)
    assert config.model.fir is False and config.model.attn_resolutions == (4,)
    assert config.training.sde == {'ve': 'vesde', 'vp': 'vpsde', 'subvp': 'subvpsde'}[sde]


def test_load_config_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='not found'):
    load_config(str(tmp_path / 'nope.py'))
  bad = tmp_path / 'no_get_config.py'
  bad.write_text('x = 1\n')
  with pytest.raises(ValueError, match='get_config'):
    load_config(str(bad))
  wrong = tmp_path / 'wrong_type.py'
  wrong.write_text('def get_config():\n  return {}\n')
  with pytest.raises(ValueError, match='ConfigDict'):
    load_config(str(wrong))


# Model keys that change values, never shapes (num_scales does for NCSN: one embedding row
# per noise level).
_SHAPE_FREE = {'ema_rate', 'sigma_min', 'sigma_max', 'beta_min', 'beta_max', 'dropout',
               'scale_by_sigma', 'dtype', 'sigma_begin'}


def _architecture_key(config):
  # Configs whose networks have the same shapes are built once.
  ignore = _SHAPE_FREE | ({'num_scales', 'num_classes'} if config.model.name != 'ncsn' else set())
  model = {k: v for k, v in config.model.to_dict().items() if k not in ignore}
  return repr((sorted(model.items()), config.data.image_size, config.data.num_channels))


def _shapes(config):
  """Input shape, parameter shapes and output shape of the config's network (no FLOPs spent)."""
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  model = networks.get_model(config)
  if config.model.name in ('ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'):
    labels = jnp.zeros((1,), jnp.int32)  # Noise-level indices.
  else:
    labels = jnp.full((1,), 0.5, jnp.float32)  # Continuous time or sigma.

  def build(rng):
    # One trace yields both the parameters and the output.
    out, variables = model.init_with_output(
        {'params': rng, 'dropout': rng}, jnp.zeros(shape, jnp.float32), labels, train=False)
    return variables['params'], out

  params, out = jax.eval_shape(build, jax.random.PRNGKey(0))
  return shape, params, out


def test_every_registered_model_builds(configs):
  registered = set(models.registered_models())
  seen = set()
  for name in CONFIG_FILES:
    config = configs[name]
    key = _architecture_key(config)
    if config.model.name not in registered or key in seen:
      continue
    seen.add(key)
    shape, params, out = _shapes(config)
    assert out.shape == shape, name
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params)), name


def test_every_config_model_is_registered(configs):
  # Fails until every network (ncsnpp, ddpm, ncsnv2_*, ncsn) exists: that is intended.
  registered = set(models.registered_models())
  missing = sorted({f'{configs[n].model.name} ({n})' for n in CONFIG_FILES
                    if configs[n].model.name not in registered})
  assert not missing, f'configs whose model.name is not registered: {missing}'
