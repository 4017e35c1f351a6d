"""NCSN++ weights in diffusers' layout (the Hub's google/ncsnpp-*) -> NCSNpp, without torch.

Fixtures (written by diffusers 0.42.1 with torch 2.13; random weights):
  diffusers_ncsnpp/pipeline/  a ScoreSdeVePipeline.save_pretrained folder (model_index.json,
    unet/ with config.json + fp16 diffusion_pytorch_model.safetensors, scheduler/): the Hub
    configs' settings (fourier, norm_num_groups null, norm_eps 1e-6, mid_block_scale_factor
    1.41421356237, attention_head_dim null, Skip blocks with attention at one middle
    resolution) at 16x16, channels (16, 32, 32, 32), one block a level.
  diffusers_ncsnpp/unet_bin/  a UNet2DModel folder with a torch.save `.bin` whose attention
    tensors carry the names of the Hub's converted files (query/key/value/proj_attn);
    channels (4, 8), attention in the middle block only, center_input_sample true.
  diffusers_ncsnpp_expected.npz: x [4, 16, 16, 3] (NHWC), sigmas [4] in [0.01, 50], and
    UNet2DModel(x, sigmas).sample of each folder (NHWC).

Diffusers' AttnSkip blocks normalize with other group counts than NCSN++ below 128 channels
(32 groups for the attention, min(C_in + C_skip // 4, 32) in the up-block resnets; at the
Hub models' >= 128 channels both give NCSN++'s min(C // 4, 32)). The pipeline fixture's
outputs were therefore computed by diffusers with NCSN++'s group counts set on its
GroupNorm modules (4 modules: the two attentions, the two up-block resnets' norm1): the
function the Hub models compute. The unet_bin fixture needed no such change.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from scoresde_jax import diffusers_weights as dw
from scoresde_jax import errors
from scoresde_jax.models.ncsnpp import NCSNpp

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
PIPELINE = os.path.join(FIXTURES, 'diffusers_ncsnpp', 'pipeline')
UNET_BIN = os.path.join(FIXTURES, 'diffusers_ncsnpp', 'unet_bin')
EXPECTED = np.load(os.path.join(FIXTURES, 'diffusers_ncsnpp_expected.npz'))


def rel_err(a, b):
  """Largest error of an example relative to that example's largest output (the outputs
  scale as 1 / sigma)."""
  a, b = np.asarray(a), np.asarray(b)
  return max(float(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max()) for i in range(len(b)))


class Net:
  """The NCSNpp of a fixture folder's config.json, compiled once."""

  def __init__(self, folder):
    self.config = dw.read_unet_config(folder)
    self.model = NCSNpp(**dw.ncsnpp_fields(self.config))
    self.shape = dw.input_shape(self.config)
    self._apply = jax.jit(lambda p, x, s: self.model.apply({'params': p}, x, s, train=False))

  def __call__(self, params):
    return np.asarray(self._apply(params, EXPECTED['x'], EXPECTED['sigmas']))


@pytest.fixture(scope='module')
def pipeline():
  return Net(PIPELINE)


@pytest.fixture(scope='module')
def unet_bin():
  return Net(UNET_BIN)


def copy_unet(src, dst, config_changes=None):
  """A copy of a fixture's UNet folder, its config.json updated with `config_changes`."""
  shutil.copytree(src, dst)
  if config_changes:
    path = os.path.join(dst, 'config.json')
    with open(path) as f:
      config = json.load(f)
    config.update(config_changes)
    with open(path, 'w') as f:
      json.dump(config, f)
  return str(dst)


