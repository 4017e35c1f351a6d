"""Layers of NCSN++ / DDPM++ (Flax linen, NHWC).

Names of modules and parameters equal those of the original score_sde Flax code
(`GaussianFourierProjection_0/W`, `Combine_0/Conv_0`, `AttnBlockpp_0/NIN_3`,
`ResnetBlockBigGANpp_4/Conv_2`, `Upsample_1/Conv2d_0/weight`, ...). GroupNorm layers use
min(C // 4, 32) groups, as the reference.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax.models import layers
from scoresde_jax.models import up_or_down_sampling as updown

conv1x1 = layers.conv1x1
conv3x3 = layers.conv3x3
default_init = layers.default_init
NIN = layers.NIN

_INV_SQRT2 = 1. / np.sqrt(2.)


def num_groups_pp(channels: int) -> int:
  """GroupNorm group count of NCSN++: min(channels // 4, 32)."""
  return min(channels // 4, 32)


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar: [B] -> [B, 2 * embedding_size] (sin, cos).

  The frequencies `W` ~ N(0, scale^2) are a fixed (non-trained) parameter; gradients are
  stopped. Always float32: the input is log(sigma) and needs the precision.
  """
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    w = self.param('W', nn.initializers.normal(stddev=self.scale), (self.embedding_size,),
                   jnp.float32)
    w = jax.lax.stop_gradient(w)
    x_proj = x.astype(jnp.float32)[:, None] * w[None, :] * 2 * np.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
  """Merges the input pyramid x into features y: 1x1 conv of x to y's channels, then
  concatenation ('cat': [..., 2 C_y]) or sum ('sum': [..., C_y])."""
  method: str = 'cat'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    h = conv1x1(x, y.shape[-1], dtype=self.dtype)
    if self.method == 'cat':
      return jnp.concatenate([h.astype(y.dtype), y], axis=-1)
    if self.method == 'sum':
      return h + y
    raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {self.method!r}.")


class AttnBlockpp(nn.Module):
  """Self-attention over H*W positions with residual; [B, H, W, C] -> same.

  `skip_rescale` divides the residual sum by sqrt(2); `init_scale` initializes the output
  projection (0 means 1e-10).
  """
  skip_rescale: bool = False
  init_scale: float = 0.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = layers.group_norm(x, num_groups_pp(c), self.dtype)
    q = NIN(c, dtype=self.dtype)(h)
    k = NIN(c, dtype=self.dtype)(h)
    v = NIN(c, dtype=self.dtype)(h)
    h = layers.spatial_attention(q, k, v)
    h = NIN(c, init_scale=self.init_scale, dtype=self.dtype)(h)
    if self.skip_rescale:
      return (x + h) * _INV_SQRT2
    return x + h


class Upsample(nn.Module):
  """x2 upsampling: nearest (+ 3x3 conv) or FIR (+ fused transposed conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if not self.fir:
      h = updown.naive_upsample_2d(x, factor=2)
      if self.with_conv:
        h = conv3x3(h, out_ch, dtype=self.dtype)
    elif not self.with_conv:
      h = updown.upsample_2d(x, self.fir_kernel, factor=2)
    else:
      h = updown.Conv2d(out_ch, kernel=3, up=True, resample_kernel=tuple(self.fir_kernel),
                        use_bias=True, kernel_init=default_init(), dtype=self.dtype)(x)
    return h


class Downsample(nn.Module):
  """x2 downsampling: stride-2 conv / average pooling, or FIR (+ fused strided conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if not self.fir:
      if self.with_conv:
        return conv3x3(x, out_ch, stride=2, dtype=self.dtype)
      return updown.naive_downsample_2d(x, factor=2)
    if not self.with_conv:
      return updown.downsample_2d(x, self.fir_kernel, factor=2)
    return updown.Conv2d(out_ch, kernel=3, down=True, resample_kernel=tuple(self.fir_kernel),
                         use_bias=True, kernel_init=default_init(), dtype=self.dtype)(x)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM++ residual block: [B, H, W, C] (+ temb [B, D]) -> [B, H, W, out_ch]."""
  act: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None, train: bool = True):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(layers.group_norm(x, num_groups_pp(c), self.dtype))
    h = conv3x3(h, out_ch, dtype=self.dtype)
    h = layers.add_time_embedding(h, temb, self.act, self.dtype)
    h = self.act(layers.group_norm(h, num_groups_pp(out_ch), self.dtype))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
    if c != out_ch:
      if self.conv_shortcut:
        x = conv3x3(x, out_ch, dtype=self.dtype)
      else:
        x = NIN(out_ch, dtype=self.dtype)(x)
    if self.skip_rescale:
      return (x + h) * _INV_SQRT2
    return x + h


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style residual block with optional x2 up/downsampling (FIR or naive).

  [B, H, W, C] (+ temb [B, D]) -> [B, H', W', out_ch] with H' = 2H (up), H/2 (down) or H.
  """
  act: Callable
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.
  dtype: Any = jnp.float32

  def _resample(self, x):
    if self.up:
      if self.fir:
        return updown.upsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_upsample_2d(x, factor=2)
    if self.down:
      if self.fir:
        return updown.downsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_downsample_2d(x, factor=2)
    return x

  @nn.compact
  def __call__(self, x, temb=None, train: bool = True):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(layers.group_norm(x, num_groups_pp(c), self.dtype))
    h = self._resample(h)
    x = self._resample(x)
    h = conv3x3(h, out_ch, dtype=self.dtype)
    h = layers.add_time_embedding(h, temb, self.act, self.dtype)
    h = self.act(layers.group_norm(h, num_groups_pp(out_ch), self.dtype))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
    if c != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch, dtype=self.dtype)
    if self.skip_rescale:
      return (x + h) * _INV_SQRT2
    return x + h
