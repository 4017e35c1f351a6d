"""FIR up/downsampling (StyleGAN2's upfirdn2d) in plain JAX, NHWC.

The score_sde reference runs these through a custom CUDA kernel; here the FIR filter is a
weighted sum of strided slices (two 1-D passes for the separable kernels every config uses),
so it runs on any backend, differentiates to any order and fuses under `jit`. Semantics
follow the reference exactly (same padding conventions), including the fused
transposed-convolution upsampling that crashes in the PyTorch port.

Shapes: images are `[N, H, W, C]`; FIR kernels are 1-D `[k]` (separable, outer product
taken) or 2-D `[k, k]`; convolution weights are HWIO `[kh, kw, C_in, C_out]`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def setup_kernel(k) -> np.ndarray:
  """Normalized 2-D FIR kernel from a 1-D (separable) or 2-D one; sums to 1."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'FIR kernel must be 1-D or square 2-D, got shape {k.shape}.')
  total = np.sum(k)
  if total == 0:
    raise ValueError('FIR kernel sums to zero and cannot be normalized.')
  return k / total


def _separable_factors(k: np.ndarray):
  """(column, row) with k == outer(column, row) when k has rank 1, else None."""
  i, j = np.unravel_index(np.argmax(np.abs(k)), k.shape)
  column, row = k[:, j], k[i, :] / k[i, j]
  return (column, row) if np.allclose(np.outer(column, row), k, rtol=1e-6, atol=0) else None


def _taps(x: jax.Array, taps: np.ndarray, down: int, axes) -> jax.Array:
  """'valid' cross-correlation of x with `taps` over `axes`, keeping every down-th output.

  A weighted sum of strided slices: XLA fuses it into one elementwise loop, where the
  same filter as a 1-channel grouped convolution runs 20-150x slower on the CPU (measured
  in RESULTS.md, "CPU speed against the PyTorch reference") and is one of the GPU
  profile's slow kernels. Taps whose weight is zero add nothing and are skipped.
  """
  out = None
  for offsets in np.ndindex(*taps.shape):
    weight = taps[offsets]
    if weight == 0:
      continue
    term = x
    for axis, offset, size in zip(axes, offsets, taps.shape):
      length = (x.shape[axis] - size) // down + 1
      term = jax.lax.slice_in_dim(term, offset, offset + (length - 1) * down + 1, down, axis)
    term = term * jnp.asarray(weight, x.dtype)
    out = term if out is None else out + term
  return out


def upfirdn2d(x: jax.Array, k, up: int = 1, down: int = 1, pad0: int = 0,
              pad1: int = 0) -> jax.Array:
  """Upsample (zero insertion), pad, FIR-filter and downsample each channel of `x`.

  Same as the reference `upfirdn_2d` with equal factors/pads on both axes:
    1. insert `up - 1` zeros after every pixel (so H -> H * up),
    2. pad `pad0` zeros before and `pad1` after (negative values crop),
    3. convolve (true convolution, flipped kernel) with the 2-D kernel `k`, 'valid',
    4. keep every `down`-th pixel.
  A separable (rank-1) kernel runs as two 1-D passes, any other as one 2-D pass of taps.

  Args:
    x: [N, H, W, C].
    k: 2-D FIR kernel [kh, kw] (used as given, not normalized).
  Returns:
    [N, (H * up + pad0 + pad1 - kh) // down + 1, (likewise for W), C], dtype of x.
  """
  if x.ndim != 4:
    raise ValueError(f'upfirdn2d expects [N, H, W, C] input, got shape {x.shape}.')
  k = np.asarray(k, dtype=np.float64)
  if k.ndim != 2:
    raise ValueError(f'upfirdn2d expects a 2-D kernel, got shape {k.shape}.')
  for name, v in (('up', up), ('down', down)):
    if not (isinstance(v, (int, np.integer)) and v >= 1):
      raise ValueError(f'{name} must be an integer >= 1, got {v!r}.')
  # Zero insertion = interior padding; the reference also appends up - 1 zeros after the
  # last pixel, hence the extra high padding. Negative low/high padding crops.
  cfg = [(0, 0, 0), (pad0, pad1 + up - 1, up - 1), (pad0, pad1 + up - 1, up - 1), (0, 0, 0)]
  x = jax.lax.pad(x, jnp.array(0, x.dtype), cfg)
  # True convolution: the flipped kernel, cross-correlated.
  k = k[::-1, ::-1]
  factors = _separable_factors(k)
  if factors is None:
    return _taps(x, k, down, axes=(1, 2))
  column, row = factors
  return _taps(_taps(x, column, down, axes=(1,)), row, down, axes=(2,))