def test_fields_of_the_hub_layout(pipeline):
  assert dw.ncsnpp_fields(pipeline.config) == dict(
      nf=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.,
      resamp_with_conv=True, conditional=True, scale_by_sigma=True, nonlinearity='swish',
      centered=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
      resblock_type='biggan', init_scale=0., progressive='output_skip',
      progressive_input='input_skip', progressive_combine='sum', attention_type='ddpm',
      embedding_type='fourier', fourier_scale=16.)
  # center_input_sample false: diffusers feeds x as it is, which NCSNpp does when centered.
  assert dw.data_fields(pipeline.config) == dict(image_size=16, num_channels=3, centered=True)
  assert pipeline.shape == (16, 16, 3)


def test_pipeline_folder_matches_diffusers(pipeline, caplog):
  # The repository root and its unet/ folder give the same parameters.
  params = dw.load_params(PIPELINE, pipeline.model, pipeline.shape)
  from_unet = dw.load_params(os.path.join(PIPELINE, 'unet'), pipeline.model, pipeline.shape)
  jax.tree.map(np.testing.assert_array_equal, params, from_unet)
  # fp16 tensors in the file, float32 parameters.
  assert dw.read_state_dict(PIPELINE)['conv_in.weight'].dtype == np.float16
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  err = rel_err(pipeline(params), EXPECTED['pipeline'])
  print(f'pipeline fixture: max relative error {err:.2e}')
  assert err <= 1e-5
  # This small config is one where diffusers' group counts differ: the user is told.
  with caplog.at_level('WARNING', logger='scoresde_jax.diffusers_weights'):
    dw.ncsnpp_fields(pipeline.config)
  assert 'down_blocks.2.attentions (32 channels: 32 groups, NCSN++ 8)' in caplog.text
  assert 'up_blocks.1.resnets.1.norm1 (64 channels: 32 groups, NCSN++ 16)' in caplog.text


def test_the_comparison_sees_the_attention_mapping(pipeline):
  # Queries loaded as keys (and back) change the outputs far beyond the tolerance.
  sd = dw.read_state_dict(PIPELINE)
  prefix = 'up_blocks.1.attentions.0.'
  for leaf in ('weight', 'bias'):
    sd[prefix + 'to_q.' + leaf], sd[prefix + 'to_k.' + leaf] = (sd[prefix + 'to_k.' + leaf],
                                                                sd[prefix + 'to_q.' + leaf])
  params = dw.state_dict_to_params(sd, pipeline.config, pipeline.model, pipeline.shape)
  assert rel_err(pipeline(params), EXPECTED['pipeline']) > 1e-3


def test_bin_with_legacy_attention_names_matches_diffusers(unet_bin, caplog):
  sd = dw.read_state_dict(UNET_BIN)
  assert 'mid_block.attentions.0.query.weight' in sd and not any('to_q' in k for k in sd)
  with caplog.at_level('WARNING', logger='scoresde_jax.diffusers_weights'):
    fields = dw.ncsnpp_fields(unet_bin.config)
  assert not caplog.text  # attention only in the middle block: diffusers' groups are NCSN++'s
  assert fields['centered'] is False and fields['attn_resolutions'] == ()
  params = dw.load_params(UNET_BIN, unet_bin.model, unet_bin.shape)
  err = rel_err(unet_bin(params), EXPECTED['unet_bin'])
  print(f'unet_bin fixture: max relative error {err:.2e}')
  assert err <= 1e-5
  model, loaded, shape = dw.load_ncsnpp(UNET_BIN)
  assert model == unet_bin.model and shape == unet_bin.shape
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_sharded_safetensors(unet_bin, tmp_path):
  import safetensors.numpy
  sd = dw.read_state_dict(UNET_BIN)
  names = sorted(sd)
  shards = {'part-1.safetensors': names[::2], 'part-2.safetensors': names[1::2]}
  folder = tmp_path / 'unet'
  folder.mkdir()
  shutil.copy(os.path.join(UNET_BIN, 'config.json'), folder)
  for shard, keys in shards.items():
    safetensors.numpy.save_file({k: sd[k] for k in keys}, str(folder / shard))
  index = {'metadata': {}, 'weight_map': {k: s for s, keys in shards.items() for k in keys}}
  (folder / (dw.SAFETENSORS_NAME + '.index.json')).write_text(json.dumps(index))
  params = dw.load_params(folder, unet_bin.model, unet_bin.shape)
  assert rel_err(unet_bin(params), EXPECTED['unet_bin']) <= 1e-5
  os.remove(folder / 'part-2.safetensors')
  with pytest.raises(errors.CheckpointNotFoundError, match="shard 'part-2.safetensors'"):
    dw.read_state_dict(folder)


