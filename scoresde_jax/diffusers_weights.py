"""NCSN++ weights in Hugging Face diffusers' layout -> this project's NCSNpp, without torch.

The Hub's score-SDE models (`google/ncsnpp-celebahq-256`, `-ffhq-256`, `-ffhq-1024`,
`-church-256`, `-bedroom-256`) are the official NCSN++ checkpoints converted to a diffusers
`UNet2DModel` (Skip/AttnSkip blocks, Fourier embedding) plus a `ScoreSdeVeScheduler`:

  <repo>/model_index.json
  <repo>/unet/config.json                                the UNet2DModel's settings
  <repo>/unet/diffusion_pytorch_model.safetensors        (or .bin, a torch.save file;
                                                          or a sharded *.index.json)
  <repo>/scheduler/scheduler_config.json                 sigma_min, sigma_max, N, snr

The reading functions take the repository folder or its `unet/` folder:

  unet_config = read_unet_config(folder)
  model = NCSNpp(**ncsnpp_fields(unet_config))
  params = load_params(folder, model, input_shape(unet_config))
  model.apply({'params': params}, x, sigmas, train=False)    # x: [B, H, W, 3]; sigmas: [B]

equals diffusers' `UNet2DModel(x_nchw, sigmas).sample` (NHWC here): both divide by sigma.
`data_fields` and `scheduler_fields` give the remaining settings under this project's config
key names (config.data.*, config.model.sigma_*, config.sampling.*).

Mapping. diffusers' modules are the NCSN++ modules in their creation order (its
`scripts/convert_ncsnpp_original_checkpoint_to_diffusers.py` walks them so), so they pair
with the top-level Flax modules in the order the network creates them (`convert`'s trace):
time_proj -> GaussianFourierProjection, time_embedding.linear_1/2 -> Dense, conv_in -> Conv;
per down level the resnets (each followed by its attention in AttnSkip blocks), then
resnet_down (ResnetBlockBigGANpp) and skip_conv (the input pyramid's Combine); the mid block;
per up level the resnets, the attention, then skip_norm / skip_conv (the output pyramid's
GroupNorm / Conv) and resnet_up; conv_norm_out / conv_out are the last pyramid head.
Inside a resnet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut = GroupNorm_0,
Conv_0, Dense_0, GroupNorm_1, Conv_1, Conv_2; inside an attention: group_norm, to_q, to_k,
to_v, to_out.0 (older files: query, key, value, proj_attn) = GroupNorm_0, NIN_0..NIN_3.

Group counts. NCSN++ normalizes C channels with min(C // 4, 32) groups. diffusers' AttnSkip
blocks use 32 for their attention and min(C_in + C_skip // 4, 32) for their up-block
resnets, which agree with NCSN++ only from 128 channels on (true of every Hub model; with
norm_num_groups null, as theirs, the other blocks agree at any width). For a config where
they differ, `ncsnpp_fields` logs a warning: the weights load, but this
network (NCSN++) then computes a slightly different function from diffusers'.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from scoresde_jax import convert, torch_pickle
from scoresde_jax.errors import CheckpointError, CheckpointNotFoundError
from scoresde_jax.models.ncsnpp import NCSNpp

log = logging.getLogger(__name__)

Params = dict

CONFIG_NAME = 'config.json'
SCHEDULER_CONFIG_NAME = 'scheduler_config.json'
SAFETENSORS_NAME = 'diffusion_pytorch_model.safetensors'
BIN_NAME = 'diffusion_pytorch_model.bin'
_INDEX_SUFFIX = '.index.json'

_DOWN_BLOCKS = ('SkipDownBlock2D', 'AttnSkipDownBlock2D')
_UP_BLOCKS = ('SkipUpBlock2D', 'AttnSkipUpBlock2D')
_SQRT2 = math.sqrt(2.)
# NCSN++'s GroupNorm epsilon (layers.group_norm) and FIR kernel (diffusers' fixed one).
_NORM_EPS = 1e-6
_FIR_KERNEL = (1, 3, 3, 1)
# Fourier frequency scale of UNet2DModel (fixed there); the weights carry the frequencies.
_FOURIER_SCALE = 16.

# Sub-modules of a diffusers block -> of the Flax module it becomes (aliases: older names).
_RESNET_PARTS = {'GroupNorm_0': ('norm1',), 'Conv_0': ('conv1',), 'Dense_0': ('time_emb_proj',),
                 'GroupNorm_1': ('norm2',), 'Conv_1': ('conv2',), 'Conv_2': ('conv_shortcut',)}
_ATTENTION_PARTS = {'GroupNorm_0': ('group_norm',), 'NIN_0': ('to_q', 'query'),
                    'NIN_1': ('to_k', 'key'), 'NIN_2': ('to_v', 'value'),
                    'NIN_3': ('to_out.0', 'proj_attn')}
# The Flax class each kind of diffusers module becomes (its auto-name is Class_<i>).
_FLAX_CLASS = {'fourier': 'GaussianFourierProjection', 'dense': 'Dense', 'conv': 'Conv',
               'norm': 'GroupNorm', 'resnet': 'ResnetBlockBigGANpp', 'attention': 'AttnBlockpp',
               'combine': 'Combine'}
# Flax leaf -> diffusers leaf.
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'W': 'weight', 'bias': 'bias', 'b': 'bias'}


# ----------------------------------------------------------------------------- files

def _unet_folder(folder: str | os.PathLike) -> str:
  """The folder holding the UNet's config.json: `folder` itself or its `unet/`."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise CheckpointNotFoundError(f'No diffusers model folder at {folder!r}.')
  if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
    return folder
  unet = os.path.join(folder, 'unet')
  if os.path.isfile(os.path.join(unet, CONFIG_NAME)):
    return unet
  raise CheckpointNotFoundError(
      f'{folder!r} has no {CONFIG_NAME} and no unet/{CONFIG_NAME}: not a diffusers UNet2DModel '
      'folder nor a pipeline folder (download the whole Hub repository).')


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{path!r} is not valid JSON: {e}') from e
  if not isinstance(value, dict):
    raise CheckpointError(f'{path!r} does not hold a JSON object.')
  return value


