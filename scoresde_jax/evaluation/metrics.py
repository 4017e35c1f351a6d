"""FID, Inception Score and KID from Inception outputs, in float64 numpy/scipy.

Conventions (those of the reference score_sde evaluation, which calls TF-GAN):
  * FID: Frechet distance between Gaussians fitted to pool_3 features, with the
    unbiased sample covariance (ddof=1), |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
    tr((S1 S2)^(1/2)) is computed as sum(sqrt(eig(A S2 A))) with A = S1^(1/2) from a
    symmetric eigendecomposition (TF-GAN's `trace_sqrt_product` identity), which is
    real and stable even for singular covariances, unlike `scipy.linalg.sqrtm(S1 @ S2)`.
  * Inception Score: exp(E_x KL(p(y|x) || p(y))) with p(y|x) = softmax over all 1008
    logits (the fc output, bias included; TF-GAN `classifier_score_from_logits`).
    score_sde computes it on all 50k samples at once, i.e. `num_splits=1`; the
    Salimans et al. convention (and most papers' "IS") is the mean (and std) over 10
    equal splits, our default. Use `num_splits=1` to reproduce score_sde's numbers.
  * KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
    estimated by TF-GAN's block estimator (`kernel_classifier_distance_and_std_
    from_activations`): both sets are split IN ORDER into n_blocks = ceil(max(n1, n2) /
    max_block_size) contiguous blocks of near-equal sizes, the unbiased estimate is
    computed per block pair and averaged; std = block std / sqrt(n_blocks). This is
    what score_sde reports (default max_block_size=1024). Inputs are assumed to be in
    random order.

Statistics files: `load_statistics` reads score_sde's `*_stats.npz` (key `pool_3`: raw
activations; mu/sigma are computed from them) and the `mu`/`sigma` npz of TTUR,
pytorch-fid and EDM (EDM's `.npz` uses the same keys). Ours also record the Inception
preprocessing of their images (`preprocessing`: 'pytorch_fid', 'tf' or 'clean_fid', see
`inception.PREPROCESSING`); files without that key are taken as 'pytorch_fid'. FID between
statistics of different preprocessing is refused (`check_same_preprocessing`).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import scipy.special

from scoresde_jax import files

# The preprocessing of statistics files that do not record one: this project's files before
# they recorded it, and pytorch-fid's own. (TTUR's TF files used 'tf': the reader cannot tell.)
UNRECORDED_PREPROCESSING = 'pytorch_fid'


def _as_2d_float64(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name} must be 2-D [num_samples, dim], got shape {x.shape}.')
  return x


def activation_statistics(activations) -> tuple[np.ndarray, np.ndarray]:
  """`activations: [N, D]` -> (mean [D], unbiased covariance [D, D]), float64."""
  act = _as_2d_float64(activations, 'activations')
  if act.shape[0] < 2:
    raise ValueError(f'need at least 2 samples for a covariance, got {act.shape[0]}.')
  return act.mean(axis=0), np.cov(act, rowvar=False)


def sqrtm_psd(mat) -> np.ndarray:
  """Principal square root of a symmetric positive semi-definite matrix (float64).

  Via `eigh`; eigenvalues at round-off level (see `_clip_noise`) are set to 0.
  """
  mat = np.asarray(mat, np.float64)
  mat = 0.5 * (mat + mat.T)  # Remove round-off asymmetry before eigh.
  w, v = np.linalg.eigh(mat)
  return (v * np.sqrt(_clip_noise(w))) @ v.T


def _clip_noise(w: np.ndarray) -> np.ndarray:
  # Eigenvalues of a singular PSD matrix come out as +-(|w|_max * d * eps) noise; sqrt
  # would blow that up to sqrt(noise) per eigenvalue (1e-4 absolute FID error for a
  # rank-deficient 2048-d covariance), so such eigenvalues are exactly 0.
  tol = np.max(np.abs(w), initial=0.0) * w.shape[0] * np.finfo(np.float64).eps
  return np.where(w > tol, w, 0.0)


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices, as a float.

  The eigenvalues of sigma1 sigma2 equal those of A sigma2 A (A = sigma1^(1/2)), which
  is symmetric PSD, so the trace is the sum of square roots of its eigenvalues
  (round-off-level ones set to 0).
  """
  a = sqrtm_psd(sigma1)
  m = a @ np.asarray(sigma2, np.float64) @ a
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sum(np.sqrt(_clip_noise(w))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID on features).

  `mu: [D]`, `sigma: [D, D]`. Returns a float (float64 arithmetic), >= 0 up to round-off.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise ValueError(f'means must be vectors of equal length, got {mu1.shape} and {mu2.shape}.')
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}.')
  for name, v in (('mu1', mu1), ('sigma1', sigma1), ('mu2', mu2), ('sigma2', sigma2)):
    if not np.all(np.isfinite(v)):
      raise ValueError(f'{name} contains NaN or Inf.')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_activations(act1, act2) -> float:
  """FID between two sets of features `[N1, D]`, `[N2, D]`."""
  return frechet_distance(*activation_statistics(act1), *activation_statistics(act2))


