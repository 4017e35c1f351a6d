"""FID / IS / KID against closed forms and straightforward numpy/scipy implementations."""
import math

import numpy as np
import pytest
import scipy.linalg

from scoresde_jax.evaluation import fid
from scoresde_jax.evaluation import metrics


def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d + (0.0 if rank else 0.1) * np.eye(d)


# ---------------------------------------------------------------------------
# Matrix square roots.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('rank', [None, 3])
def test_sqrtm_psd_matches_scipy(rank):
  rng = np.random.RandomState(0)
  m = _random_spd(rng, 8, rank)
  got = metrics.sqrtm_psd(m)
  expected = scipy.linalg.sqrtm(m).real
  np.testing.assert_allclose(got, expected, atol=1e-6)
  np.testing.assert_allclose(got @ got, m, atol=1e-10)


def test_trace_sqrt_product_matches_scipy_sqrtm_of_product():
  rng = np.random.RandomState(1)
  s1, s2 = _random_spd(rng, 10), _random_spd(rng, 10)
  expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
  assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-10)
  assert metrics.trace_sqrt_product(s2, s1) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------
# FID.
# ---------------------------------------------------------------------------


def test_fid_closed_forms():
  rng = np.random.RandomState(2)
  d = 6
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  dmu2 = np.sum((mu1 - mu2) ** 2)
  # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2.
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  expected = dmu2 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-12)
  # Identity vs a full covariance with eigenvalues l: sum (1 - sqrt(l))^2.
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  lam = rng.uniform(0.2, 4, d)
  s2 = (q * lam) @ q.T
  got = metrics.frechet_distance(mu1, np.eye(d), mu2, s2)
  assert got == pytest.approx(dmu2 + np.sum((1 - np.sqrt(lam)) ** 2), rel=1e-10)
  # Scaled covariance c^2 S: (1 - c)^2 tr(S).
  s = _random_spd(rng, d)
  got = metrics.frechet_distance(mu1, s, mu1, 2.25 * s)
  assert got == pytest.approx(0.25 * np.trace(s), rel=1e-10)


def test_fid_symmetric_zero_for_identical_and_matches_pytorch_fid_formula():
  rng = np.random.RandomState(3)
  x = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
  y = 0.5 + rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
  mu1, s1 = metrics.activation_statistics(x)
  mu2, s2 = metrics.activation_statistics(y)
  np.testing.assert_allclose(mu1, x.mean(0))
  np.testing.assert_allclose(s1, np.cov(x, rowvar=False))  # unbiased (ddof=1)
  f12 = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert f12 == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
  # pytorch-fid / TTUR formula: tr(sqrtm(S1 S2)) from scipy.
  diff = mu1 - mu2
  expected = diff @ diff + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
  assert f12 == pytest.approx(expected, rel=1e-9)
  assert metrics.fid_from_activations(x, y) == pytest.approx(f12, rel=1e-12)
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)


def test_fid_zero_for_identical_singular_covariance():
  # Fewer samples than dimensions: rank-deficient covariance, where sqrtm(S1 S2) of
  # the product is numerically delicate.
  rng = np.random.RandomState(4)
  x = rng.standard_normal((20, 64)) * 10
  mu, s = metrics.activation_statistics(x)
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)
  assert metrics.frechet_distance(mu, s, mu + 1.0, s) == pytest.approx(64.0, rel=1e-8)


def test_fid_from_samples_approaches_gaussian_closed_form():
  rng = np.random.RandomState(5)
  d, n = 4, 200_000
  a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([2.0, 1.0, 0.5, 1.0])
  x = rng.standard_normal((n, d)) * np.sqrt(a)
  y = 1.0 + rng.standard_normal((n, d)) * np.sqrt(b)
  expected = d * 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert metrics.fid_from_activations(x, y) == pytest.approx(expected, rel=0.02)


