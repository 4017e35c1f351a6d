"""A small DCGAN (Radford et al. 2016) for low-resolution images, and its losses.

Generator: z [B, latent_dim] -> Dense to 4x4 x (features * 2^n), GroupNorm -> n times (ReLU,
nearest-neighbour doubling, 3x3 convolution halving the channels, GroupNorm) -> ReLU -> 3x3
convolution to the image's channels -> tanh (data in [-1, 1], `centered`) or sigmoid ([0, 1]).
Discriminator: the mirror image: 3x3 convolution to `features` channels, n times (leaky ReLU,
4x4 convolution of stride 2, doubling the channels), leaky ReLU, Dense to one logit. For an
image of side 4 * 2^n (8x8 digits: n = 1).

No batch normalization: the generator normalizes per example (GroupNorm) and the
discriminator not at all, so every example's output depends on that example alone. DDLS
needs that: its latent chains run as a batch and must not interact through batch
statistics, and the discriminator's logit must be a function of one image.

Losses (Goodfellow et al. 2014, non-saturating form): the discriminator minimizes
softplus(-d(x)) + softplus(d(G(z))), the logistic loss whose optimum is the logit
d(x) = log p_data(x) - log p_g(x), which DDLS uses as an energy correction; the generator
minimizes softplus(-d(G(z))). Optionally the R1 penalty (Mescheder et al. 2018)
(gamma / 2) |grad_x d(x)|^2 on real data.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scoresde_jax.errors import ArgumentError


def _doublings(image_size: int, name: str = 'image_size') -> int:
  """n with image_size = 4 * 2^n, n >= 0."""
  n = round(math.log2(image_size / 4)) if image_size >= 4 else -1
  if n < 0 or 4 * 2**n != image_size:
    raise ArgumentError(name, 'the DCGAN needs an image side 4 * 2^n (4, 8, 16, 32, ...), '
                        'got {name}={value}.', value=image_size)
  return n


def _groupnorm(x, name):
  # Groups of (at least) four channels: per-example statistics (see the module docstring).
  return nn.GroupNorm(num_groups=max(min(x.shape[-1] // 4, 32), 1), name=name)(x)


class Generator(nn.Module):
  """z: [B, latent_dim] -> images [B, image_size, image_size, num_channels].

  Attributes:
    latent_dim: the dimension of z ~ N(0, I).
    image_size, num_channels: of the images (image_size = 4 * 2^n).
    features: channels at the last resolution; each lower one has twice as many.
    centered: images in [-1, 1] (tanh) rather than [0, 1] (sigmoid), as the data scaler.
  """
  latent_dim: int = 32
  image_size: int = 8
  num_channels: int = 1
  features: int = 64
  centered: bool = True

  def __post_init__(self):
    _doublings(self.image_size)
    for name in ('latent_dim', 'features', 'num_channels'):
      if getattr(self, name) < 1:
        raise ArgumentError(name, 'the generator needs {name} >= 1, got {value}.',
                            value=getattr(self, name))
    super().__post_init__()

  @nn.compact
  def __call__(self, z):
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f'z must be [B, {self.latent_dim}], got shape {z.shape}.')
    n = _doublings(self.image_size)
    channels = self.features * 2**n
    h = nn.Dense(4 * 4 * channels, name='project')(z).reshape(z.shape[0], 4, 4, channels)
    h = _groupnorm(h, 'norm_project')
    for i in range(n):
      channels //= 2
      # Nearest-neighbour doubling and a 3x3 convolution rather than a transposed one: no
      # checkerboard artifacts, and less than half the time on XLA:CPU.
      h = jnp.repeat(jnp.repeat(jax.nn.relu(h), 2, axis=1), 2, axis=2)
      h = nn.Conv(channels, (3, 3), padding='SAME', name=f'up_{i}')(h)
      h = _groupnorm(h, f'norm_up_{i}')
    h = nn.Conv(self.num_channels, (3, 3), padding='SAME', name='to_image')(jax.nn.relu(h))
    return jnp.tanh(h) if self.centered else jax.nn.sigmoid(h)


class Discriminator(nn.Module):
  """images [B, image_size, image_size, C] -> logits [B] (float32).

  Attributes:
    image_size: of the images (4 * 2^n).
    features: channels at the full resolution; each lower one has twice as many.
  """
  image_size: int = 8
  features: int = 64

  def __post_init__(self):
    _doublings(self.image_size)
    if self.features < 1:
      raise ArgumentError('features', 'the discriminator needs {name} >= 1, got {value}.',
                          value=self.features)
    super().__post_init__()

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f'x must be [B, {self.image_size}, {self.image_size}, C], got shape '
                       f'{x.shape}.')
    channels = self.features
    h = nn.Conv(channels, (3, 3), padding='SAME', name='from_image')(x)
    for i in range(_doublings(self.image_size)):
      channels *= 2
      h = nn.Conv(channels, (4, 4), (2, 2), padding='SAME', name=f'down_{i}')(
          jax.nn.leaky_relu(h, 0.2))
    h = jax.nn.leaky_relu(h, 0.2).reshape(x.shape[0], -1)
    return nn.Dense(1, name='logit')(h)[:, 0].astype(jnp.float32)


def init_params(rng, generator: Generator, discriminator: Discriminator):
  """(generator params, discriminator params), float32. Traceable: jit it (with whatever else
  initializes), or every initializer runs as its own compiled program."""
  g_rng, d_rng = jax.random.split(rng)
  z = jnp.zeros((1, generator.latent_dim), jnp.float32)
  x = jnp.zeros((1, generator.image_size, generator.image_size, generator.num_channels),
                jnp.float32)
  return generator.init(g_rng, z)['params'], discriminator.init(d_rng, x)['params']


def discriminator_loss(d_apply, d_params, real, fake, r1_gamma: float = 0.0):
  """(mean logistic loss of D on real vs fake images [B, ...], mean R1 penalty).

  The returned loss includes the penalty (r1_gamma / 2) E|grad_x d(real)|^2 when r1_gamma > 0;
  the penalty is returned apart for logging (0 when off).
  """
  def logits_real(x):
    out = d_apply(d_params, x)
    return jnp.sum(out), out

  if r1_gamma > 0:
    grad_real, d_real = jax.grad(logits_real, has_aux=True)(real)
    r1 = jnp.mean(jnp.sum(jnp.reshape(grad_real, (real.shape[0], -1)) ** 2, axis=-1))
  else:
    d_real, r1 = d_apply(d_params, real), jnp.zeros((), jnp.float32)
  d_fake = d_apply(d_params, fake)
  loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
  return loss + 0.5 * r1_gamma * r1, r1


def generator_loss(d_apply, d_params, fake):
  """The non-saturating generator loss, mean softplus(-d(G(z)))."""
  return jnp.mean(jax.nn.softplus(-d_apply(d_params, fake)))
