"""Score evaluations per second of sampling, for the paper's CIFAR-10 networks (issue 3, "Speed").

Two measurements per (config, dtype), both in evaluation mode with the config's score
convention (`setup.get_score_fn`, parameters passed into the compiled program):
  forward   one jitted call of the score function on a batch (`--batch`, default 1024)
            of random x and times t ~ U(eps, T): evaluations/s = batch / median seconds
  sampler   the config's own sampler (`setup.get_sampler`, e.g. PC with reverse
            diffusion + Langevin for VE, Euler-Maruyama for VP) on the same batch, run with
            the SDE's discretization shortened to `--sampler_steps` steps so a call takes
            seconds: evaluations/s = NFE * batch / median seconds (NFE as the sampler reports
            it: steps * (predictor + corrector evaluations)); ms/step = seconds / steps.
            The per-step cost does not depend on the number of steps, so this is the speed
            of the full 1000-step (2000-NFE for PC) sampler; its overhead over the forward
            pass is the sampler's own arithmetic and the loop.

GFLOP/eval is XLA's cost analysis of the compiled forward executable / batch ("HLO": the
unoptimized HLO, a cross-check); TFLOP/s and "of peak" use it for both rows (float32:
against TF32, XLA's default for f32 convolutions on A100/H100, and plain FP32). Peak GiB is
`peak_bytes_in_use` after both measurements (each case runs in its own process).

GPU run (H100/H200; ~2-4 minutes a case, mostly compilation):
  python benchmarks/sampling.py                        # 3 configs x {float32, bfloat16}, batch 1024
  python benchmarks/sampling.py --batch 128 --sampler_steps 50 --json /tmp/sampling.json
CPU smoke test (numbers meaningless):
  python benchmarks/sampling.py --tiny --batch 4 --steps 2 --warmup 1 --sampler_steps 3

Needs jax, flax, optax, orbax-checkpoint, diffrax, numpy and ml_collections; not TensorFlow.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def run_one(config_name: str, dtype: str, args) -> dict:
  """Measures one (config, dtype) case in this process; returns the row as a dict."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from scoresde_jax import parallel, sde_lib  # pylint: disable=import-outside-toplevel
  from scoresde_jax.run import networks, setup  # pylint: disable=import-outside-toplevel

  config = common.load_config(config_name, dtype, tiny=args.tiny)
  mesh = parallel.make_mesh()
  if args.batch % mesh.size:
    raise ValueError(f'--batch {args.batch} is not divisible by the {mesh.size} devices.')
  batch_sharding = parallel.data_sharding(mesh)
  sde = setup.get_sde(config)
  eps = sde_lib.sampling_eps(sde)
  model = networks.get_model(config)
  params = jax.jit(lambda key: networks.init_model(key, config)[1],
                   out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  score_fn = setup.get_score_fn(config, sde, model, params)
  size, channels = config.data.image_size, config.data.num_channels
  shape = (args.batch, size, size, channels)

  # Forward pass: the score network on a batch.
  kx, kt = jax.random.split(jax.random.PRNGKey(1))
  x = jax.device_put(jax.random.normal(kx, shape, jnp.float32), batch_sharding)
  t = jax.device_put(jax.random.uniform(kt, (args.batch,), jnp.float32, eps, sde.T),
                     batch_sharding)
  forward = jax.jit(lambda s, x, t: s(x, t))
  info = common.compiled_info(forward, score_fn, x, t)
  compiled = info['compiled']
  fwd_s, fwd_times = common.time_calls(lambda: compiled(score_fn, x, t), args.steps, args.warmup)

  # The config's sampler over a shortened discretization (same cost per step).
  sampler = setup.get_sampler(config, shape, batch_sharding, {'num_scales': args.sampler_steps})
  rng = jax.random.PRNGKey(2)
  nfe_box = {}

  def sample():
    samples, nfe = sampler(rng, score_fn)
    nfe_box['nfe'] = int(nfe)
    return samples

  jax.block_until_ready(sample())  # compiles
  smp_s, smp_times = common.time_calls(sample, max(1, args.steps // 2), args.warmup)
  nfe = nfe_box['nfe']

  flops = info['flops']
  gflop_eval = None if flops is None else flops / args.batch / 1e9
  hlo = info['flops_hlo']
  fwd_rate = args.batch / fwd_s
  smp_rate = nfe * args.batch / smp_s
  device = common.device_summary()
  tf = lambda rate: None if gflop_eval is None else gflop_eval * rate / 1e3
  method = config.sampling.method.lower()
  sampler_name = (f'{config.sampling.predictor}+{config.sampling.corrector}' if method == 'pc'
                  else method)
  return {
      'config': config_name, 'dtype': dtype, 'batch': args.batch, 'tiny': args.tiny,
      'forward_evals_per_s': fwd_rate, 'forward_ms': 1e3 * fwd_s, 'forward_times_s': fwd_times,
      'compile_s': info['compile_s'], 'gflop_per_eval': gflop_eval,
      'gflop_per_eval_hlo': None if hlo is None else hlo / args.batch / 1e9,
      'forward_tflops': tf(fwd_rate),
      'forward_of_peak': common.peak_fraction(tf(fwd_rate), dtype, device['device_kind']),
      'sampler': sampler_name, 'sampler_steps': args.sampler_steps, 'sampler_nfe': nfe,
      'nfe_per_step': nfe / args.sampler_steps, 'sampler_evals_per_s': smp_rate,
      'sampler_ms_per_step': 1e3 * smp_s / args.sampler_steps, 'sampler_times_s': smp_times,
      'sampler_tflops': tf(smp_rate),
      'sampler_of_peak': common.peak_fraction(tf(smp_rate), dtype, device['device_kind']),
      'full_sampler_s': smp_s / args.sampler_steps * sde.N,
      'peak_bytes': common.peak_memory_bytes(), 'compiled_bytes': info['compiled_bytes'],
      **device,
  }


def table(results: list[dict]) -> str:
  header = ['config', 'dtype', 'batch', 'forward evals/s', 'GFLOP/eval', 'GFLOP/eval (HLO)',
            'TFLOP/s', 'of peak', 'sampler', 'NFE/step', 'sampler evals/s', 'ms/step',
            'sampler of peak', 'full N-step s', 'peak GiB', 'compiled GiB']
  rows = []
  for r in results:
    if 'error' in r:
      rows.append([r['config'], r['dtype'], '', 'error: ' + r['error'][:120]]
                  + [''] * (len(header) - 4))
      continue
    rows.append([r['config'], r['dtype'], r['batch'], common.fmt(r['forward_evals_per_s'], ',.0f'),
                 common.fmt(r['gflop_per_eval'], '.2f'), common.fmt(r['gflop_per_eval_hlo'], '.2f'),
                 common.fmt(r['forward_tflops']), r['forward_of_peak'], r['sampler'],
                 common.fmt(r['nfe_per_step'], 'g'), common.fmt(r['sampler_evals_per_s'], ',.0f'),
                 common.fmt(r['sampler_ms_per_step'], '.1f'), r['sampler_of_peak'],
                 common.fmt(r['full_sampler_s'], ',.0f'), common.gib(r['peak_bytes']),
                 common.gib(r['compiled_bytes'])])
  return common.markdown_table(header, rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser, default_batch=1024)
  parser.add_argument('--sampler_steps', type=int, default=10,
                      help='discretization steps of the timed sampler runs')
  args = parser.parse_args(argv)
  if args.sampler_steps < 1 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
    parser.error('--sampler_steps, --batch and --steps must be >= 1 and --warmup >= 0.')

  common.run_benchmark(
      'sampling', os.path.abspath(__file__), args, run_one, table, 'Sampling',
      f'batch {args.batch}, median of {args.steps} forward calls and '
      f'{max(1, args.steps // 2)} sampler calls of {args.sampler_steps} steps; "full N-step s" '
      "extrapolates to the config's N steps",
      ['--sampler_steps', str(args.sampler_steps)])

if __name__ == '__main__':
  main()