def test_scheduler_fields():
  expected = dict(sigma_min=0.01, sigma_max=348.0, num_scales=2000, snr=0.075, n_steps_each=1,
                  sampling_eps=1e-5)
  assert dw.scheduler_fields(dw.read_scheduler_config(PIPELINE)) == expected
  # From the unet/ folder: its sibling scheduler/.
  assert dw.scheduler_fields(dw.read_scheduler_config(os.path.join(PIPELINE, 'unet'))) == expected
  assert dw.read_scheduler_config(UNET_BIN) is None
  # Keys a config leaves out take diffusers' defaults.
  assert dw.scheduler_fields({'sigma_max': 378})['sigma_max'] == 378.
  assert dw.scheduler_fields({})['snr'] == 0.15
  with pytest.raises(errors.CheckpointError, match='DDPMScheduler'):
    dw.scheduler_fields({'_class_name': 'DDPMScheduler'})


def test_missing_folders_and_files(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match='No diffusers model folder'):
    dw.read_unet_config(tmp_path / 'absent')
  with pytest.raises(errors.CheckpointNotFoundError, match='has no config.json and no unet/'):
    dw.load_ncsnpp(tmp_path)
  only_config = tmp_path / 'unet'
  only_config.mkdir()
  shutil.copy(os.path.join(UNET_BIN, 'config.json'), only_config)
  for folder in (tmp_path, only_config):  # the repository root or its unet/ folder
    with pytest.raises(errors.CheckpointNotFoundError, match='has a config.json but no weights'):
      dw.load_ncsnpp(folder)
  # Checkpoint errors are one-line user errors (main.py prints them).
  assert issubclass(errors.CheckpointNotFoundError, errors.UserError)


@pytest.mark.parametrize('name', ['diffusion_pytorch_model.safetensors',
                                  'diffusion_pytorch_model.bin'])
def test_damaged_weights_files(tmp_path, name):
  folder = copy_unet(UNET_BIN, tmp_path / 'unet')
  with open(os.path.join(UNET_BIN, 'diffusion_pytorch_model.bin'), 'rb') as f:
    head = f.read(5000)  # a download that stopped early
  os.remove(os.path.join(folder, 'diffusion_pytorch_model.bin'))
  with open(os.path.join(folder, name), 'wb') as f:
    f.write(head)
  with pytest.raises(errors.CheckpointError, match='not a readable'):
    dw.read_state_dict(folder)


@pytest.mark.parametrize('changes, match', [
    ({'down_block_types': ['SkipDownBlock2D', 'AttnDownBlock2D']},
     r"down_block_types=\['SkipDownBlock2D', 'AttnDownBlock2D'\].*block 'AttnDownBlock2D'"),
    ({'up_block_types': ['SkipUpBlock2D', 'AttnSkipUpBlock2D']},
     'up_block_types=.*must mirror down_block_types'),
    ({'time_embedding_type': 'positional'}, "time_embedding_type='positional'"),
    ({'attention_head_dim': 4}, 'attention_head_dim=4; NCSN\\+\\+ attention has one head'),
    ({'mid_block_scale_factor': 1}, 'mid_block_scale_factor=1;'),
    ({'norm_eps': 1e-5}, 'norm_eps=1e-05;'),
    ({'act_fn': 'gelu'}, "act_fn='gelu'"),
    ({'block_out_channels': [4, 6]}, r'block_out_channels=\[4, 6\]; each must be a multiple'),
    ({'sample_size': 15}, 'sample_size=15; not divisible by 2\\^1'),
    ({'num_class_embeds': 10}, 'num_class_embeds=10; NCSN\\+\\+ is unconditional'),
])
def test_unsupported_configs_are_refused(tmp_path, changes, match):
  folder = copy_unet(UNET_BIN, tmp_path / 'unet', changes)
  with pytest.raises(errors.CheckpointError, match='Unsupported diffusers UNet2DModel config: '
                     + match):
    dw.load_ncsnpp(folder)