def read_unet_config(folder: str | os.PathLike) -> dict:
  """The UNet2DModel settings (config.json) of a Hub repository folder or its `unet/` folder.

  Raises:
    CheckpointNotFoundError: no such folder, or neither it nor its unet/ has a config.json.
    CheckpointError: the config.json is not a JSON object.
  """
  return _read_json(os.path.join(_unet_folder(folder), CONFIG_NAME))


def read_scheduler_config(folder: str | os.PathLike) -> dict | None:
  """The ScoreSdeVeScheduler settings of a repository folder, or None if it has none.

  Looked for in `folder/scheduler/`, in `folder` itself and, when `folder` is the UNet's
  folder of a repository, in its sibling `../scheduler/`.
  """
  folder = os.fspath(folder)
  candidates = [os.path.join(folder, 'scheduler', SCHEDULER_CONFIG_NAME),
                os.path.join(folder, SCHEDULER_CONFIG_NAME)]
  if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(folder)), 'scheduler',
                                   SCHEDULER_CONFIG_NAME))
  for path in candidates:
    if os.path.isfile(path):
      return _read_json(path)
  return None


def _read_weights_file(path: str) -> dict[str, np.ndarray]:
  if path.endswith('.safetensors'):
    # Imported here: only this format needs the package.
    import safetensors.numpy
    try:
      return dict(safetensors.numpy.load_file(path))
    except Exception as e:  # safetensors raises its own error types on corrupt files
      raise CheckpointError(f'{path!r} is not a readable safetensors file: {e}') from e
  try:
    return torch_pickle.load_state_dict(path)
  except CheckpointError:
    raise
  except Exception as e:  # zip / pickle errors of a corrupt or foreign file
    raise CheckpointError(f'{path!r} is not a readable torch.save state dict: {e}') from e