def test_fid_input_errors():
  with pytest.raises(ValueError, match='equal length'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r'\[3, 3\]'):
    metrics.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='NaN'):
    metrics.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match='at least 2 samples'):
    metrics.activation_statistics(np.zeros((1, 3)))


# ---------------------------------------------------------------------------
# Inception Score.
# ---------------------------------------------------------------------------


def _naive_inception_score(logits, splits):
  # Salimans et al.: softmax, then per split exp(mean KL(p(y|x) || p(y))).
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n = logits.shape[0] // splits
  scores = []
  for k in range(splits):
    part = p[k * n:(k + 1) * n]
    py = part.mean(0)
    kl = (part * (np.log(part) - np.log(py))).sum(1)
    scores.append(np.exp(kl.mean()))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize('splits', [1, 10])
def test_inception_score_matches_naive(splits):
  rng = np.random.RandomState(6)
  logits = 3.0 * rng.standard_normal((1005, 1008)).astype(np.float32)  # 5 left over
  mean, std = metrics.inception_score(logits, num_splits=splits)
  exp_mean, exp_std = _naive_inception_score(logits.astype(np.float64), splits)
  assert mean == pytest.approx(exp_mean, rel=1e-10)
  assert std == pytest.approx(exp_std, rel=1e-8, abs=1e-12)


def test_inception_score_limits():
  # Confident predictions spread evenly over k classes give IS = k; uniform gives 1.
  k = 7
  logits = np.full((70, 1008), -1e3)
  logits[np.arange(70), np.arange(70) % k] = 1e3
  assert metrics.inception_score(logits, num_splits=1)[0] == pytest.approx(k, rel=1e-9)
  assert metrics.inception_score(np.zeros((50, 1008)), 5)[0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='splits'):
    metrics.inception_score(np.zeros((5, 10)), num_splits=10)


# ---------------------------------------------------------------------------
# KID.
# ---------------------------------------------------------------------------


def _naive_mmd2(x, y):
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  m, n = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return kxx + kyy - 2 * kxy


def test_kid_single_block_matches_naive():
  rng = np.random.RandomState(7)
  x, y = rng.standard_normal((7, 5)), 0.3 + rng.standard_normal((9, 5))
  kid, std = metrics.kernel_inception_distance(x, y)
  assert kid == pytest.approx(_naive_mmd2(x, y), rel=1e-10)
  assert math.isnan(std)


def test_kid_blocks_match_tfgan_layout():
  rng = np.random.RandomState(8)
  x, y = rng.standard_normal((10, 4)), rng.standard_normal((13, 4)) * 1.5
  # ceil(13 / 4) = 4 blocks; x in blocks of 2, 2, 3, 3 and y of 3, 3, 3, 4, in order.
  bx, by = [0, 2, 4, 7, 10], [0, 3, 6, 9, 13]
  ests = [_naive_mmd2(x[bx[i]:bx[i + 1]], y[by[i]:by[i + 1]]) for i in range(4)]
  kid, std = metrics.kernel_inception_distance(x, y, max_block_size=4)
  assert kid == pytest.approx(np.mean(ests), rel=1e-10)
  assert std == pytest.approx(np.std(ests, ddof=1) / 2.0, rel=1e-10)


def test_kid_unbiased_near_zero_for_same_distribution():
  rng = np.random.RandomState(9)
  x, y = rng.standard_normal((3000, 8)), rng.standard_normal((3000, 8))
  kid, std = metrics.kernel_inception_distance(x, y, max_block_size=1000)
  assert abs(kid) < 4 * std
  kid_shift, std_shift = metrics.kernel_inception_distance(x, y + 0.5, max_block_size=1000)
  assert kid_shift > 10 * std_shift


def test_kid_errors():
  with pytest.raises(ValueError, match='feature dims'):
    metrics.kernel_inception_distance(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match='at least 2 samples'):
    metrics.kernel_inception_distance(np.zeros((3, 2)), np.zeros((9, 2)), max_block_size=3)


