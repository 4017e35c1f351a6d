"""`python main.py --mode sample --config CONFIG --workdir DIR`: a grid of samples of a run."""
from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from scoresde_jax import errors, parallel
from scoresde_jax.run import data, evaluate, files, images, pretrained, setup

log = logging.getLogger(__name__)


def get_sampler(config, mesh, num_samples: int):
  """The sampler of `sample`: config.sampling in batches of eval.batch_size (at most
  num_samples), rounded up to a multiple of the device count."""
  batch = min(int(config.eval.batch_size), num_samples)
  batch = -(-batch // mesh.size) * mesh.size
  shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
  return setup.get_sampler(config, shape, parallel.data_sharding(mesh))


def sample(config, workdir: str, eval_folder: str = 'eval', ckpt: int | None = None,
           num_samples: int = 64, seed: int | None = None) -> dict:
  """Samples with config.sampling from snapshot `ckpt` (or the newest checkpoint).

  Writes WORKDIR/EVAL_FOLDER/samples_step_<step>.png (a grid) and .npz (uint8 `samples`
  [num_samples, H, W, C]). Batches of eval.batch_size (at most), rounded up to a multiple of
  the device count. Returns {'step', 'png', 'npz', 'nfe'}.
  """
  mesh = parallel.make_mesh()
  if num_samples < 1:
    raise errors.ConfigError(f'num_samples={num_samples} must be positive.')
  step = None if ckpt is None else evaluate.checkpoint_step(config, ckpt)
  model = pretrained.load(workdir, config, step=step)
  step = model.step
  sampler = get_sampler(config, mesh, num_samples)
  batch = sampler.shape[0]
  ema_params = jax.device_put(model.params, parallel.replicated(mesh))
  score_fn = setup.get_score_fn(config, model.sde, model.model, ema_params)
  rng = jax.random.PRNGKey(config.seed + 2 if seed is None else seed)
  inverse_scaler = data.get_data_inverse_scaler(config)
  out, nfe = [], None
  for r in range(math.ceil(num_samples / batch)):
    samples, nfe = sampler(jax.random.fold_in(rng, r), score_fn)
    out.append(parallel.gather(samples))
  samples = np.clip(inverse_scaler(np.concatenate(out)[:num_samples]), 0.0, 1.0)
  eval_dir = os.path.join(workdir, eval_folder)
  png = os.path.join(eval_dir, f'samples_step_{step}.png')
  npz = os.path.join(eval_dir, f'samples_step_{step}.npz')
  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    images.save_grid(samples, png, nrow=int(math.ceil(math.sqrt(num_samples))),
                     scale=max(1, 128 // int(config.data.image_size)))
    files.write_npz(npz, samples=images.to_uint8(samples))
    log.info('Wrote %d samples of step %d to %s and %s.', num_samples, step, png, npz)
  return {'step': step, 'png': png, 'npz': npz, 'nfe': float(nfe)}
