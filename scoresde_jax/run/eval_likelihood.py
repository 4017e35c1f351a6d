"""The training objective and bits/dim of a checkpoint on a whole data split.

`LossEval` and `BpdEval` compile their functions when built and keep them, so one object
serves every checkpoint of an evaluation run without compiling again.
"""
from __future__ import annotations

import itertools
import logging

import jax
import numpy as np

from scoresde_jax import errors, likelihood, parallel
from scoresde_jax.run import data, setup

log = logging.getLogger(__name__)


def _batches(config, split: str, seed: int, uniform_dequantization: bool | None,
             num_batches: int | None):
  stream = data.get_dataset(config, split, seed=seed, evaluation=True,
                            uniform_dequantization=uniform_dequantization)
  return itertools.islice(stream, num_batches)


class LossEval:
  """Mean training objective over the eval split (`__call__(params, rng)`).

  Per-example losses (the objective on a batch of one, vmapped) so that the padding of the
  last batch is masked out exactly.
  """

  def __init__(self, config, sde, model, mesh, num_batches: int | None = None):
    self._config, self._mesh, self._num_batches = config, mesh, num_batches
    loss_fn = setup.get_loss_fn(config, sde, model, train=False)

    @jax.jit
    def per_example(params, batch, rng):
      # batch: images [B, ...], or {'image', 'label'} for a class-conditional network.
      keys = jax.random.split(rng, jax.tree_util.tree_leaves(batch)[0].shape[0])
      one = lambda b: jax.tree_util.tree_map(lambda v: v[None], b)
      return jax.vmap(lambda b, k: loss_fn(params, one(b), k))(batch, keys)

    self._per_example = per_example
    self._batch_fn = setup.get_batch_fn(config, model)

  def __call__(self, params, rng) -> dict:
    """Returns {'loss', 'loss_num_examples'} at `params`."""
    config, sharding = self._config, parallel.data_sharding(self._mesh)
    params = jax.device_put(params, parallel.replicated(self._mesh))
    total, count = 0.0, 0
    for i, batch in enumerate(_batches(config, 'eval', config.seed, None, self._num_batches)):
      batch = parallel.shard_batch({'inputs': self._batch_fn(batch), 'mask': batch['mask']},
                                   sharding)
      losses = parallel.gather(self._per_example(params, batch['inputs'],
                                                 jax.random.fold_in(rng, i)))
      mask = parallel.gather(batch['mask'])
      total += float(np.sum(losses[mask], dtype=np.float64))
      count += int(mask.sum())
    if not count:
      raise errors.DatasetError(f'The eval split of {config.data.dataset} is empty.')
    return {'loss': total / count, 'loss_num_examples': count}


class BpdEval:
  """Bits/dim of eval.bpd_dataset under the probability-flow ODE (`__call__(score_fn, rng)`).

  Always on uniformly dequantized data, as the reference: x = (u + U[0, 1)) / 256 for 8-bit
  pixels u, reported as bits/dim of the 8-bit images (`likelihood.bits_offset`), repeated
  eval.bpd_num_repeats times (default 5 for 'test', 1 for 'train', as the reference).
  """

  def __init__(self, config, sde, mesh, num_batches: int | None = None):
    e = config.eval
    name = str(e.get('bpd_dataset', 'test')).lower()
    if name not in ('test', 'train', 'eval'):
      raise errors.ConfigError(f"eval.bpd_dataset={e.bpd_dataset!r}: use 'test' or 'train'.")
    self.name = name
    self.split = 'train' if name == 'train' else 'eval'
    self.repeats = int(e.get('bpd_num_repeats', None) or (1 if self.split == 'train' else 5))
    self._config, self._mesh, self._num_batches = config, mesh, num_batches
    with errors.config_errors(where='config.eval'):
      self._likelihood = likelihood.get_likelihood_fn(
          sde, rtol=float(e.get('bpd_rtol', 1e-5)), atol=float(e.get('bpd_atol', 1e-5)),
          eps=1e-5, hutchinson_type=e.get('hutchinson_type', 'rademacher'),
          bits_offset=likelihood.bits_offset(bool(config.data.centered)))
    self._scaler = data.get_data_scaler(config)

  def __call__(self, score_fn, rng) -> dict:
    """Returns {'bpd' (mean over examples and repeats), 'bpd_std' (std of the per-repeat
    means), 'bpd_num_examples', 'bpd_num_repeats', 'bpd_dataset', 'bpd_nfe' (mean per batch)}."""
    sharding = parallel.data_sharding(self._mesh)
    means, nfes, count = [], [], 0
    for repeat in range(self.repeats):
      bpds = []
      # A new seed per repeat: new dequantization noise (and new probe vectors below).
      batches = _batches(self._config, self.split, self._config.seed + repeat, True,
                         self._num_batches)
      for i, batch in enumerate(batches):
        batch = parallel.shard_batch({'image': self._scaler(batch['image']),
                                      'mask': batch['mask']}, sharding)
        bpd, _, nfe = self._likelihood(jax.random.fold_in(jax.random.fold_in(rng, repeat), i),
                                       score_fn, batch['image'])
        bpd, mask = parallel.gather(bpd), parallel.gather(batch['mask'])
        bpds.append(bpd[mask])
        nfes.append(float(nfe))
        log.info('bpd repeat %d batch %d: %.4f (running mean)', repeat, i,
                 float(np.mean(np.concatenate(bpds))))
      bpds = np.concatenate(bpds).astype(np.float64)
      means.append(bpds.mean())
      count += bpds.size
    return {'bpd': float(np.mean(means)), 'bpd_std': float(np.std(means)),
            'bpd_num_examples': count, 'bpd_num_repeats': self.repeats,
            'bpd_dataset': self.name, 'bpd_nfe': float(np.mean(nfes))}
