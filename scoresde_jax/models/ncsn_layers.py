"""RefineNet building blocks of NCSN (v1) and NCSNv2, in Flax linen (NHWC).

The same functions as the NCSN/NCSNv2 PyTorch code that the paper's reference ports
(ermongroup/ncsn, ermongroup/ncsnv2), parameter for parameter. Submodules carry the PyTorch
attribute names (`conv1`, `normalize2`, `adapt_convs_0`, `1_2_conv`, ...), list indices
joined with '_', so a PyTorch state dict maps onto our parameters by renaming alone (see
`ncsnv2.params_from_torch`).

Every block takes `num_classes`: None builds the unconditional NCSNv2 block (InstanceNorm++,
max-pooling chained residual pooling), an integer the noise-conditional NCSNv1 block
(conditional InstanceNorm++ with one embedding row per noise level, average pooling, and the
normalizations NCSNv1 adds inside RCU, MSF and CRP blocks). Conditional blocks then take the
noise-level indices `y: [B]` int.

Facts of the PyTorch original that this reproduces (and the reference's JAX port does not):
  * InstanceNorm++ normalizes the per-channel means with their *unbiased* variance across
    channels (torch.var), the feature maps with the biased spatial variance (InstanceNorm2d).
  * Multi-resolution fusion upsamples bilinearly with align_corners=True.
  * A dilated 3x3 convolution pads by its dilation, so it keeps the spatial size; a 'down'
    residual block with dilation > 1 therefore does not downsample (NCSNv2 widens its
    receptive field with dilation instead).
Normalization runs in float32 whatever the compute dtype.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-5  # InstanceNorm2d's eps, also used by InstanceNorm++ for the channel means.


def _torch_uniform(fan_in: int):
  """PyTorch's default Conv2d initialization: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(x, features: int, kernel_size: int = 3, dilation: int = 1, use_bias: bool = True,
         dtype: Any = jnp.float32, name: str | None = None):
  """Square convolution keeping H, W (padding dilation * (k - 1) / 2), PyTorch's init.

  Call inside a compact module. x: [B, H, W, C_in] -> [B, H, W, features]; `dtype` is the
  compute dtype, parameters are float32.
  """
  fan_in = x.shape[-1] * kernel_size ** 2
  pad = dilation * (kernel_size - 1) // 2
  return nn.Conv(features, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_torch_uniform(fan_in),
                 bias_init=_torch_uniform(fan_in), name=name)(x)


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _normalize(x):
  """Shared part of InstanceNorm++: (instance-normalized x [B,H,W,C], normalized means [B,C])."""
  x = x.astype(jnp.float32)
  means = jnp.mean(x, axis=(1, 2))
  # Unbiased variance across channels, as torch.var.
  means_plus = (means - jnp.mean(means, axis=-1, keepdims=True)) / jnp.sqrt(
      jnp.var(means, axis=-1, ddof=1, keepdims=True) + _EPS)
  h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + _EPS)
  return h, means_plus


class InstanceNormPlus(nn.Module):
  """InstanceNorm++ (Song & Ermon 2019): instance norm that keeps the channel means' spread.

  Parameters alpha, gamma ~ N(1, 0.02) and beta = 0, each [C]. x: [B, H, W, C].
  """
  bias: bool = True

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    h, means_plus = _normalize(x)
    alpha = self.param('alpha', _scale_init, (channels,))
    gamma = self.param('gamma', _scale_init, (channels,))
    h = h + means_plus[:, None, None, :] * alpha
    out = gamma * h
    if self.bias:
      out = out + self.param('beta', nn.initializers.zeros, (channels,))
    return out.astype(x.dtype)