def read_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
  """The UNet's tensors (name -> numpy array, as stored) of a repository or `unet/` folder.

  Reads `diffusion_pytorch_model.safetensors` (preferred) or `.bin` (a torch.save file, read
  by `torch_pickle`: no torch, no pickled code run), or their sharded `*.index.json` form.

  Raises:
    CheckpointNotFoundError: no folder, no config.json, or no weights file in it.
    CheckpointError: a weights file that cannot be read.
    UnsafeCheckpointError: a `.bin` whose pickle references more than tensors.
  """
  unet = _unet_folder(folder)
  for name in (SAFETENSORS_NAME, BIN_NAME):
    path = os.path.join(unet, name)
    if os.path.isfile(path):
      return _read_weights_file(path)
    index = path + _INDEX_SUFFIX
    if os.path.isfile(index):
      weight_map = _read_json(index).get('weight_map')
      if not isinstance(weight_map, dict):
        raise CheckpointError(f'{index!r} has no weight_map.')
      tensors: dict[str, np.ndarray] = {}
      for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(unet, shard)
        if not os.path.isfile(shard_path):
          raise CheckpointNotFoundError(f'{index!r} names the shard {shard!r}, which is missing.')
        tensors.update(_read_weights_file(shard_path))
      return tensors
  raise CheckpointNotFoundError(
      f'{unet!r} has a {CONFIG_NAME} but no weights: expected {SAFETENSORS_NAME} or {BIN_NAME} '
      '(a Hub download without its weight files?).')


# ---------------------------------------------------------------------------- config

def _refuse(field: str, value: Any, why: str):
  raise CheckpointError(f'Unsupported diffusers UNet2DModel config: {field}={value!r}; {why}')


def _strip(kind):
  return kind[len('UNetRes'):] if isinstance(kind, str) and kind.startswith('UNetRes') else kind


def _levels(config: Mapping[str, Any]) -> tuple[list[int], list[bool]]:
  """(channels of each level, whether it has attention), checking the block types."""
  channels = list(config.get('block_out_channels') or ())
  # diffusers accepts (and strips) a 'UNetRes' prefix on block names.
  down = [_strip(kind) for kind in config.get('down_block_types') or ()]
  up = [_strip(kind) for kind in config.get('up_block_types') or ()]
  if not channels:
    _refuse('block_out_channels', config.get('block_out_channels'), 'expected one per level.')
  for field, types, allowed in (('down_block_types', down, _DOWN_BLOCKS),
                                ('up_block_types', up, _UP_BLOCKS)):
    if len(types) != len(channels):
      _refuse(field, types, f'expected {len(channels)} blocks, one per entry of '
              'block_out_channels.')
    for kind in types:
      if kind not in allowed:
        _refuse(field, types, f'NCSN++ is built of {" / ".join(allowed)} only (block {kind!r}).')
  attention = [kind == 'AttnSkipDownBlock2D' for kind in down]
  if [kind == 'AttnSkipUpBlock2D' for kind in reversed(up)] != attention:
    _refuse('up_block_types', up, f'its attention blocks must mirror down_block_types {down}.')
  return channels, attention


