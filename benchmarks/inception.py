"""Throughput of the FID Inception features (and the FID math) on the available devices.

  python benchmarks/inception.py                       # batch 500, 50,000 32x32 images
  python benchmarks/inception.py --batch_size 4 --num_images 8 --repeats 2   # CPU smoke

Uses the real weights when `weights.load_inception()` finds them, random weights
otherwise (speed does not depend on the values). Prints a table:
  compile s        first call at the benchmark batch shape (trace + XLA compile + run)
  images/s         steady state of the jitted `inception_features` at batch_size
                   (device-resident uint8 input, median of `repeats` timed calls)
  end-to-end s     `fid.compute_activations` over num_images host uint8 images in
                   batches (host->device transfer, sharding over all devices and
                   gathering the features to numpy included)
  FID math s       `metrics.frechet_distance` on 2048-d statistics (float64, host)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from scoresde_jax import parallel  # noqa: E402
from scoresde_jax.evaluation import fid  # noqa: E402
from scoresde_jax.evaluation import inception  # noqa: E402
from scoresde_jax.evaluation import metrics  # noqa: E402
from scoresde_jax.evaluation import weights  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--batch_size', type=int, default=500)
  p.add_argument('--num_images', type=int, default=50_000)
  p.add_argument('--image_size', type=int, default=32)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--skip_fid_math', action='store_true')
  p.add_argument('--json', default=None, help='also write the numbers to this JSON file')
  args = p.parse_args(argv)

  try:
    variables = weights.load_inception()
    source = 'real weights'
  except FileNotFoundError:
    variables = inception.init_random_variables(jax.random.key(0))
    source = 'random weights (real file not found)'
  mesh = parallel.make_mesh()
  n_dev = mesh.shape['data']
  batch = -(-args.batch_size // n_dev) * n_dev  # Divisible by the device count.
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (batch, args.image_size, args.image_size, 3)).astype(np.uint8)

  P = jax.sharding.PartitionSpec
  x = jax.device_put(images, jax.sharding.NamedSharding(mesh, P('data')))
  variables = jax.device_put(variables, jax.sharding.NamedSharding(mesh, P()))

  t0 = time.perf_counter()
  jax.block_until_ready(inception.inception_features(variables, x))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(inception.inception_features(variables, x))
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))

  def host_batches():
    for start in range(0, args.num_images, batch):
      yield images[:min(batch, args.num_images - start)]

  t0 = time.perf_counter()
  acts = fid.compute_activations(host_batches(), variables, mesh=mesh)
  e2e_s = time.perf_counter() - t0
  assert acts['pool_3'].shape == (args.num_images, inception.POOL_FEATURES)

  fid_s = None
  if not args.skip_fid_math:
    a = rng.standard_normal((4096, 2048)) * 0.1
    mu, sigma = metrics.activation_statistics(a)
    t0 = time.perf_counter()
    metrics.frechet_distance(mu, sigma, mu + 0.01, sigma)
    fid_s = time.perf_counter() - t0

  dev = jax.devices()[0]
  rows = [
      ('device', f'{n_dev} x {dev.device_kind} ({dev.platform})'),
      ('weights', source),
      ('input', f'{args.image_size}x{args.image_size} uint8 -> 299x299, batch {batch}'),
      ('compile s (first call)', f'{compile_s:.2f}'),
      (f'images/s @ batch {batch}', f'{batch / step_s:,.1f}'),
      (f'end-to-end s, {args.num_images:,} images', f'{e2e_s:.2f}'),
      (f'  -> images/s end-to-end', f'{args.num_images / e2e_s:,.1f}'),
  ]
  if fid_s is not None:
    rows.append(('FID math s (2048-d, float64 host)', f'{fid_s:.2f}'))
  width = max(len(r[0]) for r in rows)
  print('| ' + 'quantity'.ljust(width) + ' | value |')
  print('|' + '-' * (width + 2) + '|-------|')
  for name, value in rows:
    print(f'| {name.ljust(width)} | {value} |')
  common.write_json(args.json, {
      'benchmark': 'inception', 'device_kind': dev.device_kind, 'num_devices': n_dev,
      'weights': source, 'batch': batch, 'compile_s': compile_s,
      'images_per_s': batch / step_s, 'end_to_end_s': e2e_s, 'num_images': args.num_images,
      'end_to_end_images_per_s': args.num_images / e2e_s, 'fid_math_s': fid_s})


if __name__ == '__main__':
  main()