def upsample_2d(x: jax.Array, k=None, factor: int = 2, gain: float = 1.) -> jax.Array:
  """FIR upsampling by `factor`: [N, H, W, C] -> [N, H * factor, W * factor, C].

  The kernel is normalized so a constant image keeps its value times `gain`. The default
  kernel `[1] * factor` is nearest-neighbour upsampling.
  """
  if k is None:
    k = [1] * factor
  k = setup_kernel(k) * (gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: jax.Array, k=None, factor: int = 2, gain: float = 1.) -> jax.Array:
  """FIR downsampling by `factor`: [N, H, W, C] -> [N, H // factor, W // factor, C].

  The default kernel `[1] * factor` is average pooling.
  """
  if k is None:
    k = [1] * factor
  k = setup_kernel(k) * gain
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def _check_weight(w):
  if w.ndim != 4 or w.shape[0] != w.shape[1]:
    raise ValueError(f'Convolution weight must be HWIO with a square window, got {w.shape}.')


def upsample_conv_2d(x: jax.Array, w: jax.Array, k=None, factor: int = 2,
                     gain: float = 1.) -> jax.Array:
  """Fused FIR upsampling and convolution (StyleGAN2 / reference `upsample_conv_2d`).

  Equals a stride-`factor` transposed convolution with `w` (zero insertion followed by a
  'full' cross-correlation with `w`) followed by the FIR filter, padded once so that the
  output is exactly [N, H * factor, W * factor, C_out].

  Args:
    x: [N, H, W, C_in].
    w: [kh, kw, C_in, C_out] (HWIO), kh == kw.
  """
  _check_weight(w)
  if x.shape[-1] != w.shape[2]:
    raise ValueError(f'Input has {x.shape[-1]} channels, weight expects {w.shape[2]}.')
  conv_k = w.shape[0]
  if k is None:
    k = [1] * factor
  k = setup_kernel(k) * (gain * factor ** 2)
  p = (k.shape[0] - factor) - (conv_k - 1)
  # lhs_dilation inserts factor - 1 zeros between pixels; 'full' padding makes this the
  # transposed convolution: output size (H - 1) * factor + conv_k.
  x = jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), window_strides=(1, 1),
      padding=((conv_k - 1, conv_k - 1), (conv_k - 1, conv_k - 1)),
      lhs_dilation=(factor, factor), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return upfirdn2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: jax.Array, w: jax.Array, k=None, factor: int = 2,
                       gain: float = 1.) -> jax.Array:
  """Fused FIR filtering and strided convolution (reference `conv_downsample_2d`).

  Args:
    x: [N, H, W, C_in].
    w: [kh, kw, C_in, C_out] (HWIO), kh == kw.
  Returns:
    [N, H // factor, W // factor, C_out].
  """
  _check_weight(w)
  if x.shape[-1] != w.shape[2]:
    raise ValueError(f'Input has {x.shape[-1]} channels, weight expects {w.shape[2]}.')
  conv_k = w.shape[0]
  if k is None:
    k = [1] * factor
  k = setup_kernel(k) * gain
  p = (k.shape[0] - factor) + (conv_k - 1)
  x = upfirdn2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
  return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), window_strides=(factor, factor), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling: [N, H, W, C] -> [N, H * factor, W * factor, C]."""
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
  return x.reshape(n, h * factor, w * factor, c)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
  """Average pooling over factor x factor blocks: [N, H, W, C] -> [N, H // f, W // f, C]."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // factor, factor, w // factor, factor, c)
  return jnp.mean(x, axis=(2, 4))


class Conv2d(nn.Module):
  """Convolution with optional fused FIR up/downsampling (StyleGAN2).

  Parameters are named as in the reference: `weight` [k, k, C_in, fmaps] (HWIO) and
  `bias` [fmaps].
  """
  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.up and self.down:
      raise ValueError('Conv2d cannot both upsample and downsample.')
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f'Conv2d kernel size must be odd and >= 1, got {self.kernel}.')
    init = self.kernel_init or nn.initializers.lecun_normal()
    w = self.param('weight', init, (self.kernel, self.kernel, x.shape[-1], self.fmaps),
                   jnp.float32)
    x = x.astype(self.dtype)
    w = w.astype(self.dtype)
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding='SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      b = self.param('bias', nn.initializers.zeros, (self.fmaps,), jnp.float32)
      x = x + b.astype(self.dtype).reshape((1, 1, 1, -1))
    return x
