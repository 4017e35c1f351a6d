"""Gaussian mixtures with diagonal covariances: exact scores and densities at every t.

Under any of our SDEs the perturbation kernel is x_t = a(t) x_0 + s(t) z, so a mixture
sum_k w_k N(mu_k, diag(v_k)) stays a mixture, sum_k w_k N(a mu_k, diag(a^2 v_k + s^2)).
That gives the exact score of p_t, which lets samplers, likelihoods and losses be
checked against closed-form answers instead of trained networks.

Points are flat vectors `x: [B, D]`; `score_fn` also accepts `[B, ...]` and reshapes.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: arrays are not hashable
class GaussianMixture:
  """Mixture of K diagonal Gaussians in D dimensions (numpy arrays, so it stays hashable)."""

  weights: np.ndarray  # [K], sums to 1
  means: np.ndarray  # [K, D]
  variances: np.ndarray  # [K, D]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def num_components(self) -> int:
    return self.means.shape[0]

  def sample(self, rng, n: int):
    """Returns (x: [n, D], component labels: [n])."""
    k_rng, z_rng = jax.random.split(rng)
    labels = jax.random.categorical(k_rng, jnp.log(jnp.asarray(self.weights)), shape=(n,))
    z = jax.random.normal(z_rng, (n, self.dim))
    means = jnp.asarray(self.means)[labels]
    stds = jnp.sqrt(jnp.asarray(self.variances))[labels]
    return means + stds * z, labels

  def _scale(self, sde, t):
    """a(t) and s(t) of the kernel x_t = a x_0 + s z, each [B]."""
    mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
    return mean[:, 0], jnp.broadcast_to(std, t.shape)

  def _component_logpdf(self, x, a, s):
    """log N(x; a mu_k, a^2 v_k + s^2) for every component: [B, K]."""
    mu = a[:, None, None] * jnp.asarray(self.means)[None]
    var = a[:, None, None] ** 2 * jnp.asarray(self.variances)[None] + s[:, None, None] ** 2
    diff = x[:, None, :] - mu
    return -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1), diff, var

  def posterior(self, x, a=None, s=None):
    """Component responsibilities p(k | x_t): [B, K] (at t = 0 when a, s are None)."""
    a = jnp.ones(x.shape[:1]) if a is None else a
    s = jnp.zeros(x.shape[:1]) if s is None else s
    logp, _, _ = self._component_logpdf(x, a, s)
    return jax.nn.softmax(logp + jnp.log(jnp.asarray(self.weights)), axis=-1)

  def logpdf(self, x):
    """log p_0(x): [B]."""
    logp, _, _ = self._component_logpdf(x, jnp.ones(x.shape[:1]), jnp.zeros(x.shape[:1]))
    return jax.nn.logsumexp(logp + jnp.log(jnp.asarray(self.weights)), axis=-1)

  def marginal_logpdf(self, sde, x, t):
    """log p_t(x) under `sde`: [B]."""
    a, s = self._scale(sde, t)
    logp, _, _ = self._component_logpdf(x, a, s)
    return jax.nn.logsumexp(logp + jnp.log(jnp.asarray(self.weights)), axis=-1)

  def score_fn(self, sde):
    """The exact score grad_x log p_t(x) of the mixture diffused by `sde`."""

    def score(x, t):
      shape = x.shape
      x = x.reshape(shape[0], -1)
      a, s = self._scale(sde, t)
      logp, diff, var = self._component_logpdf(x, a, s)
      resp = jax.nn.softmax(logp + jnp.log(jnp.asarray(self.weights)), axis=-1)
      return jnp.sum(resp[..., None] * (-diff / var), axis=1).reshape(shape)

    return score


def random_mixture(seed: int, dim: int, num_components: int, spread: float = 4.0,
                   min_std: float = 0.3, max_std: float = 1.0) -> GaussianMixture:
  """A reproducible mixture with unequal weights and well separated components."""
  rs = np.random.RandomState(seed)
  weights = rs.uniform(1.0, 3.0, num_components)
  means = rs.normal(size=(num_components, dim))
  means *= spread * math.sqrt(num_components) / np.linalg.norm(means, axis=-1, keepdims=True)
  variances = rs.uniform(min_std, max_std, (num_components, dim)) ** 2
  return GaussianMixture(weights / weights.sum(), means, variances)
