"""NCSN (v1, Song & Ermon 2019): the noise-conditional RefineNet, registered as 'ncsn'.

The NCSNv2 64-pixel backbone with every normalization replaced by conditional
InstanceNorm++ (one embedding row per noise level), normalizations inside the RefineNet
blocks and average pooling in the chained residual pooling; see `ncsn_layers`.

Interface as NCSNv2: x: [B, H, W, C], labels: [B] int noise-level indices in
[0, config.model.num_classes) (the configs tie num_classes to num_scales). The reference's
NCSN configs set `scale_by_sigma = False`: the network itself is the score (it learns the
1/sigma scale through the embeddings); with True the output is divided by sigma[labels].
The reference's PyTorch NCSN does not build (it reads `config.data.channels`, gives its
blocks the unconditional normalization, compares `None > 1`), nor does its JAX one (it
reads `model.num_classes`, which no config set, and calls a normalization class on data).
`ncsnv2.params_from_torch` also converts NCSN state dicts.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scoresde_jax.models import ncsnv2
from scoresde_jax.models.utils import register_model


@register_model(name='ncsn')
class NCSN(nn.Module):
  """NCSNv1 score network. See the module docstring."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    del train  # No dropout or batch statistics.
    model = self.config.model
    num_classes = model.get('num_classes', model.num_scales)
    if num_classes != model.num_scales:
      raise ValueError(f'config.model.num_classes ({num_classes}) must equal '
                       f'config.model.num_scales ({model.num_scales}): one row per noise level.')
    labels = labels.astype(jnp.int32)
    h = ncsnv2.refinenet(x, labels, self.config, 'ncsnv2_64', num_classes=num_classes)
    if model.get('scale_by_sigma', False):
      h = h / jnp.asarray(ncsnv2.get_sigmas(self.config))[labels][:, None, None, None]
    return h