def _check_config(config: Mapping[str, Any]) -> tuple[list[int], list[bool]]:
  """Raises CheckpointError naming the first setting NCSN++ cannot express."""
  if not isinstance(config, Mapping):
    raise CheckpointError(f'A UNet2DModel config must be a dict, got {type(config).__name__}.')
  name = config.get('_class_name', 'UNet2DModel')
  if name != 'UNet2DModel':
    _refuse('_class_name', name, 'only UNet2DModel (the score-SDE NCSN++) is supported.')
  expected = {
      'time_embedding_type': ('fourier', 'NCSN++ embeds log(sigma) with Fourier features.'),
      'mid_block_type': ('UNetMidBlock2D', 'NCSN++ has a resnet-attention-resnet middle.'),
      'add_attention': (True, 'the NCSN++ middle block has attention.'),
      'resnet_time_scale_shift': ('default', 'NCSN++ adds the time embedding.'),
      'class_embed_type': (None, 'NCSN++ is unconditional.'),
      'num_class_embeds': (None, 'NCSN++ is unconditional.'),
      'in_channels': (3, 'the Skip blocks of diffusers read and write 3-channel pyramids.'),
      'out_channels': (3, 'the Skip blocks of diffusers read and write 3-channel pyramids.'),
  }
  for field, (want, why) in expected.items():
    if config.get(field, want) != want:
      _refuse(field, config[field], why)
  if config.get('act_fn', 'silu') not in ('silu', 'swish'):
    _refuse('act_fn', config['act_fn'], 'diffusers fixes SiLU in parts of NCSN++ blocks; '
            'only silu is consistent.')
  scale = config.get('mid_block_scale_factor', 1)
  if not isinstance(scale, (int, float)) or abs(scale - _SQRT2) > 1e-6:
    _refuse('mid_block_scale_factor', scale, 'NCSN++ rescales every residual sum by '
            'sqrt(2), as the Skip blocks do.')
  eps = config.get('norm_eps', 1e-5)
  if not isinstance(eps, (int, float)) or abs(eps - _NORM_EPS) > 1e-12:
    _refuse('norm_eps', eps, f'NCSN++ normalizes with epsilon {_NORM_EPS}.')
  channels, attention = _levels(config)
  nf = channels[0]
  if any(not isinstance(c, int) or c <= 0 or c % nf for c in channels):
    _refuse('block_out_channels', channels, f'each must be a multiple of the first ({nf}): '
            'NCSN++ has nf * ch_mult[i] channels.')
  dim = config.get('time_embedding_dim')
  if dim is not None and dim != 4 * nf:
    _refuse('time_embedding_dim', dim, f'NCSN++ embeds time in 4 * nf = {4 * nf} channels.')
  head = config.get('attention_head_dim', 8)  # UNet2DModel's default
  widths = sorted({channels[-1]} | {c for c, a in zip(channels, attention) if a})
  if head is not None and widths != [head]:
    _refuse('attention_head_dim', head, f'NCSN++ attention has one head over all channels '
            f'({" and ".join(map(str, widths))}); null (one head) is its setting.')
  layers = config.get('layers_per_block')
  if not isinstance(layers, int) or layers < 1:
    _refuse('layers_per_block', layers, 'expected a positive integer.')
  size = _image_size(config)
  if size % 2 ** (len(channels) - 1):
    _refuse('sample_size', config.get('sample_size'),
            f'not divisible by 2^{len(channels) - 1} ({len(channels)} levels).')
  return channels, attention


def _image_size(unet_config: Mapping[str, Any]) -> int:
  """The side of the (square) images of a UNet2DModel config (`sample_size`)."""
  size = unet_config.get('sample_size')
  if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
    size = size[0]
  if not isinstance(size, int) or size <= 0:
    _refuse('sample_size', size, 'expected the side of square images.')
  return size


def input_shape(unet_config: Mapping[str, Any]) -> tuple[int, int, int]:
  """(height, width, channels) of one input image of a UNet2DModel config."""
  size = _image_size(unet_config)
  return size, size, int(unet_config.get('in_channels', 3))