def fid_to_reference(activations, mu_ref, sigma_ref) -> float:
  """FID between features `[n, d]` (their mean and unbiased covariance) and N(mu_ref, sigma_ref).

  The same number as `frechet_distance`. With n <= d the sample covariance
  S = Xc^T Xc / (n - 1) (Xc: centered features) has rank < n, and the nonzero eigenvalues of
  sigma_ref S are those of the n x n matrix Xc sigma_ref Xc^T / (n - 1), so tr((sigma_ref S)^(1/2))
  comes from an n x n eigendecomposition instead of two d x d ones (d = 2048: seconds saved
  on every quick evaluation with few samples).
  """
  x = np.asarray(activations, np.float64)
  n, d = x.shape
  if n > d:
    return frechet_distance(*activation_statistics(x), mu_ref, sigma_ref)
  if n < 2:
    raise ValueError(f'FID needs at least 2 samples, got {n}.')
  mu_ref = np.asarray(mu_ref, np.float64)
  sigma_ref = np.asarray(sigma_ref, np.float64)
  if mu_ref.shape != (d,) or sigma_ref.shape != (d, d):
    raise ValueError(f'Reference statistics of shapes {mu_ref.shape}, {sigma_ref.shape} do not '
                     f'match {d}-dimensional features.')
  if not all(np.all(np.isfinite(a)) for a in (x, mu_ref, sigma_ref)):
    raise ValueError('FID inputs contain NaN or Inf.')
  mu = x.mean(axis=0)
  xc = x - mu
  m = xc @ sigma_ref @ xc.T / (n - 1)
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  # Round-off-level eigenvalues (the one of the centering direction, at least) are 0.
  w = np.where(w > np.max(np.abs(w), initial=0.0) * n * np.finfo(np.float64).eps, w, 0.0)
  diff = mu - mu_ref
  return float(diff @ diff + np.sum(xc * xc) / (n - 1) + np.trace(sigma_ref)
               - 2.0 * np.sum(np.sqrt(w)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits, num_splits: int = 10) -> tuple[float, float]:
  """Inception Score from classifier logits `[N, C]` (C = 1008 for the FID Inception).

  The samples are cut IN ORDER into `num_splits` parts of N // num_splits samples (the
  remainder is dropped, as in Salimans et al.'s code); each part's score is
  exp(mean_x KL(p(y|x) || mean_x p(y|x))) with p = softmax(logits) in float64.
  Returns (mean, std) over the parts (std is 0.0 for one split). `num_splits=1` is
  TF-GAN's `classifier_score_from_logits`, as reported by score_sde.
  """
  logits = _as_2d_float64(logits, 'logits')
  n = logits.shape[0]
  if num_splits < 1 or n // num_splits < 1:
    raise ValueError(f'cannot cut {n} samples into {num_splits} splits.')
  size = n // num_splits
  scores = []
  for k in range(num_splits):
    log_p = _log_softmax(logits[k * size:(k + 1) * size])
    p = np.exp(log_p)
    # log of the marginal, computed stably as logsumexp over samples minus log(size).
    log_q = scipy.special.logsumexp(log_p, axis=0) - math.log(size)
    kl = np.sum(p * (log_p - log_q), axis=1)
    scores.append(math.exp(float(np.mean(kl))))
  return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(act1, act2, max_block_size: int = 1024) -> tuple[float, float]:
  """KID (unbiased MMD^2, cubic polynomial kernel) between features `[N1, D]`, `[N2, D]`.

  TF-GAN's block estimator (see module docstring). Returns (estimate, standard error);
  the standard error is NaN with a single block. Multiply by 1e3 for the usual
  "KID x 10^3" tables.
  """
  x = _as_2d_float64(act1, 'act1')
  y = _as_2d_float64(act2, 'act2')
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'feature dims differ: {x.shape[1]} vs {y.shape[1]}.')
  if max_block_size < 2:
    raise ValueError(f'max_block_size must be >= 2, got {max_block_size}.')
  n_x, n_y, dim = x.shape[0], y.shape[0], x.shape[1]
  n_blocks = math.ceil(max(n_x, n_y) / max_block_size)
  bounds_x = _block_bounds(n_x, n_blocks)
  bounds_y = _block_bounds(n_y, n_blocks)
  if min(np.diff(bounds_x).min(), np.diff(bounds_y).min()) < 2:
    raise ValueError(f'KID needs at least 2 samples of each set per block; got {n_x} and '
                     f'{n_y} samples in {n_blocks} block(s).')
  ests = []
  for i in range(n_blocks):
    r = x[bounds_x[i]:bounds_x[i + 1]]
    g = y[bounds_y[i]:bounds_y[i + 1]]
    m, n = r.shape[0], g.shape[0]
    k_rr = (r @ r.T / dim + 1.0) ** 3
    k_gg = (g @ g.T / dim + 1.0) ** 3
    k_rg = (r @ g.T / dim + 1.0) ** 3
    ests.append((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
                + (k_gg.sum() - np.trace(k_gg)) / (n * (n - 1))
                - 2.0 * k_rg.mean())
  ests = np.asarray(ests)
  mean = float(ests.mean())
  if n_blocks <= 1:
    return mean, float('nan')
  return mean, float(np.sqrt(ests.var(ddof=1) / n_blocks))


def _block_bounds(n: int, n_blocks: int) -> np.ndarray:
  # Sizes differ by at most one; the larger blocks come last (TF-GAN's layout).
  base, extra = divmod(n, n_blocks)
  sizes = [base] * (n_blocks - extra) + [base + 1] * extra
  return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


# ---------------------------------------------------------------------------
# Statistics files.
# ---------------------------------------------------------------------------


def load_statistics(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a statistics / activations `.npz`.

  Accepted layouts:
    * `mu` [D] and `sigma` [D, D] (TTUR, pytorch-fid, EDM, and `save_statistics`);
    * `pool_3` [N, D] raw activations (score_sde's `cifar10_stats.npz`, and our sample
      statistics); mu/sigma are then computed from them;
    * optionally `logits` [N, 1008] (score_sde sample statistics), kept for IS;
    * optionally `preprocessing`, a string (see module docstring).
  Returns a dict with float64 `mu`, `sigma`, `preprocessing` (a str; UNRECORDED_PREPROCESSING
  when the file has none) and, when present, `pool_3` and `logits`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No statistics file at {path!r}.')
  with np.load(path, allow_pickle=False) as f:
    files = set(f.files)
    out: dict[str, Any] = {}
    if 'pool_3' in files:
      out['pool_3'] = np.asarray(f['pool_3'])
    if 'logits' in files:
      out['logits'] = np.asarray(f['logits'])
    out['preprocessing'] = (str(f['preprocessing']) if 'preprocessing' in files
                            else UNRECORDED_PREPROCESSING)
    if {'mu', 'sigma'} <= files:
      out['mu'] = np.asarray(f['mu'], np.float64)
      out['sigma'] = np.asarray(f['sigma'], np.float64)
    elif 'pool_3' in out:
      out['mu'], out['sigma'] = activation_statistics(
          out['pool_3'].reshape(out['pool_3'].shape[0], -1))
    else:
      raise ValueError(f'{path} has neither mu/sigma nor pool_3 activations '
                       f'(keys: {sorted(files)}).')
  return out


def save_statistics(path: str | os.PathLike, pool_3, logits=None,
                    preprocessing: str | None = UNRECORDED_PREPROCESSING) -> dict[str, np.ndarray]:
  """Writes `mu`, `sigma` (float64) and the raw `pool_3` (and `logits`) to `path`.

  `preprocessing`: the Inception preprocessing the activations were made with, recorded as
  a string array under `preprocessing` (None: not recorded). The file is readable by
  `load_statistics`, pytorch-fid (`mu`/`sigma`) and score_sde (`pool_3`). Returns what was
  written (`preprocessing` as a str).
  """
  pool_3 = np.asarray(pool_3)
  mu, sigma = activation_statistics(pool_3)
  out = {'mu': mu, 'sigma': sigma, 'pool_3': pool_3}
  if logits is not None:
    out['logits'] = np.asarray(logits)
  arrays = dict(out)
  if preprocessing is not None:
    out['preprocessing'] = str(preprocessing)
    arrays['preprocessing'] = np.asarray(out['preprocessing'])  # unicode: read without pickle
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_npz(path, compressed=False, **arrays)
  return out


def statistics_preprocessing(stats: dict) -> str:
  """The preprocessing of statistics from `load_statistics` / `fid.compute_statistics`
  (UNRECORDED_PREPROCESSING when they carry none)."""
  return str(stats.get('preprocessing', UNRECORDED_PREPROCESSING))


def check_same_preprocessing(a: dict, b: dict, name_a: str = 'the first statistics',
                             name_b: str = 'the second') -> str:
  """Raises a one-line ValueError unless statistics `a` and `b` share one preprocessing.

  A FID between features of differently resized / scaled images measures that difference
  too (the same 32x32 digits: FID 5.9, 5.6 or 9.0 by preprocessing, benchmarks/RESULTS.md).
  Returns the preprocessing.
  """
  pa, pb = statistics_preprocessing(a), statistics_preprocessing(b)
  if pa != pb:
    raise ValueError(f'{name_a} was made with {pa!r} Inception preprocessing and {name_b} '
                     f'with {pb!r}: their FID would measure the preprocessing too; compute '
                     'both with one (the FID command\'s --preprocessing).')
  return pa