def test_diffusers_block_name_prefix_is_accepted(tmp_path, unet_bin):
  folder = copy_unet(UNET_BIN, tmp_path / 'unet',
                     {'down_block_types': ['UNetResSkipDownBlock2D', 'SkipDownBlock2D']})
  assert dw.ncsnpp_fields(dw.read_unet_config(folder)) == dw.ncsnpp_fields(unet_bin.config)


def test_tensors_that_do_not_fit(tmp_path, unet_bin):
  import safetensors.numpy
  sd = dw.read_state_dict(UNET_BIN)
  folder = tmp_path / 'unet'
  folder.mkdir()
  shutil.copy(os.path.join(UNET_BIN, 'config.json'), folder)

  def load(state_dict):
    safetensors.numpy.save_file(state_dict, str(folder / dw.SAFETENSORS_NAME))
    return dw.load_params(folder, unet_bin.model, unet_bin.shape)

  with pytest.raises(errors.CheckpointError, match=r"Tensor 'up_blocks.0.resnets.1.conv1.weight' "
                     r'has shape \(8, 12, 1, 3\), expected \(8, 12, 3, 3\)'):
    load(dict(sd, **{'up_blocks.0.resnets.1.conv1.weight': np.zeros((8, 12, 1, 3), np.float32)}))
  with pytest.raises(errors.CheckpointError, match=r"no tensor 'mid_block.resnets.1.norm2.bias'"):
    load({k: v for k, v in sd.items() if k != 'mid_block.resnets.1.norm2.bias'})
  with pytest.raises(errors.CheckpointError, match="Tensor 'down_blocks.0.attentions.0.to_q.weight'"
                     ' of the diffusers state dict has no place'):
    load(dict(sd, **{'down_blocks.0.attentions.0.to_q.weight': np.zeros((4, 4), np.float32)}))
  # Early files hold the Fourier frequencies twice (time_proj.W): accepted when equal.
  params = load(dict(sd, **{'time_proj.W': sd['time_proj.weight']}))
  assert rel_err(unet_bin(params), EXPECTED['unet_bin']) <= 1e-5
  with pytest.raises(errors.CheckpointError, match='time_proj.* are the same parameter'):
    load(dict(sd, **{'time_proj.W': sd['time_proj.weight'] + 1}))
  # Both names of one attention tensor: the second is a duplicate, and must agree.
  q = sd['mid_block.attentions.0.query.weight']
  with pytest.raises(errors.CheckpointError, match='but differ'):
    load(dict(sd, **{'mid_block.attentions.0.to_q.weight': q + 1}))


def test_network_of_another_config_is_refused(unet_bin):
  sd = dw.read_state_dict(UNET_BIN)
  other = NCSNpp(**dict(dw.ncsnpp_fields(unet_bin.config), num_res_blocks=2))
  with pytest.raises(errors.CheckpointError, match='build the network with ncsnpp_fields'):
    dw.state_dict_to_params(sd, unet_bin.config, other, unet_bin.shape)
  other = NCSNpp(**dict(dw.ncsnpp_fields(unet_bin.config), nf=8))
  with pytest.raises(errors.CheckpointError, match=r"Tensor '.*' has shape"):
    dw.state_dict_to_params(sd, unet_bin.config, other, unet_bin.shape)
