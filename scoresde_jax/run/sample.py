"""`python main.py --mode sample --config CONFIG --workdir DIR`: a grid of samples of a run."""
from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from scoresde_jax import errors, files, parallel
from scoresde_jax.run import evaluate, images, pretrained, setup

log = logging.getLogger(__name__)


def get_sampler(config, mesh, num_samples: int):
  """The sampler of `sample`: config.sampling in batches of eval.batch_size (at most
  num_samples), rounded up to a multiple of the device count."""
  batch = min(int(config.eval.batch_size), num_samples)
  batch = -(-batch // mesh.size) * mesh.size
  shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)
  return setup.get_sampler(config, shape, parallel.data_sharding(mesh))


def sample(config, workdir: str, eval_folder: str = 'eval', ckpt: int | None = None,
           num_samples: int = 64, seed: int | None = None,
           checkpoint: str | None = None) -> dict:
  """Samples with config.sampling from snapshot `ckpt` (or the newest checkpoint) of the run
  in `workdir`, or from `checkpoint`: anything `pretrained.load` reads (an official `.pth` or
  JAX file, a diffusers folder, an export, another run).

  Writes, under WORKDIR/EVAL_FOLDER, samples_<tag>/ (one PNG per sample, 000000.png, ...),
  samples_<tag>.npz (uint8 `samples` [num_samples, H, W, C]) and samples_<tag>.png (a grid);
  the tag is step_<step>, or the checkpoint's name where it records no step. Batches of
  eval.batch_size (at most), rounded up to a multiple of the device count.
  Returns {'step', 'folder', 'png', 'npz', 'nfe'}.
  """
  mesh = parallel.make_mesh()
  if num_samples < 1:
    raise errors.ConfigError(f'num_samples={num_samples} must be positive.')
  if checkpoint is not None:
    model = pretrained.load(checkpoint, config)
  else:
    model = pretrained.load(workdir, config,
                            step=None if ckpt is None else evaluate.checkpoint_step(config, ckpt))
  config = model.config  # a diffusers folder's network and SDE replace the config's
  step = model.step
  tag = (f'step_{step}' if step is not None
         else os.path.basename(os.path.normpath(checkpoint)).split('.')[0])
  sampler = get_sampler(config, mesh, num_samples)
  batch = sampler.shape[0]
  ema_params = jax.device_put(model.params, parallel.replicated(mesh))
  score_fn = setup.get_score_fn(config, model.sde, model.model, ema_params)
  rng = jax.random.PRNGKey(config.seed + 2 if seed is None else seed)
  out, nfe = [], None
  for r in range(math.ceil(num_samples / batch)):
    samples, nfe = sampler(jax.random.fold_in(rng, r), score_fn)
    out.append(parallel.gather(samples))
  samples = np.clip(model.inverse_scaler(np.concatenate(out)[:num_samples]), 0.0, 1.0)
  eval_dir = os.path.join(workdir, eval_folder)
  folder = os.path.join(eval_dir, f'samples_{tag}')
  png, npz = folder + '.png', folder + '.npz'
  if jax.process_index() == 0:
    pixels = images.to_uint8(samples)
    images.save_pngs(pixels, folder)
    images.save_grid(samples, png, nrow=int(math.ceil(math.sqrt(num_samples))),
                     scale=max(1, 128 // int(config.data.image_size)))
    files.write_npz(npz, samples=pixels)
    log.info('Wrote %d samples (%s) to %s/, %s and %s.', num_samples, tag, folder, npz, png)
  return {'step': step, 'folder': folder, 'png': png, 'npz': npz, 'nfe': float(nfe)}
