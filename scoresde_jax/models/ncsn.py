"""NCSN (v1, Song & Ermon 2019): the noise-conditional RefineNet, registered as 'ncsn'.

The NCSNv2 64-pixel backbone with every normalization replaced by conditional
InstanceNorm++ (one embedding row per noise level), normalizations inside the RefineNet
blocks and average pooling in the chained residual pooling; see `ncsn_layers`.

Interface and fields as NCSNv2 (`ncsnv2.RefineNet`): x: [B, H, W, C], labels: [B] int
noise-level indices in [0, num_classes) (the configs tie config.model.num_classes to
num_scales). The reference's NCSN configs set `scale_by_sigma = False` (this network's
default): the network itself is the score (it learns the 1/sigma scale through the
embeddings); with True the output is divided by sigma[labels].
The reference's PyTorch NCSN does not build (it reads `config.data.channels`, gives its
blocks the unconditional normalization, compares `None > 1`), nor does its JAX one (it
reads `model.num_classes`, which no config set, and calls a normalization class on data).
`ncsnv2.params_from_torch` also converts NCSN state dicts.
"""
from __future__ import annotations

from scoresde_jax.models import ncsnv2
from scoresde_jax.errors import ArgumentError
from scoresde_jax.models.utils import register_model


@register_model(name='ncsn')
class NCSN(ncsnv2.RefineNet):
  """NCSNv1 score network. See the module docstring.

  Attributes (beyond `ncsnv2.RefineNet`'s):
    num_classes: rows of the conditional normalizations; must equal num_scales
      (None: num_scales).
  """
  scale_by_sigma: bool = False
  num_classes: int | None = None
  architecture = 'ncsnv2_64'

  def __post_init__(self):
    if self.num_classes is not None and self.num_classes != self.num_scales:
      raise ArgumentError('num_classes', '{name} ({classes}) must equal num_scales ({scales}): '
                          'one row per noise level.', classes=self.num_classes,
                          scales=self.num_scales)
    super().__post_init__()

  @property
  def label_classes(self) -> int:
    return self.num_scales
