"""DDPM U-Net (Ho et al. 2020) as configured in score_sde. Registered as 'ddpm'.

`DDPM(nf=128, ch_mult=(1, 2, 2, 2), ...).apply({'params': p}, x, labels, train=...)`:
  x: [B, H, W, C] float32 (in [0, 1] unless `centered`, then [-1, 1]);
  labels: [B] timesteps (integers for discrete DDPM, t * 999 for continuous training);
  returns [B, H, W, C] float32 (divided by sigmas[labels] when `scale_by_sigma`).
With `num_classes` > 0, `apply(..., class_labels=y)` also takes y: [B] int class labels in
[0, num_classes], num_classes being the null class (None: null for the whole batch).

Each field is set by the `config.model` key of its name (`centered` by config.data.centered).

Unlike the PyTorch port, `conditional=False` builds (no time embedding, no per-block
Dense layers, as in the original Flax model). GroupNorm uses 32 groups, so every channel
count (nf * ch_mult) must be a multiple of 32.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from scoresde_jax.models import layers
from scoresde_jax.errors import ArgumentError
from scoresde_jax.models.utils import register_model


@register_model(name='ddpm')
class DDPM(layers.UNet):
  """DDPM score/noise network (see the module docstring for the call signature).

  Attributes (besides those of `layers.UNet`; `scale_by_sigma` divides by sigmas[labels]):
    normalization: 'GroupNorm' only.
    sigma_min, sigma_max, num_scales: the noise levels; required by `scale_by_sigma`.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
  """
  normalization: str = 'GroupNorm'
  sigma_min: float | None = None
  sigma_max: float | None = None
  num_scales: int | None = None
  dtype: str = 'float32'

  def __post_init__(self):
    if self.normalization != 'GroupNorm':
      raise ArgumentError('normalization', "ddpm supports {name}='GroupNorm' only, got "
                          '{value!r}.', value=self.normalization)
    if self.scale_by_sigma:
      for field in ('sigma_min', 'sigma_max', 'num_scales'):
        if getattr(self, field) is None:
          raise ArgumentError(field, '{name} is required by scale_by_sigma=True.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, labels, train: bool = True, class_labels=None):
    act, dtype = self.act_and_dtype()
    nf, ch_mult = self.nf, self.ch_mult
    num_resolutions = len(ch_mult)
    for ch in (nf,) + tuple(nf * c for c in ch_mult):
      if ch % 32:
        raise ArgumentError('nf', 'ddpm GroupNorm uses 32 groups: channel count {ch} '
                            '({name} * ch_mult) must be a multiple of 32.', ch=ch)
    self.check_inputs(x, labels)

    attn_block = functools.partial(layers.AttnBlock, dtype=dtype)
    resnet_block = functools.partial(layers.ResnetBlockDDPM, act=act, dropout=self.dropout,
                                     dtype=dtype)

    temb = None
    if self.conditional:
      temb = layers.time_mlp(layers.get_timestep_embedding(labels, nf), nf, act, dtype)
    temb = self.class_embedding(temb, class_labels)

    x = x.astype(jnp.float32)
    h = x if self.centered else 2 * x - 1.

    hs = [layers.conv3x3(h, nf, dtype=dtype)]
    for i_level in range(num_resolutions):
      for _ in range(self.num_res_blocks):
        h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv, dtype=dtype)(hs[-1]))

    h = hs[-1]
    h = resnet_block()(h, temb, train)
    h = attn_block()(h)
    h = resnet_block()(h, temb, train)

    for i_level in reversed(range(num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        skip = hs.pop()
        h = resnet_block(out_ch=nf * ch_mult[i_level])(
            jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)
      if i_level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv, dtype=dtype)(h)

    assert not hs
    h = act(layers.group_norm(h, 32, dtype))
    h = layers.conv3x3(h, x.shape[-1], init_scale=0., dtype=dtype)
    h = h.astype(jnp.float32)

    if self.scale_by_sigma:
      sigmas = jnp.asarray(layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
      h = h / sigmas[labels.astype(jnp.int32)].reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return h
