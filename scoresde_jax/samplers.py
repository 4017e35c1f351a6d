"""One sampler specification and the one way from it to a sampler.

A `SamplerSpec` names a sampler and all its settings (what `config.sampling` or one entry of
`config.eval.sweep` says); `build(spec, sde, shape, sharding)` turns it into a `Sampler`,
one compiled program per call. Every caller builds its samplers here: training snapshots,
evaluation sweeps, `--mode sample`, inpainting and colorization, notebooks and benchmarks,
so they all integrate to the same end time `eps` and shard the batch the same way.

Methods:
  'pc'    predictor-corrector (`sampling.get_pc_sampler`) over `num_scales` steps;
  'ode'   adaptive probability-flow ODE solve (`sampling.get_ode_sampler`);
  a fast solver of `fast_solvers` ('ddim', 'dpm_solver_1', 'dpm_solver_2m',
          'dpm_solver_3m', 'heun') with its options in `fast` (`steps` required).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

from scoresde_jax import fast_solvers, sampling, sde_lib

METHODS = ('pc', 'ode')


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """What to sample with; immutable, comparable, and valid once constructed.

  Attributes:
    method: 'pc', 'ode' or a fast solver's name (`fast_solvers.fast_sampler_names()`).
    predictor, corrector, snr, n_steps_each: the PC sampler's updates ('none' switches one
      off), the Langevin signal-to-noise ratio and corrector steps per noise level.
    probability_flow: PC predicts with the probability-flow ODE instead of the reverse SDE.
    noise_removal: PC and ODE end with the last update's mean (PC) or one reverse-diffusion
      step (ODE), as the paper's samplers do.
    num_scales: time steps of PC's discretization (the sampler's SDE has N = num_scales; the
      score network keeps the SDE it was trained with); None: the SDE's own N.
    eps: end time of sampling; None: the paper's for the SDE (`sde_lib.sampling_eps`).
    rtol, atol, ode_method: the ODE solve's tolerances and diffrax solver.
    fast: the fast solver's options as (name, value) pairs, e.g. (('steps', 20),); a dict
      is accepted and stored sorted.
  """
  method: str = 'pc'
  predictor: str = 'reverse_diffusion'
  corrector: str = 'langevin'
  snr: float = 0.16
  n_steps_each: int = 1
  probability_flow: bool = False
  noise_removal: bool = True
  num_scales: int | None = None
  eps: float | None = None
  rtol: float = 1e-5
  atol: float = 1e-5
  ode_method: str = 'dopri5'
  fast: tuple = ()

  def __post_init__(self):
    fast = self.fast.items() if isinstance(self.fast, Mapping) else self.fast
    object.__setattr__(self, 'fast', tuple(sorted((str(k), v) for k, v in fast)))
    object.__setattr__(self, 'method', str(self.method).lower())
    method = self.method
    if method not in METHODS and method not in fast_solvers.fast_sampler_names():
      raise ValueError(f'Unknown sampling method {self.method!r}; expected one of '
                       f'{list(METHODS) + fast_solvers.fast_sampler_names()}.')
    if self.num_scales is not None and int(self.num_scales) < 1:
      raise ValueError(f'num_scales={self.num_scales} must be at least 1.')
    if self.eps is not None and not float(self.eps) > 0:
      raise ValueError(f'eps={self.eps} must be positive.')
    if method == 'pc':
      sampling.get_predictor(self.predictor)  # unknown names fail here, with the registered ones
      sampling.get_corrector(self.corrector)
      if self.n_steps_each < 0:
        raise ValueError(f'n_steps_each={self.n_steps_each} must be >= 0.')
      if self.probability_flow and self.predictor.lower() == 'ancestral_sampling':
        raise ValueError('Ancestral sampling has no probability-flow form.')
    elif method == 'ode':
      sampling.check_ode_method(self.ode_method)
    else:
      self._check_fast_options()

  def _check_fast_options(self):
    options = dict(self.fast)
    if 'steps' not in options:
      raise ValueError(f'Fast sampler {self.method!r} needs the number of steps in its options '
                       "(fast={'steps': ...}).")
    if 'eps' in options:
      raise ValueError("The end time is the spec's own eps, not an option of the fast solver.")
    builder = fast_solvers.get_fast_sampler_builder(self.method)
    # Options the name fixes (the order of 'dpm_solver_2m') are not the user's to set.
    fixed = set(getattr(builder, 'keywords', {})) | {'sde', 'shape', 'eps', 'sharding'}
    allowed = set(inspect.signature(builder).parameters) - fixed
    unknown = sorted(set(options) - allowed)
    if unknown:
      raise ValueError(f'Unknown options {unknown} of fast sampler {self.method!r}; it takes '
                       f'{sorted(allowed)}.')

  def as_dict(self) -> dict:
    """Plain values (JSON-ready): the fields, with `fast` as a dict."""
    out = dataclasses.asdict(self)
    out['fast'] = dict(self.fast)
    return out


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A built sampler: `sampler(rng, score_fn, **inputs) -> (samples, nfe)`.

  `inputs` are the method's own: `replacement` (PC: a `sampling.Replacement`), `z` (ODE: a
  latent to decode), `x_init` (fast solvers: the prior sample). With trajectory steps (PC
  only) the result is `(samples, nfe, trajectory)`.
  """
  spec: SamplerSpec
  sde: sde_lib.SDE  # the sampler's SDE (N = spec.num_scales)
  shape: tuple
  eps: float
  sharding: Any
  fn: Callable

  def __call__(self, rng, score_fn, **inputs):
    return self.fn(rng, score_fn, **inputs)


def build(spec: SamplerSpec, sde: sde_lib.SDE, shape: Sequence[int], sharding=None,
          trajectory_steps: Sequence[int] | None = None) -> Sampler:
  """The sampler of `spec` for the SDE a score model was trained with.

  Args:
    spec: what to sample with.
    sde: the training SDE; PC runs on a copy with N = spec.num_scales.
    shape: `[B, ...]` of the samples.
    sharding: optional `jax.sharding.Sharding` of the batch (e.g. `parallel.data_sharding`).
    trajectory_steps: PC only: steps at which to record the diffusion (see
      `sampling.get_pc_sampler`).
  """
  shape = tuple(int(s) for s in shape)
  if spec.num_scales is not None and int(spec.num_scales) != sde.N:
    sde = dataclasses.replace(sde, N=int(spec.num_scales))
  eps = sde_lib.sampling_eps(sde) if spec.eps is None else float(spec.eps)
  if trajectory_steps is not None and spec.method != 'pc':
    raise ValueError(f'Trajectories are recorded by the PC sampler only, not by {spec.method!r}.')
  if spec.method == 'pc':
    fn = sampling.get_pc_sampler(sde, shape, spec.predictor, spec.corrector, float(spec.snr),
                                 int(spec.n_steps_each), probability_flow=bool(spec.probability_flow),
                                 denoise=bool(spec.noise_removal), eps=eps,
                                 trajectory_steps=trajectory_steps, sharding=sharding)
  elif spec.method == 'ode':
    fn = sampling.get_ode_sampler(sde, shape, denoise=bool(spec.noise_removal),
                                  rtol=float(spec.rtol), atol=float(spec.atol), eps=eps,
                                  method=spec.ode_method, sharding=sharding)
  else:
    fn = fast_solvers.get_fast_sampler(spec.method, sde, shape, eps=eps, sharding=sharding,
                                       **dict(spec.fast))
  return Sampler(spec, sde, shape, eps, sharding, fn)
