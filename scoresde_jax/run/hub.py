"""A diffusers NCSN++ folder (the Hugging Face Hub's `google/ncsnpp-*`) as a config and params.

The folder decides the network and the SDE: `scoresde_jax.diffusers_weights` reads the
UNet2DModel's config and the ScoreSdeVeScheduler's; this module writes those values into a
config (the user's, or this checkout's CelebA-HQ 256 NCSN++ config for the rest: optimizer,
evaluation, data pipeline), so that every run and sampler reads them as usual.
"""
from __future__ import annotations

import os

import ml_collections

from scoresde_jax import diffusers_weights, errors
from scoresde_jax.run import convert, networks

# The rest of the settings (training, evaluation) when no config is given: the Hub models
# are the official VE NCSN++ checkpoints, of this family.
BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 've', 'celebahq_256_ncsnpp_continuous.py')


def diffusers_config(folder: str, base: ml_collections.ConfigDict | None = None
                     ) -> ml_collections.ConfigDict:
  """`base` (default: BASE_CONFIG) with the network, data shape and SDE of the folder."""
  if base is None:
    if not os.path.isfile(BASE_CONFIG):
      raise errors.ConfigError(f'No config given and no {BASE_CONFIG} (the library is used '
                               'outside its checkout): pass config=<a configs/ve/*ncsnpp*.py '
                               'file> for the settings the folder does not hold.')
    base = convert.load_config_file(BASE_CONFIG)
  unet = diffusers_weights.read_unet_config(folder)
  values = base.to_dict()  # a plain copy: the folder's values replace the base's, types too
  model, data = values['model'], values['data']
  model.update({k: v for k, v in diffusers_weights.ncsnpp_fields(unet).items() if k != 'centered'},
               name='ncsnpp')
  data.update(diffusers_weights.data_fields(unet))
  values['training'].update(sde='vesde', continuous=True)
  scheduler = diffusers_weights.read_scheduler_config(folder)
  if scheduler is not None:
    sde = diffusers_weights.scheduler_fields(scheduler)
    model.update({k: sde[k] for k in ('sigma_min', 'sigma_max', 'num_scales')})
    values['sampling'].update(snr=sde['snr'], n_steps_each=sde['n_steps_each'],
                              eps=sde['sampling_eps'])
  config = ml_collections.ConfigDict(values)
  return config


def import_diffusers(folder: str, base: ml_collections.ConfigDict | None = None):
  """(config, params) of a diffusers NCSN++ folder; see `diffusers_config`."""
  config = diffusers_config(folder, base)
  model = networks.get_model(config)
  size = int(config.data.image_size)
  params = diffusers_weights.load_params(folder, model, (size, size,
                                                         int(config.data.num_channels)))
  return config, params