class ConditionalInstanceNormPlus(nn.Module):
  """InstanceNorm++ whose gamma, alpha, beta are looked up per noise level (NCSNv1).

  `embed`: [num_classes, 3C] holding (gamma, alpha, beta) per row, gamma and alpha
  ~ N(1, 0.02), beta = 0. x: [B, H, W, C], y: [B] int in [0, num_classes).
  """
  num_classes: int
  bias: bool = True

  @nn.compact
  def __call__(self, x, y):
    channels = x.shape[-1]
    parts = 3 if self.bias else 2

    def init(key, shape, dtype=jnp.float32):
      scale = _scale_init(key, (shape[0], 2 * channels), dtype)
      return jnp.concatenate([scale, jnp.zeros((shape[0], shape[1] - 2 * channels), dtype)], -1)

    table = nn.Embed(self.num_classes, parts * channels, embedding_init=init,
                     param_dtype=jnp.float32, name='embed')(y)
    h, means_plus = _normalize(x)
    if self.bias:
      gamma, alpha, beta = jnp.split(table, 3, axis=-1)
    else:
      (gamma, alpha), beta = jnp.split(table, 2, axis=-1), 0.0
    h = h + means_plus[:, None, None, :] * alpha[:, None, None, :]
    out = gamma[:, None, None, :] * h
    if self.bias:
      out = out + beta[:, None, None, :]
    return out.astype(x.dtype)


def _norm(num_classes, name):
  if num_classes is None:
    return InstanceNormPlus(name=name)
  return ConditionalInstanceNormPlus(num_classes, name=name)


def _apply_norm(norm, x, y):
  return norm(x) if isinstance(norm, InstanceNormPlus) else norm(x, y)


def _pool5(x, maxpool: bool):
  """5x5 stride-1 pooling with 2 pixels of padding (average counts the padding, as PyTorch)."""
  window, strides = (1, 5, 5, 1), (1, 1, 1, 1)
  pads = ((0, 0), (2, 2), (2, 2), (0, 0))
  if maxpool:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads) / 25.0


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] weights of 1-D linear interpolation with align_corners=True."""
  mat = np.zeros((n_out, n_in), np.float64)
  if n_in == 1 or n_out == 1:
    mat[:, 0] = 1.0
    return mat.astype(np.float32)
  src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.minimum(np.floor(src).astype(int), n_in - 2)
  frac = src - lo
  mat[np.arange(n_out), lo] = 1.0 - frac
  mat[np.arange(n_out), lo + 1] += frac
  return mat.astype(np.float32)


def resize(x, shape: Sequence[int], interpolation: str = 'bilinear'):
  """Resizes x: [B, H, W, C] to [B, *shape, C].

  'bilinear' is PyTorch's F.interpolate(mode='bilinear', align_corners=True), as NCSN/NCSNv2
  use; 'nearest_neighbor' is nearest-neighbour sampling.
  """
  height, width = shape
  if x.shape[1:3] == (height, width):
    return x
  if interpolation == 'bilinear':
    mh = jnp.asarray(_bilinear_matrix(height, x.shape[1]), x.dtype)
    mw = jnp.asarray(_bilinear_matrix(width, x.shape[2]), x.dtype)
    return jnp.einsum('oh,bhwc,pw->bopc', mh, x, mw)
  if interpolation == 'nearest_neighbor':
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), 'nearest')
  raise ValueError(f'Unknown interpolation {interpolation!r}; '
                   "expected 'bilinear' or 'nearest_neighbor'.")


class CRPBlock(nn.Module):
  """Chained residual pooling: x <- act(x); repeatedly path <- conv(pool(norm(path))), x += path."""
  features: int
  n_stages: int
  act: Callable
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None):
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      if self.num_classes is not None:
        path = _apply_norm(_norm(self.num_classes, f'norms_{i}'), path, y)
      path = _pool5(path, maxpool=self.num_classes is None)
      path = conv(path, self.features, 3, use_bias=False, dtype=self.dtype, name=f'convs_{i}')
      x = path + x
    return x


class RCUBlock(nn.Module):
  """Residual conv units: n_blocks x (n_stages x [norm], act, conv3x3 without bias) + skip."""
  features: int
  n_blocks: int
  n_stages: int
  act: Callable
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None):
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        if self.num_classes is not None:
          x = _apply_norm(_norm(self.num_classes, f'{i + 1}_{j + 1}_norm'), x, y)
        x = self.act(x)
        x = conv(x, self.features, 3, use_bias=False, dtype=self.dtype,
                 name=f'{i + 1}_{j + 1}_conv')
      x = x + residual
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum over inputs of resize(conv3x3([norm](x_i))) to `shape`."""
  features: int
  shape: Sequence[int]
  interpolation: str = 'bilinear'
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs, y=None):
    total = 0.0
    for i, h in enumerate(xs):
      if self.num_classes is not None:
        h = _apply_norm(_norm(self.num_classes, f'norms_{i}'), h, y)
      h = conv(h, self.features, 3, use_bias=True, dtype=self.dtype, name=f'convs_{i}')
      total = total + resize(h, self.shape, self.interpolation)
    return total