def _group_differences(config: Mapping[str, Any], channels: list[int],
                       attention: list[bool]) -> list[str]:
  """GroupNorms to which diffusers gives other group counts than NCSN++ (min(C // 4, 32))."""
  def ncsnpp(c):
    return min(c // 4, 32)

  found = []

  def compare(where, c, groups):
    if groups != ncsnpp(c):
      found.append(f'{where} ({c} channels: {groups} groups, NCSN++ {ncsnpp(c)})')

  layers = config['layers_per_block']
  n = len(channels)
  for i, has_attention in enumerate(attention):
    if has_attention:
      compare(f'down_blocks.{i}.attentions', channels[i], 32)
  groups = config.get('norm_num_groups', 32)
  attn_groups = config.get('attn_norm_num_groups')
  if groups is not None:
    compare('mid_block.resnets', channels[-1], groups)
    compare('conv_norm_out', channels[0], groups)
  if attn_groups is not None or groups is not None:
    compare('mid_block.attentions', channels[-1], attn_groups or groups)
  rev = channels[::-1]
  for i in range(n):
    if not attention[n - 1 - i]:
      continue
    out, prev, skip_last = rev[i], rev[max(i - 1, 0)], rev[min(i + 1, n - 1)]
    compare(f'up_blocks.{i}.attentions', out, 32)
    for j in range(layers + 1):
      c_in = prev if j == 0 else out
      c_skip = skip_last if j == layers else out
      # diffusers' AttnSkipUpBlock2D: min(c_in + c_skip // 4, 32).
      compare(f'up_blocks.{i}.resnets.{j}.norm1', c_in + c_skip, min(c_in + c_skip // 4, 32))
  return found


def ncsnpp_fields(unet_config: Mapping[str, Any]) -> dict:
  """NCSNpp's fields for a diffusers UNet2DModel config: `NCSNpp(**ncsnpp_fields(c))`.

  Each key is the `config.model` key of that name (`centered`: config.data.centered). The
  fixed ones are NCSN++'s as diffusers builds it: BigGAN resnets with FIR (1, 3, 3, 1)
  resampling, 1/sqrt(2) skip rescaling, output_skip / input_skip pyramids combined by sum,
  Fourier features of sigma (scale 16, as UNet2DModel draws them; the weights carry the
  frequencies), output divided by sigma. `centered` is the opposite of diffusers'
  `center_input_sample` (NCSNpp maps [0, 1] to [-1, 1] unless centered). `init_scale` (0.)
  and `resamp_with_conv` (True) only matter for training from scratch / other blocks.

  Raises:
    CheckpointError: a config NCSN++ cannot express, naming the field and its value.
  """
  channels, attention = _check_config(unet_config)
  for difference in _group_differences(unet_config, channels, attention):
    log.warning('diffusers normalizes %s; NCSNpp follows NCSN++, so its outputs differ from '
                'diffusers\' for this config (Hub models, >= 128 channels at attention, do not).',
                difference)
  nf = channels[0]
  size = _image_size(unet_config)
  return dict(
      nf=nf,
      ch_mult=tuple(c // nf for c in channels),
      num_res_blocks=unet_config['layers_per_block'],
      attn_resolutions=tuple(size // 2 ** i for i, a in enumerate(attention) if a),
      dropout=float(unet_config.get('dropout', 0.)),
      resamp_with_conv=True,
      conditional=True,
      scale_by_sigma=True,
      nonlinearity='swish',
      centered=not unet_config.get('center_input_sample', False),
      fir=True,
      fir_kernel=_FIR_KERNEL,
      skip_rescale=True,
      resblock_type='biggan',
      init_scale=0.,
      progressive='output_skip',
      progressive_input='input_skip',
      progressive_combine='sum',
      attention_type='ddpm',
      embedding_type='fourier',
      fourier_scale=_FOURIER_SCALE,
  )


def data_fields(unet_config: Mapping[str, Any]) -> dict:
  """`config.data` values of a UNet2DModel config: image_size, num_channels, centered."""
  _check_config(unet_config)
  return dict(image_size=_image_size(unet_config),
              num_channels=int(unet_config.get('in_channels', 3)),
              centered=not unet_config.get('center_input_sample', False))


# diffusers' ScoreSdeVeScheduler defaults, for keys a scheduler_config.json leaves out.
_SCHEDULER_DEFAULTS = dict(num_train_timesteps=2000, snr=0.15, sigma_min=0.01,
                           sigma_max=1348.0, sampling_eps=1e-5, correct_steps=1)


def scheduler_fields(scheduler_config: Mapping[str, Any]) -> dict:
  """This project's settings of a ScoreSdeVeScheduler config (diffusers' defaults filled in).

  Returns sigma_min, sigma_max, num_scales (`config.model` keys; num_scales is diffusers'
  num_train_timesteps), snr and n_steps_each (`config.sampling`; n_steps_each is
  correct_steps, Langevin steps per noise level), and sampling_eps (the smallest time the
  sampler reaches; this project's VE SDE uses `sde_lib.sampling_eps`, 1e-5).

  Raises:
    CheckpointError: not a ScoreSdeVeScheduler config.
  """
  name = scheduler_config.get('_class_name', 'ScoreSdeVeScheduler')
  if name != 'ScoreSdeVeScheduler':
    raise CheckpointError(f'Unsupported diffusers scheduler _class_name={name!r}; the score-SDE '
                          'VE models use ScoreSdeVeScheduler.')
  values = {**_SCHEDULER_DEFAULTS,
            **{k: v for k, v in scheduler_config.items() if k in _SCHEDULER_DEFAULTS}}
  return dict(sigma_min=float(values['sigma_min']), sigma_max=float(values['sigma_max']),
              num_scales=int(values['num_train_timesteps']), snr=float(values['snr']),
              n_steps_each=int(values['correct_steps']),
              sampling_eps=float(values['sampling_eps']))


# --------------------------------------------------------------------------- weights

def _diffusers_modules(config: Mapping[str, Any], channels: list[int],
                       attention: list[bool]) -> list[tuple[str, str]]:
  """(diffusers module path, kind) of every module with weights, in NCSN++ creation order."""
  layers = config['layers_per_block']
  n = len(channels)
  mods = [('time_proj', 'fourier'), ('time_embedding.linear_1', 'dense'),
          ('time_embedding.linear_2', 'dense'), ('conv_in', 'conv')]
  for i in range(n):
    for j in range(layers):
      mods.append((f'down_blocks.{i}.resnets.{j}', 'resnet'))
      if attention[i]:
        mods.append((f'down_blocks.{i}.attentions.{j}', 'attention'))
    if i != n - 1:
      mods += [(f'down_blocks.{i}.resnet_down', 'resnet'), (f'down_blocks.{i}.skip_conv',
                                                             'combine')]
  mods += [('mid_block.resnets.0', 'resnet'), ('mid_block.attentions.0', 'attention'),
           ('mid_block.resnets.1', 'resnet')]
  for i in range(n):
    mods += [(f'up_blocks.{i}.resnets.{j}', 'resnet') for j in range(layers + 1)]
    if attention[n - 1 - i]:
      mods.append((f'up_blocks.{i}.attentions.0', 'attention'))
    if i != n - 1:
      mods += [(f'up_blocks.{i}.skip_norm', 'norm'), (f'up_blocks.{i}.skip_conv', 'conv'),
               (f'up_blocks.{i}.resnet_up', 'resnet')]
  mods += [('conv_norm_out', 'norm'), ('conv_out', 'conv')]
  return mods


def _names(module: str, kind: str, flax_path: tuple[str, ...]) -> tuple[str, ...]:
  """The diffusers tensor names (first: the current one) of a Flax leaf inside `module`."""
  *sub, leaf = flax_path
  parts = {'resnet': _RESNET_PARTS, 'attention': _ATTENTION_PARTS}.get(kind)
  if parts is not None:
    if len(sub) != 1 or sub[0] not in parts:
      raise KeyError(sub)
    prefixes = tuple(f'{module}.{alias}' for alias in parts[sub[0]])
  else:
    # A plain layer, or Combine's 1x1 Conv_0: the diffusers module itself.
    if sub != (['Conv_0'] if kind == 'combine' else []):
      raise KeyError(sub)
    prefixes = (module,)
  names = tuple(f'{prefix}.{_LEAF[leaf]}' for prefix in prefixes)
  if kind == 'fourier':
    names += (f'{module}.W',)  # early diffusers stored the frequencies under both names
  return names


def _file_shape(flax_leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape a Flax leaf has in the torch layout of the file."""
  if flax_leaf == 'kernel' and len(shape) == 4:  # HWIO -> OIHW
    return shape[3], shape[2], shape[0], shape[1]
  if flax_leaf in ('kernel', 'W') and len(shape) == 2:  # [in, out] -> [out, in]
    return shape[1], shape[0]
  return shape


def _to_flax(name: str, leaf: str, value: np.ndarray) -> np.ndarray:
  """A file tensor (torch layout, shape already checked) as the Flax leaf `leaf`."""
  if leaf in ('kernel', 'scale'):  # nn.Conv, nn.Dense, nn.GroupNorm: convert's layouts
    converted, array = convert._convert_leaf('weight', value, {leaf: None}, name)
    assert converted == leaf, (converted, leaf)
    return array
  if leaf == 'W' and value.ndim == 2:  # NIN: Linear [out, in] -> W [in, out]
    return value.T
  return value  # biases, NIN b, the Fourier frequencies


def state_dict_to_params(state_dict: Mapping[str, Any], unet_config: Mapping[str, Any],
                         model: nn.Module, image_shape: Sequence[int]) -> Params:
  """Flax params of `model` from a diffusers UNet2DModel state dict and its config.

  Args:
    state_dict: tensor name -> array (numpy, any float dtype; made float32).
    unet_config: the UNet2DModel config the tensors belong to.
    model: the NCSNpp built from `ncsnpp_fields(unet_config)`.
    image_shape: `(height, width, channels)` of one input image.
  Returns:
    nested dict of float32 jax arrays, the `params` collection of `model`.
  Raises:
    CheckpointError: an unsupported config, a tensor NCSN++ has no place for, one whose shape
      does not fit (naming it and the shape expected), a parameter with no tensor, or a model
      that is not the config's NCSN++.
  """
  channels, attention = _check_config(unet_config)
  shapes, flax_order = convert._param_shapes(model, image_shape)
  modules = _diffusers_modules(unet_config, channels, attention)
  if len(modules) != len(flax_order):
    raise CheckpointError(f'The network has {len(flax_order)} modules with parameters, the '
                          f'diffusers config describes {len(modules)}: build the network with '
                          'ncsnpp_fields(config) of the same config.')
  # Flax leaf path -> diffusers names; diffusers name -> Flax leaf path.
  wanted: dict[tuple[str, ...], tuple[str, ...]] = {}
  for (module, kind), flax_name in zip(modules, flax_order):
    if not flax_name.startswith(_FLAX_CLASS[kind] + '_'):
      raise CheckpointError(f'diffusers module {module} ({kind}) meets Flax module {flax_name}: '
                            'the network is not the NCSN++ of this config.')
    for path in flax.traverse_util.flatten_dict(dict(shapes[flax_name])):
      try:
        wanted[(flax_name, *path)] = _names(module, kind, path)
      except KeyError:
        raise CheckpointError(f'Flax parameter {"/".join((flax_name, *path))} has no '
                              f'counterpart in diffusers module {module}.') from None
  lookup = {name: path for path, names in wanted.items() for name in names}
  flat_shapes = flax.traverse_util.flatten_dict(dict(shapes))

  out: dict[tuple[str, ...], np.ndarray] = {}
  stored: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}  # path -> (name, file value)
  for name, value in state_dict.items():
    path = lookup.get(name)
    if path is None:
      raise CheckpointError(f'Tensor {name!r} of the diffusers state dict has no place in the '
                            'NCSN++ of its config.json (a different model or config?).')
    value = np.asarray(value, np.float32)
    expected = _file_shape(path[-1], tuple(flat_shapes[path].shape))
    if value.shape != expected:
      raise CheckpointError(f'Tensor {name!r} has shape {value.shape}, expected {expected} '
                            f'(for {"/".join(path)}): the weights do not fit config.json.')
    if path in stored:
      first, first_value = stored[path]
      if not np.array_equal(first_value, value):
        raise CheckpointError(f'Tensors {first!r} and {name!r} are the same parameter '
                              f'({"/".join(path)}) but differ.')
      continue  # one parameter stored under two names (early files: time_proj.weight / .W)
    stored[path] = name, value
    out[path] = _to_flax(name, path[-1], value)
  missing = [path for path in wanted if path not in out]
  if missing:
    path = missing[0]
    shape = _file_shape(path[-1], tuple(flat_shapes[path].shape))
    more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
    raise CheckpointError(f'The diffusers state dict has no tensor {wanted[path][0]!r} (for '
                          f'{"/".join(path)}, shape {shape}){more}.')
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()})


def load_params(folder: str | os.PathLike, model: nn.Module,
                image_shape: Sequence[int]) -> Params:
  """Flax params of `model` from a diffusers NCSN++ folder (a Hub repository or its unet/).

  `model` is the NCSNpp of `ncsnpp_fields(read_unet_config(folder))`; image_shape its
  `input_shape(config)`. See `read_state_dict` and `state_dict_to_params` for the errors.
  """
  config = read_unet_config(folder)
  return state_dict_to_params(read_state_dict(folder), config, model, image_shape)


def load_ncsnpp(folder: str | os.PathLike):
  """(NCSNpp network, its params, image shape (H, W, C)) of a diffusers NCSN++ folder."""
  config = read_unet_config(folder)
  model = NCSNpp(**ncsnpp_fields(config))
  shape = input_shape(config)
  return model, state_dict_to_params(read_state_dict(folder), config, model, shape), shape
