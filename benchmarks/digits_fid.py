"""FID of sample files against the digits training split, every file in one process.

    python benchmarks/digits_fid.py --weights default_1.pt --work DIR \
        "VE P1000=runs/table1/ve/table1/P1000/samples_step_3000.npz" "score model=S.npz"

prints `real held-out digits (180): FID: x` (the floor: every held-out digit, the FID that
samples of the data distribution itself reach at this count), `train digits (500 of the
reference set): FID: x` (500 train digits drawn with seed 0: the floor at 500 images, a
little optimistic, since they are part of the reference) and then `LABEL: FID: x (first
180: y)` for each LABEL=PATH, y the FID of its first 180 images (FID falls with the count, so
y is the one to set beside the floor). Each PATH is an .npz with uint8 `samples`
[N, 8, 8, 1], as `main.py --mode sample` and the DDLS sampler write them. On a CPU compiling
the Inception network costs about as much as scoring a file, so it is compiled once here for
all of them. Scores are kept in DIR: the train split's statistics as DIR/digits_train_stats.npz,
each file's Inception features as DIR/features/<hash of its images>.npz, so a rerun (the final
table after previews, or one after an interruption) runs the network only on new images.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scoresde_jax import datasets  # noqa: E402
from scoresde_jax.evaluation import fid, metrics, weights  # noqa: E402


def write_digits(split: str, path: str, count: int | None = None):
  """The digits of `split` as the uint8 pixels samples are stored in; `count` of them drawn
  without replacement (seed 0) when given."""
  images, _ = datasets.load_digits(split, image_size=8, num_channels=1)
  if count is not None:
    images = images[np.random.default_rng(0).choice(len(images), count, replace=False)]
  np.savez(path, samples=np.floor(images * 255 + 0.5).astype(np.uint8))


def cached_statistics(path: str, variables, folder: str, batch_size: int) -> dict:
  """`fid.compute_statistics` of a sample file, kept in `folder` under a hash of its images."""
  images = np.concatenate(list(fid.sample_file_batches(path, batch_size)))
  digest = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:20]
  kept = os.path.join(folder, f'{digest}.npz')
  if os.path.exists(kept):
    return metrics.load_statistics(kept)
  batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
  return fid.compute_statistics(batches, variables, path=kept)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--weights', required=True, help='the real Inception weights file')
  parser.add_argument('--work', required=True, help='folder for the digits files and stats')
  # On a 2-core CPU, batches of 1-16 images ran 2.5-3.0 images per CPU-second and 128-256
  # 1.6-2.0 (the activations of a small batch stay in cache).
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--train_floor', type=int, default=500,
                      help='also score this many train digits (the floor at the samples\' '
                      'count; optimistic: they are part of the reference set); 0: no')
  parser.add_argument('files', nargs='*', metavar='LABEL=PATH')
  args = parser.parse_args(argv)
  named = []
  for item in args.files:
    label, sep, path = item.partition('=')
    if not sep or not os.path.isfile(path):
      parser.error(f'{item!r}: expected LABEL=PATH of an existing .npz')
    named.append((label, path))

  os.makedirs(args.work, exist_ok=True)
  variables = weights.load_inception(args.weights)
  train_stats = os.path.join(args.work, 'digits_train_stats.npz')
  if not os.path.exists(train_stats):
    train = os.path.join(args.work, 'digits_train.npz')
    write_digits('train', train)
    fid.compute_statistics(fid.sample_file_batches(train, args.batch_size), variables,
                           path=train_stats)
  reference = metrics.load_statistics(train_stats)

  heldout = os.path.join(args.work, 'digits_eval.npz')
  write_digits('eval', heldout)
  with np.load(heldout) as f:
    count = len(f['samples'])

  def fids(path) -> str:
    stats = cached_statistics(path, variables, os.path.join(args.work, 'features'),
                              args.batch_size)
    full = metrics.frechet_distance(stats['mu'], stats['sigma'], reference['mu'],
                                    reference['sigma'])
    text = f'{full:.6f}'
    # FID falls with the number of images (its covariance estimate), so samples are also
    # scored at the floor's count.
    pool = stats.get('pool_3')
    if pool is not None and len(pool) > count:
      matched = metrics.fid_to_reference(pool[:count], reference['mu'], reference['sigma'])
      text += f' (first {count}: {matched:.6f})'
    return text

  print(f'real held-out digits ({count}): FID: {fids(heldout)}', flush=True)
  if args.train_floor:
    train_some = os.path.join(args.work, f'digits_train_{args.train_floor}.npz')
    write_digits('train', train_some, args.train_floor)
    print(f'train digits ({args.train_floor} of the reference set): FID: '
          f'{fids(train_some)}', flush=True)
  for label, path in named:
    print(f'{label}: FID: {fids(path)}', flush=True)


if __name__ == '__main__':
  main()
