"""NCSNv2 (Song & Ermon 2020): RefineNet score networks for 64, 128 and 256 pixel images.

Registered as 'ncsnv2_64' (images below 96 pixels; CIFAR-10, CelebA 64), 'ncsnv2_128' and
'ncsnv2_256'. Same functions as the PyTorch NCSNv2 (ermongroup/ncsnv2, ported in
yang-song/score_sde_pytorch), parameter for parameter; `params_from_torch` loads its state
dicts. Where that port fails to build (it reads `config.data.channels`, pads dilated
convolutions by 1 and cannot build bias-free convolutions) we follow the working original.

Interface: `model.apply({'params': p}, x, labels, train)` with x: [B, H, W, C] (in [0, 1]
unless `centered`, in which case in [-1, 1]) and labels: [B] int noise-level indices into
sigmas = geomspace(sigma_max, sigma_min, num_scales) (0 = largest sigma). The output
[B, H, W, C] is the score; with `scale_by_sigma` (NCSNv2's convention, default True) the
network output is divided by sigma[labels]. Each field is set by the `config.model` key of
its name (`centered` by config.data.centered).

The 'ncsn' (NCSNv1) network shares the backbone and the fields: see `ncsn.py`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax.models import layers
from scoresde_jax.models import ncsn_layers
from scoresde_jax.errors import ArgumentError
from scoresde_jax.models.utils import check_choice, init_params, register_model

_INTERPOLATIONS = ('bilinear', 'nearest_neighbor')


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


def refinenet(x, labels, *, architecture: str, nf: int, nonlinearity: str,
              interpolation: str, dtype: Any, centered: bool, num_classes: int | None):
  """The NCSN/NCSNv2 RefineNet (call inside a compact module). Returns [B, H, W, C] float32.

  num_classes None: NCSNv2 (unconditional blocks; labels unused here). Otherwise NCSNv1:
  every normalization is conditioned on `labels`. `dtype` is the compute dtype.
  """
  stages, refines = _ARCHITECTURES[architecture]
  n_down = sum(1 for _, _, resample, dilation in stages if resample == 'down' and dilation == 1)
  height, width = x.shape[1:3]
  if height % 2 ** n_down or width % 2 ** n_down:
    raise ValueError(f'{architecture} needs image sides divisible by {2 ** n_down}; '
                     f'got {height}x{width}.')
  act = layers.get_act(nonlinearity)
  y = None if num_classes is None else labels
  block_kw = dict(act=act, num_classes=num_classes, dtype=dtype)

  h = x if centered else 2 * x - 1.0
  h = ncsn_layers.conv(h.astype(dtype), nf, 3, dtype=dtype, name='begin_conv')
  features = []
  for name, mult, resample, dilation in stages:
    h = ncsn_layers.ResidualBlock(mult * nf, resample=resample, dilation=dilation,
                                  name=f'{name}_0', **block_kw)(h, y)
    h = ncsn_layers.ResidualBlock(mult * nf, resample=None, dilation=dilation,
                                  name=f'{name}_1', **block_kw)(h, y)
    features.append(h)

  ref = None
  for k, (name, mult) in enumerate(refines):
    skip = features[-1 - k]
    inputs = [skip] if ref is None else [skip, ref]
    ref = ncsn_layers.RefineBlock(mult * nf, skip.shape[1:3], start=ref is None,
                                  end=k == len(refines) - 1, interpolation=interpolation,
                                  name=name, **block_kw)(inputs, y)

  if num_classes is None:
    h = ncsn_layers.InstanceNormPlus(name='normalizer')(ref)
  else:
    h = ncsn_layers.ConditionalInstanceNormPlus(num_classes, name='normalizer')(ref, y)
  h = act(h)
  h = ncsn_layers.conv(h, x.shape[-1], 3, dtype=dtype, name='end_conv')
  return h.astype(jnp.float32)


class RefineNet(nn.Module):
  """Fields and forward pass shared by NCSNv2 and NCSN; subclasses fix `architecture`.

  Attributes:
    nf: base channel count.
    nonlinearity: elu | relu | lrelu | swish.
    centered: inputs are in [-1, 1] already (else [0, 1]).
    sigma_min, sigma_max, num_scales: the noise levels the labels index.
    normalization: 'InstanceNorm++' only.
    interpolation: multi-resolution fusion upsampling, 'bilinear' | 'nearest_neighbor'.
    scale_by_sigma: divide the output by sigma[labels].
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
  """
  nf: int
  nonlinearity: str
  centered: bool
  sigma_min: float
  sigma_max: float
  num_scales: int
  normalization: str = 'InstanceNorm++'
  interpolation: str = 'bilinear'
  scale_by_sigma: bool = True
  dtype: str = 'float32'
  architecture = 'ncsnv2_64'

  def __post_init__(self):
    if self.normalization != 'InstanceNorm++':
      raise ArgumentError('normalization', '{architecture} is built with InstanceNorm++; got '
                          '{name} = {value!r}.', architecture=self.architecture,
                          value=self.normalization)
    check_choice('interpolation', self.interpolation, _INTERPOLATIONS)
    layers.get_act(self.nonlinearity)
    layers.get_dtype(self.dtype)
    super().__post_init__()

  @property
  def label_classes(self) -> int | None:
    """Rows of the conditional normalizations' embeddings; None: unconditional blocks."""
    return None

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    del train  # No dropout or batch statistics.
    labels = labels.astype(jnp.int32)
    h = refinenet(x, labels, architecture=self.architecture, nf=self.nf,
                  nonlinearity=self.nonlinearity, interpolation=self.interpolation.lower(),
                  dtype=layers.get_dtype(self.dtype), centered=self.centered,
                  num_classes=self.label_classes)
    if self.scale_by_sigma:
      sigmas = jnp.asarray(layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
      h = h / sigmas[labels][:, None, None, None]
    return h


@register_model(name='ncsnv2_64')
class NCSNv2(RefineNet):
  """NCSNv2 for images below 96 pixels: 1 real downsampling, then dilations 2 and 4."""
  architecture = 'ncsnv2_64'


@register_model(name='ncsnv2_128')
class NCSNv2_128(RefineNet):  # pylint: disable=invalid-name
  """NCSNv2 for 96..128 pixel images: 2 downsamplings, widths up to 4 nf, dilations 2 and 4."""
  architecture = 'ncsnv2_128'


@register_model(name='ncsnv2_256')
class NCSNv2_256(RefineNet):  # pylint: disable=invalid-name
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


def params_from_torch(state_dict: Mapping[str, Any], model: RefineNet,
                      image_shape: Sequence[int]) -> dict:
  """Parameters of `model` (an NCSN/NCSNv2) from a PyTorch `state_dict` (score_sde_pytorch
  naming), for images of `image_shape` = (H, W, C).

  Accepts torch tensors or numpy arrays, with or without DataParallel's 'module.' prefix.
  The 'sigmas' buffer, if present, must equal the model's noise levels (sigma_min,
  sigma_max, num_scales). Raises ValueError naming every missing, unexpected or misshapen
  parameter.
  """
  expected = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), image_shape))
  expected = {tuple(k.key for k in path): leaf.shape for path, leaf in
              jax.tree_util.tree_flatten_with_path(expected)[0]}
  sigmas = layers.get_sigmas(model.sigma_min, model.sigma_max, model.num_scales)

  params, problems = {}, []
  for key, value in state_dict.items():
    key = key[len('module.'):] if key.startswith('module.') else key
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value,
                       np.float32)
    if key == 'sigmas':
      if value.shape != sigmas.shape or not np.allclose(value, sigmas, rtol=1e-5):
        problems.append("the checkpoint's sigmas differ from the model's sigma_min, "
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
    raise ValueError(f'State dict does not fit {type(model).__name__}: ' + '; '.join(problems[:20])
                     + (f' (and {len(problems) - 20} more)' if len(problems) > 20 else ''))
  return params


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v
