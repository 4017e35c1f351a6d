"""Accuracy of the sampled distribution versus NFE, with exact Gaussian-mixture scores.

For a 2-D (3 components) and a 16-D (4 components) mixture and each SDE (VE, VP,
sub-VP), samples from every fast solver at several NFE and from the paper's samplers
(PC: Euler-Maruyama at 1000 steps, reverse diffusion + Langevin at 1000 steps, and the
adaptive probability-flow ODE sampler) are compared with the exact mixture:

  * weight error:   max_k |w_k_hat - w_k|, w_k_hat = mean of the posterior p(k | x)
  * variance error: mean over k, d of |v_kd_hat / v_kd - 1|, posterior-weighted moments
    (soft assignment: for exact samples these estimators are unbiased even where
    components overlap, unlike hard assignment)
  * sliced W2:      sliced Wasserstein-2 distance to as many exact samples (256 directions)
  * energy:         squared energy distance to exact samples (first 3000 points, unbiased)

Deterministic samplers (fast solvers, adaptive ODE) start from exact samples of p_T, the
mixture diffused to T (x_T = alpha_T x_0 + sigma_T z), so the table measures their
discretization error alone. From the SDE's N(0, sigma_T^2) prior instead, the ODE maps
the prior's mismatch with p_T (the mixture's mean is not 0) into a weight bias of about
0.01-0.025 that no step count removes; the rows marked 'prior' show it. The stochastic PC
samplers start from the prior as usual: their noise forgets the starting mismatch.

The row 'exact' measures two independent exact sample sets against each other: the noise
floor of each metric at this sample size. Prints markdown tables, writes
benchmarks/solver_accuracy.png (drawn with PIL: matplotlib is not in the project env).

  PYTHONPATH=. python benchmarks/solver_accuracy.py [--n 10000] [--out benchmarks/solver_accuracy.png]

Runs on CPU in a few minutes.
"""
from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scoresde_jax import fast_solvers, gmm, sampling, sde_lib  # noqa: E402

SDES = {
    'VE': sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    'VP': sde_lib.VPSDE(),
    'subVP': sde_lib.subVPSDE(),
}
# name: (seed, dim, K, random_mixture keywords). The first two are the core tests' mixtures:
# narrow components (std 0.3-1) about 9 apart. The third overlaps (means about 4 apart,
# std 0.5-1), closer to what a network's data distribution looks like at the noise levels
# where global structure forms.
MIXTURES = {'2-D, K=3': (0, 2, 3, {}), '16-D, K=4': (1, 16, 4, {}),
            '16-D, K=8, overlapping': (0, 16, 8, dict(spread=1.0, min_std=0.5, max_std=1.0))}
# (label, builder name, kwargs, NFEs): DPM-Solver variants one NFE per step, Heun two
# (35 NFE = 17 Heun steps and the final Euler step to sigma 0: EDM's CIFAR-10 setting).
FAST = [('DDIM', 'ddim', dict(schedule='logsnr'), (10, 20, 50)),
        ('DPM-Solver++ 2M', 'dpm_solver_2m', {}, (10, 20, 50)),
        ('DPM-Solver++ 3M', 'dpm_solver_3m', {}, (10, 20, 50)),
        ('Heun (EDM)', 'heun', dict(denoise_to_zero=False), (10, 20, 50)),
        ('Heun (EDM), final denoising', 'heun', dict(denoise_to_zero=True), (35,))]


def soft_moments(mix, x):
  """Posterior-weighted mixture weights [K], means [K, D] and variances [K, D]."""
  p = np.asarray(mix.posterior(jnp.asarray(x)), np.float64)
  x = np.asarray(x, np.float64)
  mass = p.sum(0)
  means = (p.T @ x) / mass[:, None]
  variances = np.stack([(p[:, k:k + 1] * (x - means[k])**2).sum(0) / mass[k]
                        for k in range(p.shape[1])])
  return mass / len(x), means, variances


def sliced_w2(x, y, rng, n_dirs=256):
  dirs = np.array(jax.random.normal(rng, (x.shape[1], n_dirs)))
  dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
  px, py = np.sort(np.asarray(x) @ dirs, axis=0), np.sort(np.asarray(y) @ dirs, axis=0)
  return float(np.sqrt(np.mean((px - py)**2)))


