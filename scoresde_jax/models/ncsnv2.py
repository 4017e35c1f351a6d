"""NCSNv2 (Song & Ermon 2020): RefineNet score networks for 64, 128 and 256 pixel images.

Registered as 'ncsnv2_64' (images below 96 pixels; CIFAR-10, CelebA 64), 'ncsnv2_128' and
'ncsnv2_256'. Same functions as the PyTorch NCSNv2 (ermongroup/ncsnv2, ported in
yang-song/score_sde_pytorch), parameter for parameter; `params_from_torch` loads its state
dicts. Where that port fails to build (it reads `config.data.channels`, pads dilated
convolutions by 1 and cannot build bias-free convolutions) we follow the working original.

Interface: `model.apply({'params': p}, x, labels, train)` with x: [B, H, W, C] (in [0, 1]
unless `config.data.centered`, in which case in [-1, 1]) and labels: [B] int noise-level
indices into sigmas = geomspace(sigma_max, sigma_min, num_scales) (0 = largest sigma).
The output [B, H, W, C] is the score; with `config.model.scale_by_sigma` (NCSNv2's
convention, default True) the network output is divided by sigma[labels].

The 'ncsn' (NCSNv1) network shares the backbone: see `ncsn.py`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scoresde_jax.models import ncsn_layers as layers
from scoresde_jax.models.utils import register_model

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def get_sigmas(config) -> np.ndarray:
  """[num_scales] noise levels, geometric from sigma_max down to sigma_min (float32)."""
  model = config.model
  return np.exp(np.linspace(np.log(model.sigma_max), np.log(model.sigma_min),
                            model.num_scales)).astype(np.float32)


def compute_dtype(config):
  name = config.model.get('dtype', 'float32')
  if name not in _DTYPES:
    raise ValueError(f"Unknown config.model.dtype {name!r}; expected one of {sorted(_DTYPES)}.")
  return _DTYPES[name]


# (name, output channels as a multiple of nf, resample of the first block, dilation) of each
# backbone stage (two residual blocks), and (name, output channels / nf) of each RefineNet
# block in the order they run, from the coarsest features to the finest. RefineBlock k fuses
# the k-th stage from the end with the previous refine output.
_ARCHITECTURES = {
    'ncsnv2_64': (
        (('res1', 1, None, 1), ('res2', 2, 'down', 1), ('res3', 2, 'down', 2),
         ('res4', 2, 'down', 4)),
        (('refine1', 2), ('refine2', 2), ('refine3', 1), ('refine4', 1))),
    'ncsnv2_128': (
        (('res1', 1, None, 1), ('res2', 2, 'down', 1), ('res3', 2, 'down', 1),
         ('res4', 4, 'down', 2), ('res5', 4, 'down', 4)),
        (('refine1', 4), ('refine2', 2), ('refine3', 2), ('refine4', 1), ('refine5', 1))),
    'ncsnv2_256': (
        (('res1', 1, None, 1), ('res2', 2, 'down', 1), ('res3', 2, 'down', 1),
         ('res31', 2, 'down', 1), ('res4', 4, 'down', 2), ('res5', 4, 'down', 4)),
        (('refine1', 4), ('refine2', 2), ('refine31', 2), ('refine3', 2), ('refine4', 1),
         ('refine5', 1))),
}


def refinenet(x, labels, config, architecture: str, num_classes: int | None):
  """The NCSN/NCSNv2 RefineNet (call inside a compact module). Returns [B, H, W, C] float32.

  num_classes None: NCSNv2 (unconditional blocks; labels unused here). Otherwise NCSNv1:
  every normalization is conditioned on `labels`.
  """
  stages, refines = _ARCHITECTURES[architecture]
  model_cfg = config.model
  if model_cfg.normalization != 'InstanceNorm++':
    raise ValueError(f'{architecture} is built with InstanceNorm++; got '
                     f'config.model.normalization = {model_cfg.normalization!r}.')
  n_down = sum(1 for _, _, resample, dilation in stages if resample == 'down' and dilation == 1)
  height, width = x.shape[1:3]
  if height % 2 ** n_down or width % 2 ** n_down:
    raise ValueError(f'{architecture} needs image sides divisible by {2 ** n_down}; '
                     f'got {height}x{width}.')
  nf = model_cfg.nf
  act = layers.get_act(model_cfg.nonlinearity)
  interpolation = model_cfg.get('interpolation', 'bilinear')
  dtype = compute_dtype(config)
  y = None if num_classes is None else labels
  block_kw = dict(act=act, num_classes=num_classes, dtype=dtype)

  h = x if config.data.centered else 2 * x - 1.0
  h = layers.conv(h.astype(dtype), nf, 3, dtype=dtype, name='begin_conv')
  features = []
  for name, mult, resample, dilation in stages:
    h = layers.ResidualBlock(mult * nf, resample=resample, dilation=dilation,
                             name=f'{name}_0', **block_kw)(h, y)
    h = layers.ResidualBlock(mult * nf, resample=None, dilation=dilation,
                             name=f'{name}_1', **block_kw)(h, y)
    features.append(h)

  ref = None
  for k, (name, mult) in enumerate(refines):
    skip = features[-1 - k]
    inputs = [skip] if ref is None else [skip, ref]
    ref = layers.RefineBlock(mult * nf, skip.shape[1:3], start=ref is None,
                             end=k == len(refines) - 1, interpolation=interpolation,
                             name=name, **block_kw)(inputs, y)

  if num_classes is None:
    h = layers.InstanceNormPlus(name='normalizer')(ref)
  else:
    h = layers.ConditionalInstanceNormPlus(num_classes, name='normalizer')(ref, y)
  h = act(h)
  h = layers.conv(h, x.shape[-1], 3, dtype=dtype, name='end_conv')
  return h.astype(jnp.float32)


class _NCSNv2(nn.Module):
  """NCSNv2 RefineNet; subclasses fix the architecture. See the module docstring."""
  config: ml_collections.ConfigDict
  architecture = 'ncsnv2_64'

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    del train  # No dropout or batch statistics.
    h = refinenet(x, labels, self.config, self.architecture, num_classes=None)
    if self.config.model.get('scale_by_sigma', True):
      sigmas = jnp.asarray(get_sigmas(self.config))
      h = h / sigmas[labels.astype(jnp.int32)][:, None, None, None]
    return h


@register_model(name='ncsnv2_64')
class NCSNv2(_NCSNv2):
  """NCSNv2 for images below 96 pixels: 1 real downsampling, then dilations 2 and 4."""
  architecture = 'ncsnv2_64'


@register_model(name='ncsnv2_128')
class NCSNv2_128(_NCSNv2):  # pylint: disable=invalid-name
  """NCSNv2 for 96..128 pixel images: 2 downsamplings, widths up to 4 nf, dilations 2 and 4."""
  architecture = 'ncsnv2_128'


@register_model(name='ncsnv2_256')
class NCSNv2_256(_NCSNv2):  # pylint: disable=invalid-name
  """NCSNv2 for 129..256 pixel images: 3 downsamplings, widths up to 4 nf, dilations 2 and 4."""
  architecture = 'ncsnv2_256'


def _flax_path(torch_key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  """Our parameter path and value for one PyTorch state-dict entry."""
  parts = torch_key.split('.')
  path = []
  for part in parts[:-1]:
    if part.isdigit() and path:
      path[-1] = f'{path[-1]}_{part}'  # ModuleList index: res1.0 -> res1_0.
    else:
      path.append(part)
  leaf = parts[-1]
  if leaf == 'weight' and path and path[-1] == 'embed':
    return (*path, 'embedding'), value
  if leaf == 'weight' and value.ndim == 4:
    return (*path, 'kernel'), np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO.
  if leaf in ('bias', 'alpha', 'gamma', 'beta'):
    return (*path, leaf), value
  raise ValueError(f'Unexpected entry {torch_key!r} of shape {value.shape} in the state dict.')


def params_from_torch(state_dict: Mapping[str, Any], config) -> dict:
  """Our parameters from a PyTorch NCSN/NCSNv2 `state_dict` (score_sde_pytorch naming).

  Accepts torch tensors or numpy arrays, with or without DataParallel's 'module.' prefix.
  The 'sigmas' buffer, if present, must equal the config's noise levels. Raises ValueError
  naming every missing, unexpected or misshapen parameter.
  """
  from scoresde_jax.models.utils import get_model  # Avoids an import cycle at load time.

  model = get_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  expected = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros((1,), jnp.int32)))
  expected = {tuple(k.key for k in path): leaf.shape for path, leaf in
              jax.tree_util.tree_flatten_with_path(expected['params'])[0]}

  params, problems = {}, []
  for key, value in state_dict.items():
    key = key[len('module.'):] if key.startswith('module.') else key
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value,
                       np.float32)
    if key == 'sigmas':
      if value.shape != (config.model.num_scales,) or not np.allclose(
          value, get_sigmas(config), rtol=1e-5):
        problems.append('the checkpoint\'s sigmas differ from the config\'s sigma_min, '
                        'sigma_max, num_scales')
      continue
    path, value = _flax_path(key, value)
    if path not in expected:
      problems.append(f'unexpected {key}')
    elif expected[path] != value.shape:
      problems.append(f'{key}: shape {value.shape}, the model wants {expected[path]}')
    else:
      node = params
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = jnp.asarray(value)
  converted = {p for p, _ in _flatten(params)}
  problems += [f'missing {"/".join(p)}' for p in sorted(set(expected) - converted)]
  if problems:
    raise ValueError(f'State dict does not fit {config.model.name}: ' + '; '.join(problems[:20])
                     + (f' (and {len(problems) - 20} more)' if len(problems) > 20 else ''))
  return params


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v