# ---------------------------------------------------------------------------
# Statistics files and the command line.
# ---------------------------------------------------------------------------


def test_load_statistics_formats(tmp_path):
  rng = np.random.RandomState(10)
  acts = rng.standard_normal((50, 6)).astype(np.float32)
  np.savez(tmp_path / 'scoresde.npz', pool_3=acts)  # score_sde's cifar10_stats.npz layout
  np.savez(tmp_path / 'mu_sigma.npz', mu=np.ones(6), sigma=2 * np.eye(6))  # pytorch-fid/EDM
  np.savez(tmp_path / 'junk.npz', foo=np.zeros(3))
  s = metrics.load_statistics(tmp_path / 'scoresde.npz')
  np.testing.assert_allclose(s['mu'], acts.astype(np.float64).mean(0))
  np.testing.assert_allclose(s['sigma'], np.cov(acts.astype(np.float64), rowvar=False))
  np.testing.assert_array_equal(s['pool_3'], acts)
  s = metrics.load_statistics(tmp_path / 'mu_sigma.npz')
  np.testing.assert_array_equal(s['sigma'], 2 * np.eye(6))
  assert 'pool_3' not in s
  with pytest.raises(ValueError, match='neither mu/sigma nor pool_3'):
    metrics.load_statistics(tmp_path / 'junk.npz')
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    metrics.load_statistics(tmp_path / 'missing.npz')
  logits = rng.standard_normal((50, 1008))
  written = metrics.save_statistics(tmp_path / 'out.npz', acts, logits)
  s = metrics.load_statistics(tmp_path / 'out.npz')
  for key in ('mu', 'sigma', 'pool_3', 'logits'):
    np.testing.assert_array_equal(s[key], written[key])


def test_statistics_file_survives_a_crash_while_overwriting(tmp_path, monkeypatch):
  rng = np.random.RandomState(12)
  path = tmp_path / 'stats.npz'
  first = metrics.save_statistics(path, rng.standard_normal((30, 4)))

  def crash_midway(file, **arrays):
    file.write(b'PK half a zip')
    raise KeyboardInterrupt

  monkeypatch.setattr(np, 'savez', crash_midway)
  with pytest.raises(KeyboardInterrupt):
    metrics.save_statistics(path, rng.standard_normal((30, 4)))
  monkeypatch.undo()
  kept = metrics.load_statistics(path)
  np.testing.assert_array_equal(kept['pool_3'], first['pool_3'])
  assert [p.name for p in tmp_path.iterdir()] == ['stats.npz']


def test_cli_on_npz_files(tmp_path, capsys):
  rng = np.random.RandomState(11)
  a = rng.standard_normal((60, 5))
  b = 0.2 + rng.standard_normal((40, 5))
  logits = rng.standard_normal((60, 1008))
  np.savez(tmp_path / 'a.npz', pool_3=a, logits=logits)
  np.savez(tmp_path / 'b.npz', pool_3=b)
  res = fid.main([str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')])
  assert res['fid'] == pytest.approx(metrics.fid_from_activations(a, b), rel=1e-12)
  assert res['kid'] == pytest.approx(_naive_mmd2(a, b), rel=1e-9)
  assert res['is_A'] == pytest.approx(_naive_inception_score(logits, 10)[0], rel=1e-10)
  out = capsys.readouterr().out
  assert 'FID: ' in out and 'KID: ' in out and 'Inception Score A' in out
  # mu/sigma-only stats: FID only.
  mu, sigma = metrics.activation_statistics(b)
  np.savez(tmp_path / 'c.npz', mu=mu, sigma=sigma)
  res = fid.main([str(tmp_path / 'a.npz'), str(tmp_path / 'c.npz')])
  assert set(res) == {'fid', 'is_A'}
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    fid.main([str(tmp_path / 'a.npz'), str(tmp_path / 'nope.npz')])
