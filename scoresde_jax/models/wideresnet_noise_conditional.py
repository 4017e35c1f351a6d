"""The paper's noise-conditional Wide-ResNet classifier for class-conditional sampling.

Song et al. 2021 (App. I) steer samples with a time-dependent classifier p_t(y | x(t)): a
Wide-ResNet (Zagoruyko & Komodakis 2016; WRN-28-10 for CIFAR-10) whose residual blocks
also receive an embedding of the noise scale, as NCSN++ receives it. The shape followed here:

  * per-image standardization of the input: (x - mean) / max(std, 1 / sqrt(H W C));
  * the noise scale enters as random Fourier features of log(sigma) (fixed Gaussian
    frequencies, std `fourier_scale`), then Dense(4E) -> swish -> Dense(4E) with E the
    number of frequencies; every block adds Dense(swish(temb)) to the output of its first
    convolution, as a per-channel bias;
  * a 3x3 stem convolution to `base_channels`, then three groups of (depth - 4) / 6
    pre-activation blocks with base_channels * width * (1, 2, 4) channels, the second and
    third group halving the resolution; GroupNorm (min(C / 4, 32) groups, no batch
    statistics, so examples stay independent, as `controllable.conditional_score_fn`
    requires) and ReLU before each convolution; shortcuts are identity, or average pooling
    plus zero-padded channels where a block changes shape;
  * GroupNorm + ReLU, global average pooling and a Dense layer to `num_classes` logits.

Convolution kernels are He-normal with fan-out (variance 2 / fan_out); the output layer is
uniform in [-1, 1] / sqrt(num_classes), as the WRN/AutoAugment implementations.

The noise scale is the VE one: x(t) = x(0) + sigma z. Models of VP / sub-VP SDEs use the
equivalent VE input x(t) / alpha(t) with sigma = std(t) / alpha(t) (see
`scoresde_jax.run.train_classifier.classifier_inputs`); the per-image standardization makes
the division by alpha(t) immaterial except at near-constant images.

Call: `WideResNetNoiseConditional(depth=28, width=10, num_classes=10).apply({'params': p},
x, sigmas)` with x: [B, H, W, C] (H and W divisible by 4), sigmas: [B] positive noise
scales; returns logits [B, num_classes] float32. `scoresde_jax.run.networks` builds it from
`config.classifier`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde_jax.errors import ArgumentError

# He initialization with fan-out (gain 2), the WRN reference's choice for convolutions.
conv_init = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _output_init(key, shape, dtype=jnp.float32):
  """U[-1, 1] / sqrt(fan_out) for the last Dense kernel [in, out]."""
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / math.sqrt(shape[1])


def _norm_relu(x, name, relu=True):
  # Groups of (at least) four channels, at most 32 groups.
  x = nn.GroupNorm(num_groups=max(min(x.shape[-1] // 4, 32), 1), epsilon=1e-5, name=name)(x)
  return jax.nn.relu(x) if relu else x


class FourierFeatures(nn.Module):
  """[sin, cos](2 pi W v) of a scalar per example, W ~ N(0, scale^2) fixed: [B] -> [B, 2E]."""
  num_frequencies: int = 128
  scale: float = 16.0

  @nn.compact
  def __call__(self, v):
    w = self.param('W', nn.initializers.normal(stddev=self.scale), (self.num_frequencies,))
    # Frequencies are random features, not trained.
    w = jax.lax.stop_gradient(w)
    proj = 2 * jnp.pi * v[:, None] * w[None, :]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class NoiseConditionalBlock(nn.Module):
  """Pre-activation residual block with the noise embedding added after its first conv."""
  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    if self.activate_before_residual:
      # The first block normalizes once and feeds that to both branches.
      x = _norm_relu(x, 'norm_0')
      h = x
    else:
      h = _norm_relu(x, 'norm_0')
    h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding='SAME', use_bias=False,
                kernel_init=conv_init, name='conv_0')(h)
    h = h + nn.Dense(self.channels, name='temb_proj')(nn.swish(temb))[:, None, None, :]
    h = _norm_relu(h, 'norm_1')
    h = nn.Conv(self.channels, (3, 3), padding='SAME', use_bias=False, kernel_init=conv_init,
                name='conv_1')(h)
    if x.shape[-1] != self.channels:
      s = x.shape[1] // h.shape[1]
      x = nn.avg_pool(x, (s, s), (s, s))
      x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, self.channels - x.shape[-1])])
    return h + x


class WideResNetNoiseConditional(nn.Module):
  """WRN-depth-width with noise-scale conditioning (see the module docstring).

  Each field is set by the `config.classifier` key of its name.

  Attributes:
    depth: 6 n + 4 (n blocks per group); 28 is the paper's, 10 (n = 1) a CPU-sized one.
    width: channel multiplier k (10 in the paper).
    num_classes: number of logits.
    base_channels: stem channels; groups have base * width * (1, 2, 4).
    num_frequencies: E, Fourier frequencies of log(sigma); the embedding has 4E units.
    fourier_scale: std of the Fourier frequencies.
  """
  depth: int
  width: int
  num_classes: int
  base_channels: int = 16
  num_frequencies: int = 128
  fourier_scale: float = 16.0

  def __post_init__(self):
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ArgumentError('depth', 'Wide-ResNet {name} must be 6 n + 4 with n >= 1 '
                          '(10, 16, 22, 28, ...), got {depth}.', depth=self.depth)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, sigmas, train: bool = False):
    del train  # no dropout or batch statistics: training and evaluation agree
    if x.ndim != 4:
      raise ValueError(f'x must be [B, H, W, C], got shape {x.shape}.')
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f'Image size {x.shape[1:3]} must be divisible by 4 (two halvings).')
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.shape != (x.shape[0],):
      raise ValueError(f'sigmas must be [B] = [{x.shape[0]}], got shape {sigmas.shape}.')
    blocks = (self.depth - 4) // 6

    # Per-image standardization; the floor keeps near-constant images finite.
    n = math.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.maximum(std, 1.0 / math.sqrt(n))

    emb_dim = 4 * self.num_frequencies
    temb = FourierFeatures(self.num_frequencies, self.fourier_scale, name='fourier')(jnp.log(sigmas))
    temb = nn.Dense(emb_dim, name='temb_0')(temb)
    temb = nn.Dense(emb_dim, name='temb_1')(nn.swish(temb))

    h = nn.Conv(self.base_channels, (3, 3), padding='SAME', use_bias=False, kernel_init=conv_init,
                name='stem')(x)
    for g, (mult, stride) in enumerate(zip((1, 2, 4), (1, 2, 2))):
      for b in range(blocks):
        h = NoiseConditionalBlock(self.base_channels * self.width * mult, stride if b == 0 else 1,
                                  activate_before_residual=(g == 0 and b == 0),
                                  name=f'group_{g}_block_{b}')(h, temb)
    h = _norm_relu(h, 'norm_out')
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_output_init, name='logits')(h).astype(jnp.float32)