class RefineBlock(nn.Module):
  """RefineNet block: RCU per input, fusion to `shape`, chained residual pooling, output RCU.

  xs: list of [B, H_i, W_i, C_i]; with `start`, one input whose C equals `features`.
  Returns [B, *shape, features].
  """
  features: int
  shape: Sequence[int]
  act: Callable
  start: bool = False
  end: bool = False
  interpolation: str = 'bilinear'
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs, y=None):
    kw = dict(act=self.act, num_classes=self.num_classes, dtype=self.dtype)
    hs = [RCUBlock(x.shape[-1], 2, 2, name=f'adapt_convs_{i}', **kw)(x, y)
          for i, x in enumerate(xs)]
    if self.start:
      h = hs[0]
    else:
      h = MSFBlock(self.features, tuple(self.shape), self.interpolation, self.num_classes,
                   self.dtype, name='msf')(hs, y)
    h = CRPBlock(self.features, 2, name='crp', **kw)(h, y)
    return RCUBlock(self.features, 3 if self.end else 1, 2, name='output_convs', **kw)(h, y)


def _mean_pool2(x):
  """2x2 mean pooling with stride 2. x: [B, H, W, C] with even H, W."""
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.0


class ConvMeanPool(nn.Module):
  """Convolution ('same' size), then 2x2 mean pooling."""
  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _mean_pool2(conv(x, self.features, self.kernel_size, dtype=self.dtype, name='conv'))


class ResidualBlock(nn.Module):
  """Pre-activation residual block of the NCSN/NCSNv2 ResNet backbone.

  resample: None or 'down'. 'down' with dilation 1 halves H and W (conv, then mean pooling);
  with dilation > 1 it keeps the size. The shortcut is the identity when shapes agree and
  resample is None, else a convolution: 1x1 (dilation 1, same size), 1x1 + mean pooling
  ('down'), or a dilated 3x3 (dilation > 1).
  """
  output_dim: int
  act: Callable
  resample: str | None = None
  dilation: int = 1
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None):
    if self.resample not in (None, 'down'):
      raise ValueError(f"resample must be None or 'down', got {self.resample!r}.")
    input_dim = x.shape[-1]
    down = self.resample == 'down'
    mid = input_dim if down else self.output_dim
    conv3 = functools.partial(conv, kernel_size=3, dilation=self.dilation, dtype=self.dtype)
    h = self.act(_apply_norm(_norm(self.num_classes, 'normalize1'), x, y))
    h = conv3(h, mid, name='conv1')
    h = self.act(_apply_norm(_norm(self.num_classes, 'normalize2'), h, y))
    if down and self.dilation == 1:
      h = ConvMeanPool(self.output_dim, 3, self.dtype, name='conv2')(h)
    else:
      h = conv3(h, self.output_dim, name='conv2')

    if self.output_dim == input_dim and not down:
      shortcut = x
    elif self.dilation > 1:
      shortcut = conv3(x, self.output_dim, name='shortcut')
    elif down:
      shortcut = ConvMeanPool(self.output_dim, 1, self.dtype, name='shortcut')(x)
    else:
      shortcut = conv(x, self.output_dim, 1, dtype=self.dtype, name='shortcut')
    return shortcut + h
