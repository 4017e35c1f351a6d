"""The sampler settings an evaluation compares: config.sampling, a list, or the paper's Table 1.

A setting is a plain dict: a `name` (used in file names), the fields of a
`samplers.SamplerSpec` (see `setup.SAMPLER_KEYS`) and, for a class-conditional model, its
classifier-free `guidance_scale` (what the sampler follows rather than how it steps, so a
sweep can compare scales); `normalize_setting` fills in every field from config.sampling, so
results files record exactly what ran. `setup.get_sampler(config,
shape, sharding, overrides=setting_overrides(setting))` builds its sampler, the same way every
other entry point builds one.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from scoresde_jax import errors, sde_lib
from scoresde_jax.run import setup

_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.+=-]*')
# The one setting key that is not a SamplerSpec field: it changes the score, not the sampler.
GUIDANCE_KEY = 'guidance_scale'
WHERE = 'config.eval.sweep'


def _default_name(spec) -> str:
  if spec.method == 'pc':
    name = f'pc_{spec.predictor}_{spec.corrector}'
    return name + '_pf' if spec.probability_flow else name
  return spec.method


def normalize_setting(config, setting: Mapping[str, Any] | None = None) -> dict:
  """A complete sampler setting: `setting`'s entries over the defaults of config.sampling.

  Returns {'name', **SamplerSpec fields}; `num_scales` (steps of the sampler's SDE
  discretization) defaults to model.num_scales, `eps` to None (the paper's for the SDE).

  Raises:
    errors.ConfigError: unknown keys, predictor or corrector names, or a name unfit for a
      file name.
  """
  setting = dict(setup.plain(setting) if setting is not None else {})
  name = setting.pop('name', None)
  if name is None and setting:
    raise errors.ConfigError(f'Sampler setting {setting} needs a name '
                             '(e.g. "P1000_reverse_diffusion").')
  guidance_scale = setting.pop(GUIDANCE_KEY, None)
  spec = setup.sampler_spec(config, setting, WHERE if setting else 'config.sampling')
  if name is None:
    name = _default_name(spec)
  name = str(name)
  if not _NAME_RE.fullmatch(name):
    raise errors.ConfigError(f'Sampler setting name {name!r} must be usable as a file name: '
                             'letters, digits and _ . + = - only, starting with a letter or digit.')
  normalized = {'name': name, **spec.as_dict()}
  if setup.class_count(config):
    if guidance_scale is None:
      guidance_scale = config.sampling.get(GUIDANCE_KEY, 0.0)
    try:
      normalized[GUIDANCE_KEY] = float(guidance_scale)
    except (TypeError, ValueError):
      raise errors.ConfigError(f'Sampler setting {name}: {GUIDANCE_KEY}={guidance_scale!r} '
                               'must be a number.') from None
  elif guidance_scale:
    raise errors.ConfigError(f'Sampler setting {name}: {GUIDANCE_KEY} needs a class-conditional '
                             'model (config.model.num_classes > 0 with model.name ncsnpp or '
                             'ddpm).')
  return normalized


def setting_overrides(setting: Mapping[str, Any]) -> dict:
  """The SamplerSpec fields of a normalized setting (for `setup.get_sampler`)."""
  return {k: v for k, v in setting.items() if k not in ('name', GUIDANCE_KEY)}


def setting_guidance_scale(setting: Mapping[str, Any]) -> float | None:
  """The guidance scale of a normalized setting (None: an unconditional model's)."""
  return setting.get(GUIDANCE_KEY)


def paper_table1_sweep(config) -> list[dict]:
  """The sampler comparisons of the paper's Table 1 for the config's SDE.

  With N = model.num_scales (1000 for the paper's models): P<N> and P<2N> (predictor only),
  C<2N> (corrector only, 2N steps of the configured corrector, Langevin by default) and PC<N>
  (one predictor and one corrector step per noise level), for the predictors ancestral
  sampling (not for sub-VP, whose discretization has no ancestral form), reverse diffusion
  and probability flow (the reverse-diffusion discretization of the probability-flow ODE).
  P<2N> and C<2N> discretize the SDE with 2N steps; models trained with N discrete noise
  levels then see the nearest trained level. snr is config.sampling.snr.
  """
  sde = setup.get_sde(config)
  n = int(config.model.num_scales)
  corrector = config.sampling.get('corrector', 'langevin')
  if str(corrector).lower() == 'none':
    corrector = 'langevin'
  predictors = [('ancestral_sampling', 'ancestral_sampling', False),
                ('reverse_diffusion', 'reverse_diffusion', False),
                ('probability_flow', 'reverse_diffusion', True)]
  if isinstance(sde, sde_lib.subVPSDE):
    predictors = predictors[1:]
  sweep = []
  for steps in (n, 2 * n):
    for label, predictor, pf in predictors:
      sweep.append({'name': f'P{steps}_{label}', 'method': 'pc', 'predictor': predictor,
                    'corrector': 'none', 'probability_flow': pf, 'num_scales': steps})
  sweep.append({'name': f'C{2 * n}', 'method': 'pc', 'predictor': 'none',
                'corrector': corrector, 'n_steps_each': 1, 'num_scales': 2 * n})
  for label, predictor, pf in predictors:
    sweep.append({'name': f'PC{n}_{label}', 'method': 'pc', 'predictor': predictor,
                  'corrector': corrector, 'n_steps_each': 1, 'probability_flow': pf,
                  'num_scales': n})
  return sweep


def get_sweep(config) -> list[dict]:
  """The sampler settings to evaluate, normalized (see `normalize_setting`).

  config.eval.sweep, when present, is a list of settings (dicts) or its JSON text, or 'table1'
  for `paper_table1_sweep(config)`; without it (or when None / empty), the single setting of
  config.sampling.
  """
  spec = config.eval.get('sweep', None)
  if isinstance(spec, str) and spec.lstrip().startswith('['):
    try:  # a list given on the command line: --config.eval.sweep='[{"name": ...}]'
      spec = json.loads(spec)
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f'eval.sweep is not valid JSON: {e}') from None
  if spec is None or (isinstance(spec, (list, tuple, str)) and not spec):
    return [normalize_setting(config)]
  if isinstance(spec, str):
    if spec.lower() != 'table1':
      raise errors.ConfigError(f"eval.sweep={spec!r}: give a list of sampler settings or "
                               "'table1'.")
    spec = paper_table1_sweep(config)
  if not isinstance(spec, (list, tuple)):
    raise errors.ConfigError(f'eval.sweep must be a list of sampler settings (dicts), got '
                             f'{type(spec).__name__}.')
  sweep = [normalize_setting(config, s) for s in spec]
  names = [s['name'] for s in sweep]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise errors.ConfigError(f'eval.sweep has duplicate setting names {duplicates}.')
  return sweep
