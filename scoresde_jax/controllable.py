"""Controllable generation: inpainting, colorization, class-conditional sampling, interpolation.

Inpainting and colorization (Song et al. 2021, Sec. 5 and App. I) run the PC sampler on
the full state with a `sampling.Replacement`: after every corrector and every predictor
update the loop overwrites the known part with the data pushed through the forward kernel to the current time,
x_known(t) = alpha(t) x_known(0) + sigma(t) z. Colorization is inpainting in a rotated color
space: the orthonormal transform `COLOR_TRANSFORM` puts the gray level (the channel
mean, times sqrt(3)) in channel 0 and two chroma directions in channels 1 and 2; channel 0
is known. Both return the known part exactly (x_known(0) itself) in the final sample.

This "replacement" method conditions only approximately: the unknown part follows the
joint score evaluated at a freshly noised known part, not the score of the conditional
p_t(x_unknown | x_known(0)). It is exact when the known and unknown parts are independent,
and close when the known part pins down the mode well before the unknown part commits to
one (see tests/test_controllable.py for measured cases).

Class-conditional sampling adds the gradient of a time-dependent classifier's
log-probability: score(x, t) + scale * grad_x log p_t(y | x). Any sampler then samples
(approximately, for scale != 1) p_0(x | y). Classifier-free guidance needs no classifier:
(1 + w) s(x, t, y) - w s(x, t) from a conditional and an unconditional score
(`guided_score_fn`; a class-conditional network does both in one call through
`models.get_score_fn(..., class_labels=, guidance_scale=)`).

Interpolation encodes two data points to probability-flow ODE latents (the ODE run from
eps to T), interpolates the latents (spherically by default, since they are Gaussian) and
decodes each point with the ODE sampler.

Shapes: images `x: [B, H, W, C]` (any `[B, ...]` for inpainting), `t: [B]`.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import models, samplers, sampling, sde_lib

# Columns: the gray direction (1, 1, 1) / sqrt(3) and two chroma directions orthogonal to
# it, (-2, 1, 1) / sqrt(6) and (0, 1, -1) / sqrt(2). Orthonormal, so its inverse is its
# transpose. The reference uses the same matrix (rounded to float32 digits).
COLOR_TRANSFORM = np.array([
    [1 / math.sqrt(3), -2 / math.sqrt(6), 0.0],
    [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)],
    [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)],
])


def decouple(x):
  """RGB `[..., 3]` -> (gray * sqrt(3), chroma_1, chroma_2) `[..., 3]`."""
  _check_color(x)
  return jnp.einsum('...i,ij->...j', x, jnp.asarray(COLOR_TRANSFORM, x.dtype))


def couple(y):
  """Inverse of `decouple` (the transpose of the orthonormal transform)."""
  _check_color(y)
  return jnp.einsum('...j,ij->...i', y, jnp.asarray(COLOR_TRANSFORM, y.dtype))


def _check_color(x):
  if x.shape[-1] != 3:
    raise ValueError(f'Colorization needs 3 color channels in the last axis; got shape {x.shape}.')


def inpaint(sampler: samplers.Sampler, rng, score_fn, data, mask):
  """Inpaints `data: [B, ...]` where `mask` (broadcastable to it) is 0; 1 marks known entries.

  `sampler` is a PC sampler built for data's shape (`samplers.build`, or from a config with
  `run.setup.get_sampler`). Returns (samples, nfe).
  """
  data = jnp.asarray(data)
  mask = jnp.asarray(mask, data.dtype)
  try:
    mask = jnp.broadcast_to(mask, data.shape)
  except ValueError:
    raise ValueError(f'mask of shape {mask.shape} does not broadcast to data {data.shape}.') from None
  return _replaced(sampler, rng, score_fn, sampling.Replacement(data * mask, mask))


def colorize(sampler: samplers.Sampler, rng, score_fn, gray):
  """Colorizes `gray: [B, H, W, 3]` (equal channels, or any color image: only its channel
  mean is used); the samples have exactly the channel mean of `gray`.

  `sampler` is a PC sampler built for gray's shape. Returns (samples, nfe).
  """
  gray = jnp.asarray(gray)
  _check_color(gray)
  mask = jnp.zeros_like(gray).at[..., 0].set(1.0)
  return _replaced(sampler, rng, score_fn,
                   sampling.Replacement(decouple(gray) * mask, mask, decouple, couple))


def _replaced(sampler, rng, score_fn, replacement):
  if sampler.spec.method != 'pc':
    raise ValueError(f'Inpainting and colorization run the PC sampler, not {sampler.spec.method!r}.')
  return sampler(rng, score_fn, replacement=replacement)


def _per_shape(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, sharding):
  """`sampler_for(shape)`: the PC sampler of these settings, built (and compiled) once per
  shape of the data."""
  spec = samplers.SamplerSpec(method='pc', predictor=predictor, corrector=corrector, snr=snr,
                              n_steps_each=n_steps, probability_flow=probability_flow,
                              noise_removal=denoise, eps=eps)
  built = {}

  def sampler_for(shape):
    shape = tuple(shape)
    if shape not in built:
      built[shape] = samplers.build(spec, sde, shape, sharding)
    return built[shape]

  return sampler_for


def get_pc_inpainter(sde: sde_lib.SDE, predictor: str = 'reverse_diffusion',
                     corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                     probability_flow: bool = False, denoise: bool = True,
                     eps: float = 1e-3, sharding=None) -> Callable:
  """PC inpainter over sde.N steps (corrector then predictor, as `sampling.get_pc_sampler`).

  Returns `inpainter(rng, score_fn, data, mask) -> (samples, nfe)` (see `inpaint`).
  """
  sampler_for = _per_shape(sde, predictor, corrector, snr, n_steps, probability_flow, denoise,
                           eps, sharding)
  return lambda rng, score_fn, data, mask: inpaint(sampler_for(jnp.shape(data)), rng, score_fn,
                                                   data, mask)


def get_pc_colorizer(sde: sde_lib.SDE, predictor: str = 'reverse_diffusion',
                     corrector: str = 'langevin', snr: float = 0.16, n_steps: int = 1,
                     probability_flow: bool = False, denoise: bool = True,
                     eps: float = 1e-3, sharding=None) -> Callable:
  """PC colorizer: inpainting of the chroma channels in the `decouple`d color space.

  Returns `colorizer(rng, score_fn, gray) -> (samples, nfe)` (see `colorize`).
  """
  sampler_for = _per_shape(sde, predictor, corrector, snr, n_steps, probability_flow, denoise,
                           eps, sharding)
  return lambda rng, score_fn, gray: colorize(sampler_for(jnp.shape(gray)), rng, score_fn, gray)


def _conditional_score(score_fn, log_prob_fn, labels, scale, x, t):
  def selected_log_prob(x):
    log_probs = log_prob_fn(x, t)
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=1))

  # Examples are independent in log_prob_fn, so the gradient of the batch sum is the
  # per-example gradient grad_x log p_t(y_b | x_b).
  return score_fn(x, t) + scale * jax.grad(selected_log_prob)(x)


def conditional_score_fn(score_fn, log_prob_fn, labels, scale: float = 1.0):
  """score(x, t) + scale * grad_x log p_t(labels | x): the score of p_t(x | y) at scale 1.

  Args:
    score_fn: unconditional `score_fn(x, t)`.
    log_prob_fn: `log_prob_fn(x, t) -> [B, num_classes]` log-probabilities (or logits up
      to a per-example constant) of a time-dependent classifier; must treat examples
      independently (no batch statistics).
    labels: `[B]` int class of each sample.
    scale: guidance scale (1 = Bayes' rule).
  Returns:
    A score function usable by every sampler (a `jax.tree_util.Partial`, so labels and
    parameters are traced inputs of the compiled sampler).
  """
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be a [B] integer array; got shape {labels.shape}, '
                     f'dtype {labels.dtype}.')
  return jax.tree_util.Partial(_conditional_score, sampling.as_partial(score_fn),
                               sampling.as_partial(log_prob_fn), labels, jnp.float32(scale))


def _guided_score(cond_score_fn, uncond_score_fn, guidance_scale, x, t):
  return models.guided_score(cond_score_fn(x, t), uncond_score_fn(x, t), guidance_scale)


def guided_score_fn(cond_score_fn, uncond_score_fn, guidance_scale: float):
  """Classifier-free guidance of two score functions: (1 + w) cond(x, t) - w uncond(x, t)
  (`models.guided_score`), the score of p_t(x | y)^(1 + w) / p_t(x)^w.

  For any pair of batched scores (an exact conditional one such as a single component of a
  `gmm.GaussianMixture`, and the mixture's); a class-conditional network gets the same in
  one call on a doubled batch from `models.get_score_fn(..., class_labels, guidance_scale)`.
  Returns a `jax.tree_util.Partial` (bound arrays and `guidance_scale` are traced inputs).
  """
  return jax.tree_util.Partial(_guided_score, sampling.as_partial(cond_score_fn),
                               sampling.as_partial(uncond_score_fn),
                               jnp.float32(guidance_scale))


def slerp(z0, z1, weights):
  """Spherical interpolation per example: [K] weights -> [K, B, ...]."""
  flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
  cos = jnp.sum(flat0 * flat1, -1) / (jnp.linalg.norm(flat0, axis=-1) * jnp.linalg.norm(flat1, axis=-1))
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # [B]
  w = jnp.asarray(weights)[:, None]
  sin = jnp.sin(omega)
  # Parallel latents: sin(omega) = 0, fall back to linear interpolation.
  safe = sin > 1e-6
  c0 = jnp.where(safe, jnp.sin((1 - w) * omega) / jnp.where(safe, sin, 1.0), 1 - w)
  c1 = jnp.where(safe, jnp.sin(w * omega) / jnp.where(safe, sin, 1.0), w)
  expand = lambda c: c.reshape(c.shape + (1,) * (z0.ndim - 1))  # [K, B] -> [K, B, 1, ...]
  return expand(c0) * z0[None] + expand(c1) * z1[None]


def get_ode_interpolator(sde: sde_lib.SDE, rtol: float = 1e-5, atol: float = 1e-5,
                         eps: float = 1e-3, method: str = 'dopri5', spherical: bool = True):
  """Interpolation through probability-flow ODE latents.

  Returns `interpolate(score_fn, x0, x1, weights) -> (images [K, B, ...], nfe)`:
  x0, x1: [B, ...] data; weights: [K] in [0, 1] (0 gives x0 back, 1 gives x1, up to the
  ODE tolerances). Latents are interpolated spherically (they are near-Gaussian with
  norm ~ sigma(T) sqrt(dim)) or linearly with `spherical=False`.
  """
  encode = sampling.get_ode_encoder(sde, rtol=rtol, atol=atol, eps=eps, method=method)

  def interpolate(score_fn, x0, x1, weights):
    if x0.shape != x1.shape:
      raise ValueError(f'x0 and x1 must have equal shapes; got {x0.shape} and {x1.shape}.')
    weights = jnp.asarray(weights, jnp.float32).reshape(-1)
    z, nfe_enc = encode(score_fn, jnp.concatenate([x0, x1]))
    z0, z1 = z[:x0.shape[0]], z[x0.shape[0]:]
    if spherical:
      zs = slerp(z0, z1, weights)
    else:
      w = weights.reshape((-1,) + (1,) * z0.ndim)
      zs = (1 - w) * z0[None] + w * z1[None]
    flat = zs.reshape((-1,) + x0.shape[1:])
    decoder = sampling.get_ode_sampler(sde, flat.shape, denoise=False, rtol=rtol, atol=atol,
                                       eps=eps, method=method)
    images, nfe_dec = decoder(jax.random.PRNGKey(0), score_fn, flat)
    return images.reshape(zs.shape), nfe_enc + nfe_dec

  return interpolate
