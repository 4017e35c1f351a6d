"""Samplers with the exact score of Gaussian mixtures: samples must follow the mixture.

Statistics (see `mixture_stats`): samples are assigned to components by their posterior,
then the same statistics are computed on 400,000 exact samples of the mixture, so that what
overlapping tails do to the assignment cancels out; the comparison is then limited only by
the sampler's error and by the sample size:
  * weight error: |fraction in k - exact fraction|. With n = 4,000 samples its std is
    sqrt(w (1 - w) / n) <= 0.008; tolerance 0.03 (about 4 sigma).
  * variance ratio: per-dimension sample variance / true variance, averaged over dimensions,
    for each component. With ~1,300 samples per component the ratio of one dimension has
    relative std sqrt(2 / 1300) = 0.04; in 2-D the average has std 0.028, tolerance 0.1;
    in 16-D it has std 0.01, tolerance 0.05 (0.07 with a Langevin corrector, whose finite
    step at snr 0.16 inflates the variance by a few percent).
  * mean error: |sample mean - mu_k| / std_k, std 0.03 per dimension; tolerance 0.15.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde_jax import gmm, sampling, sde_lib

N_SAMPLES = 4000
VE = sde_lib.VESDE(0.01, 50.0, 1000)
VP = sde_lib.VPSDE(0.1, 20.0, 1000)
SUBVP = sde_lib.subVPSDE(0.1, 20.0, 1000)
EPS = {VE: 1e-5, VP: 1e-3, SUBVP: 1e-3}


def mixture_stats(mixture, x):
  """Per component k of the posterior assignment: fraction, mean variance / true variance,
  and mean in units of the true std."""
  x = np.asarray(x)
  labels = np.argmax(np.asarray(mixture.posterior(jnp.asarray(x))), axis=-1)
  fractions = np.bincount(labels, minlength=mixture.num_components) / len(x)
  var_ratio = np.array([(x[labels == k].var(0) / mixture.variances[k]).mean()
                        for k in range(mixture.num_components)])
  means = np.stack([x[labels == k].mean(0) / np.sqrt(mixture.variances[k])
                    for k in range(mixture.num_components)])
  return fractions, var_ratio, means


@functools.lru_cache(maxsize=None)
def exact_stats(mixture):
  return mixture_stats(mixture, mixture.sample(jax.random.PRNGKey(12345), 400_000)[0])


def check(mixture, x, var_tol):
  assert np.all(np.isfinite(np.asarray(x)))
  fractions, var_ratio, means = mixture_stats(mixture, x)
  exact_fractions, exact_ratio, exact_means = exact_stats(mixture)
  assert np.abs(fractions - exact_fractions).max() < 0.03, (fractions, exact_fractions)
  assert np.all(np.abs(var_ratio - exact_ratio) < var_tol), (var_ratio, exact_ratio)
  assert np.abs(means - exact_means).max() < 0.15, (means, exact_means)


# (predictor, corrector, n_steps, probability_flow): the paper's Table 1 samplers.
PAPER_SAMPLERS = [
    ('euler_maruyama', 'none', 1, False),
    ('reverse_diffusion', 'none', 1, False),  # P1000
    ('ancestral_sampling', 'none', 1, False),  # P1000, ancestral
    ('reverse_diffusion', 'langevin', 1, False),  # PC1000
    ('none', 'langevin', 2, False),  # C2000
    ('reverse_diffusion', 'none', 1, True),  # probability flow, discretized
]


MIX2 = gmm.random_mixture(0, 2, 3)
MIX2B = gmm.random_mixture(3, 2, 3)
MIX16 = gmm.random_mixture(3, 16, 3)


def _cases():
  for sde in (VE, VP, SUBVP):
    for p, c, n, pf in PAPER_SAMPLERS:
      if p == 'ancestral_sampling' and isinstance(sde, sde_lib.subVPSDE):
        continue
      yield pytest.param(sde, p, c, n, pf, id=f'{type(sde).__name__}-{p}-{c}{"-pf" if pf else ""}')


@pytest.mark.parametrize('sde,predictor,corrector,n_steps,pf', list(_cases()))
def test_pc_samplers_2d(sde, predictor, corrector, n_steps, pf):
  mixture = MIX2
  sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor, corrector, snr=0.16,
                                    n_steps=n_steps, probability_flow=pf, eps=EPS[sde])
  x, nfe = sampler(jax.random.PRNGKey(1), mixture.score_fn(sde))
  check(mixture, x, var_tol=0.1)
  per_step = (predictor != 'none') + (corrector != 'none') * n_steps
  assert nfe == sde.N * per_step


def test_annealed_langevin_corrector_smld():
  """C2000 of SMLD (annealed Langevin) for VE. At snr 0.16 the ALD chain is over-dispersed by
  its step size (~10% variance here), so the variance tolerance is 0.15 instead of 0.1."""
  mixture = MIX2
  sampler = sampling.get_pc_sampler(VE, (N_SAMPLES, 2), 'none', 'ald', snr=0.16, n_steps=2,
                                    eps=EPS[VE])
  x, nfe = sampler(jax.random.PRNGKey(1), mixture.score_fn(VE))
  check(mixture, x, var_tol=0.15)
  assert nfe == 2 * VE.N


@pytest.mark.parametrize('sde', [VE, VP, SUBVP], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize('predictor,corrector', [('reverse_diffusion', 'langevin'),
                                                 ('euler_maruyama', 'none')])
def test_pc_samplers_16d(sde, predictor, corrector):
  mixture = MIX16
  sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 16), predictor, corrector, snr=0.16,
                                    eps=EPS[sde])
  x, _ = sampler(jax.random.PRNGKey(2), mixture.score_fn(sde))
  check(mixture, x, var_tol=0.07 if corrector == 'langevin' else 0.05)


@pytest.mark.parametrize('sde', [VE, VP, SUBVP], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize('dim', [2, 16])
def test_ode_sampler(sde, dim):
  mixture = MIX2B if dim == 2 else MIX16
  sampler = sampling.get_ode_sampler(sde, (N_SAMPLES, dim), eps=EPS[sde])
  x, nfe = sampler(jax.random.PRNGKey(2), mixture.score_fn(sde))
  check(mixture, x, var_tol=0.1 if dim == 2 else 0.05)
  assert 20 < int(nfe) < 1000


@pytest.mark.parametrize('method,tol', [('dopri5', 1e-3), ('dopri5', 1e-5), ('tsit5', 1e-3),
                                        ('bosh3', 1e-3), ('heun', 1e-3)])
def test_ode_nfe_is_the_true_number_of_score_evaluations(method, tol):
  mixture = gmm.random_mixture(0, 2, 2)
  exact = mixture.score_fn(VP)
  calls = []

  def counting_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  sampler = sampling.get_ode_sampler(VP, (8, 2), denoise=True, eps=1e-3, method=method,
                                     rtol=tol, atol=tol)
  _, nfe = sampler(jax.random.PRNGKey(0), counting_score)
  jax.effects_barrier()
  assert int(nfe) == len(calls)


def test_ode_encode_decode_round_trip():
  mixture = gmm.random_mixture(0, 4, 3)
  x, _ = mixture.sample(jax.random.PRNGKey(0), 16)
  for sde in (VE, VP):
    score = mixture.score_fn(sde)
    encode = sampling.get_ode_encoder(sde, rtol=1e-6, atol=1e-6)
    decode = sampling.get_ode_sampler(sde, x.shape, rtol=1e-6, atol=1e-6)
    z, _ = encode(score, x)
    # The latent is a prior sample: its scale is the prior's.
    assert 0.5 < float(jnp.std(z)) / float(jnp.std(sde.prior_sampling(jax.random.PRNGKey(1), z.shape))) < 1.5
    x_back, _ = decode(jax.random.PRNGKey(1), score, z)
    np.testing.assert_allclose(x_back, x, atol=3e-3 * float(jnp.abs(x).max()))


def test_trajectory_records_requested_steps():
  mixture = gmm.random_mixture(0, 2, 2)
  sde = sde_lib.VPSDE(0.1, 20.0, 100)
  steps = [0, 50, 99]
  sampler = sampling.get_pc_sampler(sde, (256, 2), 'reverse_diffusion', 'none',
                                    trajectory_steps=steps)
  x, nfe, traj = sampler(jax.random.PRNGKey(0), mixture.score_fn(sde))
  assert traj.shape == (3, 256, 2)
  np.testing.assert_array_equal(traj[-1], x)  # the last step's mean is the denoised sample
  stds = [float(jnp.std(traj[i])) for i in range(3)]
  assert abs(stds[0] - 1.0) < 0.15  # still near the N(0, 1) prior after one step
  assert stds[2] > 2.5  # the mixture's spread


def test_denoise_returns_the_last_mean():
  mixture = gmm.random_mixture(0, 2, 2)
  sde = sde_lib.VPSDE(0.1, 20.0, 50)
  common = dict(predictor='euler_maruyama', corrector='none', eps=1e-3)
  noisy, _ = sampling.get_pc_sampler(sde, (16, 2), denoise=False, **common)(
      jax.random.PRNGKey(0), mixture.score_fn(sde))
  clean, _ = sampling.get_pc_sampler(sde, (16, 2), denoise=True, **common)(
      jax.random.PRNGKey(0), mixture.score_fn(sde))
  diff = np.asarray(noisy - clean)
  # the final Euler-Maruyama noise: diffusion(eps) * sqrt(1/N) * z
  g = float(sde.sde(jnp.zeros((1, 2)), jnp.full((1,), 1e-3))[1][0])
  assert 0.3 * g / np.sqrt(50) < diff.std() < 3 * g / np.sqrt(50)


def test_registry_and_errors():
  @sampling.register_predictor('test_identity', nfe=0)
  def identity(rng, x, t, sde, score_fn, probability_flow=False):
    return x, x

  sampler = sampling.get_pc_sampler(VP, (4, 2), 'test_identity', 'none', denoise=False)
  x, nfe = sampler(jax.random.PRNGKey(0), lambda x, t: x)
  np.testing.assert_array_equal(x, VP.prior_sampling(jax.random.split(jax.random.PRNGKey(0))[1], (4, 2)))
  assert nfe == 0
  with pytest.raises(ValueError, match="Unknown predictor 'reverse_difusion'"):
    sampling.get_pc_sampler(VP, (4, 2), 'reverse_difusion', 'none')
  with pytest.raises(ValueError, match='Unknown corrector'):
    sampling.get_pc_sampler(VP, (4, 2), 'none', 'langevn')
  with pytest.raises(ValueError, match='probability-flow'):
    sampling.get_pc_sampler(VP, (4, 2), 'ancestral_sampling', 'none', probability_flow=True)
  with pytest.raises(ValueError, match='VESDE and VPSDE'):
    sampling.get_pc_sampler(SUBVP, (4, 2), 'ancestral_sampling', 'none')(
        jax.random.PRNGKey(0), lambda x, t: x)
  with pytest.raises(ValueError, match='Unknown ODE method'):
    sampling.get_ode_sampler(VP, (4, 2), method='rk45')
