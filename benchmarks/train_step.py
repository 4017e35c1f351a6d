"""Training-step throughput of the paper's CIFAR-10 networks (issue 3, "Speed").

The step is the one `main.py --mode train` runs: `setup.create_train_state`,
`setup.get_loss_fn` (the config's continuous DSM objective, dropout on),
`losses.get_step_fn` (Adam with warmup and gradient clipping, EMA update) fused over
`--n_jitted` steps by `losses.get_multi_step_fn`, jitted with the state donated and the
batch sharded over a mesh of all devices, as in `run/train.py`. The data are random arrays
already on the devices, so the numbers exclude the input pipeline.

Columns:
  images/s    global batch * n_jitted / median seconds of one compiled call (after compiling
              and `--warmup` untimed calls; `--steps` timed calls, each blocked until ready)
  GFLOP/img   XLA's cost analysis of the compiled one-step executable / batch
              ("HLO" column: the same from the unoptimized HLO, a cross-check)
  TFLOP/s     GFLOP/img * images/s; "of peak" against the device's dense peak for the dtype
              (float32: TF32, which XLA uses for f32 convolutions and matmuls by default on
              A100/H100, and plain FP32)
  peak GiB    `peak_bytes_in_use` of the device after the case (each case runs in its own
              process); "compiled GiB" the executable's arguments + outputs + temporaries

GPU run (H100/H200; ~2-4 minutes a case, mostly compilation):
  python benchmarks/train_step.py                      # 3 configs x {float32, bfloat16}, batch 128
  python benchmarks/train_step.py --n_jitted 5         # the configs' training.n_jitted_steps
  python benchmarks/train_step.py --configs vp/cifar10_ddpmpp_continuous --dtypes bfloat16 \\
      --steps 20 --json /tmp/train_step.json
CPU smoke test (numbers meaningless):
  python benchmarks/train_step.py --tiny --batch 4 --steps 2 --warmup 1

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
  from scoresde_jax import losses, parallel  # pylint: disable=import-outside-toplevel
  from scoresde_jax.run import networks, setup  # pylint: disable=import-outside-toplevel

  config = common.load_config(config_name, dtype, tiny=args.tiny)
  mesh = parallel.make_mesh()
  if args.batch % mesh.size:
    raise ValueError(f'--batch {args.batch} is not divisible by the {mesh.size} devices.')
  replicated = parallel.replicated(mesh)
  sde = setup.get_sde(config)
  model = networks.get_model(config)
  optimizer = setup.get_optimizer(config)
  # The run's initial state, initialized in one compiled call (eager init is slow).
  state = jax.jit(lambda key: setup.create_train_state(config, key)[2],
                  out_shardings=replicated)(jax.random.PRNGKey(0))
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

  step_fn = losses.get_step_fn(setup.get_loss_fn(config, sde, model, train=True), optimizer,
                               config.model.ema_rate)
  n = args.n_jitted
  size, channels = config.data.image_size, config.data.num_channels
  batches = jax.random.uniform(jax.random.PRNGKey(1), (n, args.batch, size, size, channels),
                               jnp.float32)
  if config.data.centered:
    batches = batches * 2 - 1
  batches = jax.device_put(batches, parallel.data_sharding(mesh, batch_axis=1))

  # FLOPs of one step (XLA's cost analysis counts a loop body once, so not the fused call).
  single = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated))
  single_info = common.compiled_info(single, state, batches[0])
  if n == 1:
    compiled, compile_s = single_info['compiled'], single_info['compile_s']
    x = batches[0]
  else:
    fused = jax.jit(losses.get_multi_step_fn(step_fn), donate_argnums=0,
                    out_shardings=(replicated, replicated))
    fused_info = common.compiled_info(fused, state, batches)
    compiled, compile_s = fused_info['compiled'], fused_info['compile_s']
    x = batches

  holder = {'state': state, 'metrics': None}

  def call():
    holder['state'], holder['metrics'] = compiled(holder['state'], x)
    return holder['state'].step, holder['metrics']

  median, times = common.time_calls(call, args.steps, args.warmup)
  loss = float(jnp.mean(holder['metrics']['loss']))
  images = n * args.batch
  images_per_s = images / median
  flops = single_info['flops']
  gflop_img = None if flops is None else flops / args.batch / 1e9
  hlo = single_info['flops_hlo']
  tflops = None if gflop_img is None else gflop_img * images_per_s / 1e3
  device = common.device_summary()
  return {
      'config': config_name, 'dtype': dtype, 'batch': args.batch, 'n_jitted': n,
      'tiny': args.tiny, 'num_params': int(num_params), 'images_per_s': images_per_s,
      'ms_per_step': 1e3 * median / n, 'times_s': times, 'compile_s': compile_s,
      'gflop_per_image': gflop_img,
      'gflop_per_image_hlo': None if hlo is None else hlo / args.batch / 1e9,
      'tflops': tflops,
      'of_peak': common.peak_fraction(tflops, dtype, device['device_kind']),
      'peak_bytes': common.peak_memory_bytes(), 'compiled_bytes': single_info['compiled_bytes'],
      'loss': loss, **device,
  }


def table(results: list[dict]) -> str:
  header = ['config', 'dtype', 'batch', 'images/s', 'ms/step', 'GFLOP/img', 'GFLOP/img (HLO)',
            'TFLOP/s', 'of peak', 'peak GiB', 'compiled GiB', 'compile s', 'loss']
  rows = []
  for r in results:
    if 'error' in r:
      rows.append([r['config'], r['dtype'], '', 'error: ' + r['error'][:120]] + [''] * 9)
      continue
    rows.append([r['config'], r['dtype'], r['batch'], common.fmt(r['images_per_s'], ',.0f'),
                 common.fmt(r['ms_per_step'], '.2f'), common.fmt(r['gflop_per_image']),
                 common.fmt(r['gflop_per_image_hlo']), common.fmt(r['tflops']), r['of_peak'],
                 common.gib(r['peak_bytes']), common.gib(r['compiled_bytes']),
                 common.fmt(r['compile_s'], '.0f'), common.fmt(r['loss'], '.4g')])
  return common.markdown_table(header, rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser, default_batch=128)
  parser.add_argument('--n_jitted', type=int, default=1,
                      help='optimizer steps fused into one compiled call (the configs use 5)')
  args = parser.parse_args(argv)
  if args.n_jitted < 1 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
    parser.error('--n_jitted, --batch and --steps must be >= 1 and --warmup >= 0.')

  common.run_benchmark(
      'train_step', os.path.abspath(__file__), args, run_one, table, 'Training step',
      f'global batch {args.batch}, n_jitted {args.n_jitted}, median of {args.steps} calls',
      ['--n_jitted', str(args.n_jitted)])

if __name__ == '__main__':
  main()