@jax.jit
def _mean_dist(a, b):
  """Mean Euclidean distance over all pairs (a_i, b_j), in row blocks to bound memory."""
  blocks = a.reshape(-1, 250, a.shape[1])
  sums = jax.lax.map(lambda blk: jnp.sum(jnp.sqrt(jnp.maximum(
      jnp.sum(blk**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2 * blk @ b.T, 0.0))), blocks)
  return jnp.sum(sums) / (a.shape[0] * b.shape[0])


def energy_distance(x, y, m=3000):
  """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| on the first m points of each.

  Unbiased (U-statistics), so it fluctuates around 0 for equal distributions and can come
  out slightly negative."""
  x, y = jnp.asarray(x[:m], jnp.float32), jnp.asarray(y[:m], jnp.float32)
  # Self terms include the m zero diagonal pairs; rescale to the U-statistic.
  exx = _mean_dist(x, x) * m / (m - 1)
  eyy = _mean_dist(y, y) * m / (m - 1)
  return float(2 * _mean_dist(x, y) - exx - eyy)


def metrics(mix, x, exact, rng):
  w, _, v = soft_moments(mix, x)
  return dict(weight=float(np.abs(w - mix.weights).max()),
              variance=float(np.abs(v / mix.variances - 1).mean()),
              sw2=sliced_w2(x, exact, rng), energy=energy_distance(x, exact))


def run(n):
  rows = []  # (mixture, sde, method, nfe, metrics, seconds)
  for mix_name, (seed, dim, k, kw) in MIXTURES.items():
    mix = gmm.random_mixture(seed, dim, k, **kw)
    exact, _ = mix.sample(jax.random.PRNGKey(100), n)
    other, _ = mix.sample(jax.random.PRNGKey(101), n)
    proj_rng = jax.random.PRNGKey(7)
    shape = (n, dim)
    for sde_name, sde in SDES.items():
      score = mix.score_fn(sde)
      # Exact samples of p_T (independent of `exact`) as starting points of the ODE solvers.
      x0, _ = mix.sample(jax.random.PRNGKey(102), n)
      mean, std = sde.marginal_prob(x0, jnp.full((n,), sde.T))
      x_T = mean + sde_lib.batch_mul(std, jax.random.normal(jax.random.PRNGKey(103), x0.shape))
      rows.append((mix_name, sde_name, 'exact', 0, metrics(mix, other, exact, proj_rng), 0.0))
      print(f'{mix_name:10s} {sde_name:6s} exact vs exact: '
            + ' '.join(f'{k}={v:.4f}' for k, v in rows[-1][4].items()), flush=True)
      candidates = []
      for label, name, kw, nfes in FAST:
        for nfe in nfes:
          steps = nfe // 2 if name == 'heun' else nfe
          fast = fast_solvers.get_fast_sampler(name, sde, shape, steps=steps, **kw)
          candidates.append((label, lambda rng, s, fast=fast: fast(rng, s, x_T)))
      dpm2m_20 = fast_solvers.get_fast_sampler('dpm_solver_2m', sde, shape, steps=20)
      ode = sampling.get_ode_sampler(sde, shape)
      candidates += [
          ('PC: Euler-Maruyama', sampling.get_pc_sampler(sde, shape, 'euler_maruyama', 'none')),
          ('PC: rev. diffusion + Langevin',
           sampling.get_pc_sampler(sde, shape, 'reverse_diffusion', 'langevin', snr=0.16)),
          ('ODE (dopri5, tol 1e-5)', lambda rng, s: ode(rng, s, x_T)),
          ('prior: ODE (dopri5)', ode),
          ('prior: DPM-Solver++ 2M', dpm2m_20),
      ]
      for label, sampler in candidates:
        start = time.time()
        x, nfe = sampler(jax.random.PRNGKey(0), score)
        x = np.asarray(jax.block_until_ready(x))
        seconds = time.time() - start
        if not np.all(np.isfinite(x)):
          raise FloatingPointError(f'{label} on {sde_name} {mix_name} produced non-finite samples.')
        rows.append((mix_name, sde_name, label, int(nfe), metrics(mix, x, exact, proj_rng), seconds))
        print(f'{mix_name:10s} {sde_name:6s} {label:32s} nfe={int(nfe):5d} '
              + ' '.join(f'{k}={v:.4f}' for k, v in rows[-1][4].items()), flush=True)
  return rows


def markdown(rows):
  lines = []
  for mix_name in MIXTURES:
    lines += [f'\n**{mix_name}** (weight err / variance err / sliced W2 / energy distance)\n',
              '| method | NFE | ' + ' | '.join(SDES) + ' |',
              '|---|---|' + '---|' * len(SDES)]
    keys = []
    for r in rows:
      if r[0] == mix_name and (r[2], r[3] if r[2].startswith(('DDIM', 'DPM', 'Heun')) else None) not in keys:
        keys.append((r[2], r[3] if r[2].startswith(('DDIM', 'DPM', 'Heun')) else None))
    for label, nfe_key in keys:
      cells, nfes = [], set()
      for sde_name in SDES:
        match = [r for r in rows if r[0] == mix_name and r[1] == sde_name and r[2] == label
                 and (nfe_key is None or r[3] == nfe_key)]
        m = match[0][4]
        nfes.add(match[0][3])
        cells.append(f"{m['weight']:.3f} / {m['variance']:.3f} / {m['sw2']:.3f} / {m['energy']:.3f}")
      nfe_txt = '-' if label == 'exact' else '/'.join(str(v) for v in sorted(nfes))
      lines.append(f'| {label} | {nfe_txt} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------
# Plot with PIL: one panel per (mixture, metric, SDE), error against NFE on log-log axes.
# Variance and weight errors are plotted: the sliced W2 and energy distances are dominated by
# the weight noise (mass moved across widely separated components) and separate little.

COLORS = {'DDIM': (148, 103, 189), 'DPM-Solver++ 2M': (31, 119, 180), 'DPM-Solver++ 3M': (44, 160, 44),
          'Heun (EDM)': (214, 39, 40), 'Heun (EDM), final denoising': (227, 119, 194),
          'PC: Euler-Maruyama': (255, 127, 14),
          'PC: rev. diffusion + Langevin': (140, 86, 75), 'ODE (dopri5, tol 1e-5)': (23, 190, 207),
          'exact': (127, 127, 127)}


def plot(rows, path, metrics=(('variance', 'variance error'), ('weight', 'weight error'))):
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  pw, ph, ml, mt, mb, mr = 360, 230, 60, 30, 40, 10
  panels = [(mix, metric, title) for mix in MIXTURES for metric, title in metrics]
  cols, nrows = len(SDES), len(panels)
  legend_h = 70
  img = Image.new('RGB', (cols * pw, nrows * ph + legend_h), 'white')
  draw = ImageDraw.Draw(img)
  nfe_lo, nfe_hi = math.log10(8), math.log10(5000)
  for r_i, (mix_name, metric, title) in enumerate(panels):
    for c_i, sde_name in enumerate(SDES):
      sub = [r for r in rows if r[0] == mix_name and r[1] == sde_name]
      vals = [max(r[4][metric], 1e-4) for r in sub]
      lo, hi = math.log10(min(vals) * 0.8), math.log10(max(vals) * 1.25)
      x0, y0 = c_i * pw + ml, r_i * ph + mt
      w, h = pw - ml - mr, ph - mt - mb

      def to_px(nfe, val):
        return (x0 + (math.log10(nfe) - nfe_lo) / (nfe_hi - nfe_lo) * w,
                y0 + h - (math.log10(val) - lo) / (hi - lo) * h)

      draw.rectangle([x0, y0, x0 + w, y0 + h], outline='black')
      draw.text((x0 + 5, y0 - 20), f'{mix_name}, {sde_name}: {title} vs NFE', fill='black')
      for tick in (10, 20, 50, 100, 1000):
        px, _ = to_px(tick, 10**lo)
        draw.line([px, y0 + h, px, y0 + h + 4], fill='black')
        draw.text((px - 8, y0 + h + 6), str(tick), fill='black')
      for frac in (0.0, 0.5, 1.0):
        val = 10**(lo + frac * (hi - lo))
        py = y0 + h - frac * h
        draw.line([x0 - 4, py, x0, py], fill='black')
        draw.text((x0 - 55, py - 6), f'{val:.3g}', fill='black')
      floor = [r for r in sub if r[2] == 'exact'][0][4][metric]
      _, py = to_px(10, max(floor, 1e-4))
      for xs in range(int(x0), int(x0 + w), 8):  # dashed: noise floor of the metric
        draw.line([xs, py, xs + 4, py], fill=COLORS['exact'])
      for label, color in COLORS.items():
        pts = sorted((r[3], max(r[4][metric], 1e-4)) for r in sub if r[2] == label and r[3] > 0
                     and not label.startswith('prior'))
        if not pts:
          continue
        xy = [to_px(nfe, val) for nfe, val in pts]
        if len(xy) > 1:
          draw.line(xy, fill=color, width=2)
        for px, py in xy:
          draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
  ly = nrows * ph + 10
  for i, (label, color) in enumerate(COLORS.items()):
    lx = 10 + (i % 4) * (cols * pw // 4)
    yy = ly + (i // 4) * 25
    draw.rectangle([lx, yy + 3, lx + 14, yy + 11], fill=color)
    draw.text((lx + 20, yy), label if label != 'exact' else 'exact vs exact (noise floor, dashed)',
              fill='black')
  img.save(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=10000, help='samples per run (multiple of 250)')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'solver_accuracy.png'))
  args = parser.parse_args()
  if args.n % 250 or args.n < 3000:
    raise ValueError(f'--n must be a multiple of 250 and >= 3000, got {args.n}.')
  rows = run(args.n)
  print(markdown(rows))
  plot(rows, args.out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
