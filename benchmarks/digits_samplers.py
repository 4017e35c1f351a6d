"""Samplers on a trained digits model: PC vs the probability-flow ODE vs few-step solvers.

  PYTHONPATH=. python benchmarks/digits_samplers.py --config configs/vp/digits.py \
      --workdir runs/digits_vp [--num 256] [--grid_dir docs/] [--samplers 1]

For each sampler, `--num` samples from the run's EMA parameters (latest snapshot) and:
  NFE, seconds      score evaluations and wall time (compilation included: one program each)
  outside [0, 1]    fraction of pixels beyond [-0.05, 1.05] after the inverse scaler: digits
                    live in [0, 1], so this counts saturated, off-manifold pixels
  judge confidence  mean max-probability of a logistic regression fit on the clean train
                    digits (its value on the clean eval digits is printed for scale)
  classes           how many of the 10 digits the judge sees among the samples, and the
                    largest class share (a collapse to few digits shows here)
  NN distance       median Euclidean distance (64 pixels) to the nearest training digit and,
                    for scale, the same for clean eval digits (much smaller: memorization)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
from conditional_digits import check_score_workdir, fit_judge  # noqa: E402
from scoresde_jax import checkpoints, datasets  # noqa: E402
from scoresde_jax.run import data, images, setup  # noqa: E402


def samplers(config, shape):
  """(label, sampler) pairs; every sampler is `sampler(rng, score_fn) -> (x, nfe)`."""
  s = config.sampling
  build = lambda **overrides: setup.get_sampler(config, shape, overrides=overrides)
  fast = lambda name, steps: build(method=name, fast={'steps': steps})
  return [
      (f'PC: {s.predictor} + {s.corrector} (config)', build(method='pc')),
      ('PC: Euler-Maruyama, 1000 steps', build(method='pc', predictor='euler_maruyama',
                                              corrector='none', num_scales=1000,
                                              noise_removal=True)),
      ('ODE (dopri5, tol 1e-5)', build(method='ode', noise_removal=False)),
      ('DPM-Solver++ 2M, 10 steps', fast('dpm_solver_2m', 10)),
      ('DPM-Solver++ 2M, 20 steps', fast('dpm_solver_2m', 20)),
      ('DPM-Solver++ 3M, 20 steps', fast('dpm_solver_3m', 20)),
      ('DDIM, 20 steps', fast('ddim', 20)),
      ('Heun (EDM), 10 steps + denoise', fast('heun', 10)),
  ]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True, help='a digits training run')
  parser.add_argument('--num', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--grid_dir', default='', help='also save a 64-sample grid per sampler')
  parser.add_argument('--samplers', type=int, default=0,
                      help='only the first N samplers of the table (1: the config\'s own)')
  args = parser.parse_args(argv)

  config = configs.load_config(args.config)
  if config.data.dataset.upper() != 'DIGITS':
    raise ValueError(f'{args.config} is not a digits config (data.dataset={config.data.dataset}).')
  check_score_workdir(config, args.workdir)
  sde = setup.get_sde(config)
  model, template = setup.model_and_template(config)
  snaps = checkpoints.RunCheckpoints(args.workdir, asynchronous=False)
  step = max(snaps.snapshot_steps())
  snaps.close()
  state = checkpoints.restore_snapshot(args.workdir, template, step)
  score_fn = setup.get_score_fn(config, sde, model, state.ema_params)
  inverse_scaler = data.get_data_inverse_scaler(config)

  size = config.data.image_size
  judge, _ = fit_judge(size)
  train_x, _ = datasets.load_digits('train', size)
  eval_x, _ = datasets.load_digits('eval', size)
  train_flat = train_x.reshape(len(train_x), -1)

  def measures(x):
    flat = x.reshape(len(x), -1)
    probs = judge.predict_proba(np.clip(flat, 0.0, 1.0))
    counts = np.bincount(probs.argmax(1), minlength=10)
    d2 = (flat**2).sum(1)[:, None] + (train_flat**2).sum(1)[None] - 2 * flat @ train_flat.T
    return dict(outside=float(np.mean((x < -0.05) | (x > 1.05))),
                confidence=float(probs.max(1).mean()), classes=int((counts > 0).sum()),
                top_share=float(counts.max() / len(x)),
                nn=float(np.median(np.sqrt(np.maximum(d2.min(1), 0.0)))))

  clean = measures(eval_x[:args.num])
  shape = (args.num, size, size, config.data.num_channels)
  print(f'{config.training.sde} digits model {args.workdir}, step {step} (EMA '
        f'{config.model.ema_rate}), {args.num} samples, seed {args.seed}, '
        f'{jax.devices()[0].device_kind}')
  header = ('| sampler | NFE | seconds | outside [0, 1] | judge confidence | classes (top share) '
            '| NN distance |\n|---|---|---|---|---|---|---|')
  rows = [f'| clean eval digits | - | - | {clean["outside"]:.3f} | {clean["confidence"]:.3f} | '
          f'{clean["classes"]} ({clean["top_share"]:.2f}) | {clean["nn"]:.2f} |']
  for label, sampler in samplers(config, shape)[:args.samplers or None]:
    start = time.time()
    x, nfe = sampler(jax.random.PRNGKey(args.seed), score_fn)
    x = np.asarray(inverse_scaler(jax.device_get(x)))
    seconds = time.time() - start
    m = measures(x)
    rows.append(f'| {label} | {int(nfe)} | {seconds:.0f} | {m["outside"]:.3f} | '
                f'{m["confidence"]:.3f} | {m["classes"]} ({m["top_share"]:.2f}) | {m["nn"]:.2f} |')
    print(rows[-1], flush=True)
    if args.grid_dir:
      os.makedirs(args.grid_dir, exist_ok=True)
      name = ''.join(c if c.isalnum() else '_' for c in label.lower()).strip('_')
      images.save_grid(np.clip(x[:64], 0.0, 1.0),
                       os.path.join(args.grid_dir, f'digits_{config.training.sde}_{name}.png'),
                       nrow=8, scale=8)
  print()
  print(header)
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
