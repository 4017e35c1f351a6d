"""FIR up/downsampling in plain JAX against direct numpy loops and reference outputs."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde_jax.models import up_or_down_sampling as uds

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def np_upfirdn(x, k, up, down, pad0, pad1):
  """Direct definition, one image axis at a time: zero-insert, pad/crop, convolve, decimate."""
  n, h, w, c = x.shape
  kh = k.shape[0]
  # 1. zero insertion (up - 1 zeros after each pixel).
  z = np.zeros((n, h * up, w * up, c), np.float64)
  z[:, ::up, ::up, :] = x
  # 2. pad with zeros / crop.
  size_h, size_w = h * up + pad0 + pad1, w * up + pad0 + pad1
  p = np.zeros((n, size_h, size_w, c), np.float64)
  for i in range(size_h):
    for j in range(size_w):
      si, sj = i - pad0, j - pad0
      if 0 <= si < h * up and 0 <= sj < w * up:
        p[:, i, j] = z[:, si, sj]
  # 3. 'valid' true convolution with k: out[i] = sum_a p[i + a] * k[kh - 1 - a].
  out_h, out_w = size_h - kh + 1, size_w - kh + 1
  o = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    for j in range(out_w):
      for a in range(kh):
        for b in range(kh):
          o[:, i, j] += p[:, i + a, j + b] * k[kh - 1 - a, kh - 1 - b]
  # 4. decimation.
  return o[:, ::down, ::down]


def np_correlate_valid(x, w, stride=1):
  """Cross-correlation, 'valid': x [N, H, W, I], w [kh, kw, I, O]."""
  kh, kw = w.shape[:2]
  n, h, wd, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  o = np.zeros((n, oh, ow, w.shape[3]))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      o[:, i, j] = np.einsum('nabi,abio->no', patch, w)
  return o


def _kernel2d(k):
  k = np.asarray(k, np.float64)
  k = np.outer(k, k) if k.ndim == 1 else k
  return k / k.sum()


@pytest.fixture(scope='module')
def x():
  return np.random.RandomState(0).randn(2, 6, 6, 3).astype(np.float32)


@pytest.mark.parametrize('up,down,pad0,pad1', [
    (1, 1, 0, 0), (2, 1, 2, 1), (1, 2, 1, 1), (3, 1, 1, 2), (2, 2, 2, 1), (1, 1, -1, 2),
    (2, 1, -1, -2)])
def test_upfirdn2d_matches_numpy(x, up, down, pad0, pad1):
  k = np.random.RandomState(1).rand(4, 4).astype(np.float32)  # asymmetric: tests the flip
  got = np.asarray(uds.upfirdn2d(x, k, up=up, down=down, pad0=pad0, pad1=pad1))
  want = np_upfirdn(x, k, up, down, pad0, pad1)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('k', [(1, 3, 3, 1), (1, 2, 1), (1, 1), None])
def test_upsample_2d(x, k):
  got = np.asarray(uds.upsample_2d(x, k, factor=2))
  kk = _kernel2d(k if k is not None else [1, 1]) * 4
  p = kk.shape[0] - 2
  want = np_upfirdn(x, kk, 2, 1, (p + 1) // 2 + 1, p // 2)
  assert got.shape == (2, 12, 12, 3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('k', [(1, 3, 3, 1), (1, 2, 1), (1, 1), None])
def test_downsample_2d(x, k):
  got = np.asarray(uds.downsample_2d(x, k, factor=2))
  kk = _kernel2d(k if k is not None else [1, 1])
  p = kk.shape[0] - 2
  want = np_upfirdn(x, kk, 1, 2, (p + 1) // 2, p // 2)
  assert got.shape == (2, 3, 3, 3)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_default_kernels_are_nearest_and_average(x):
  # [1, 1] upsampling is nearest-neighbour; downsampling is 2x2 average pooling.
  np.testing.assert_allclose(np.asarray(uds.upsample_2d(x)), x.repeat(2, 1).repeat(2, 2),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(uds.downsample_2d(x)),
                             x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(uds.naive_upsample_2d(x)), x.repeat(2, 1).repeat(2, 2))
  np.testing.assert_allclose(np.asarray(uds.naive_downsample_2d(x)),
                             x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4)), atol=1e-6)


def test_fir_preserves_constant_interior():
  ones = np.ones((1, 8, 8, 1), np.float32)
  up = np.asarray(uds.upsample_2d(ones, (1, 3, 3, 1), gain=1.))
  down = np.asarray(uds.downsample_2d(ones, (1, 3, 3, 1), gain=2.))
  np.testing.assert_allclose(up[0, 2:-2, 2:-2, 0], 1., atol=1e-6)
  np.testing.assert_allclose(down[0, 1:-1, 1:-1, 0], 2., atol=1e-6)


def np_upsample_conv(x, w, k):
  """Transposed conv (zero insertion + 'full' correlation) then FIR, padded once."""
  kh = w.shape[0]
  kk = _kernel2d(k) * 4
  n, h, wd, c = x.shape
  z = np.zeros((n, 2 * h - 1, 2 * wd - 1, c))
  z[:, ::2, ::2] = x
  z = np.pad(z, ((0, 0), (kh - 1, kh - 1), (kh - 1, kh - 1), (0, 0)))
  y = np_correlate_valid(z, w)
  p = (kk.shape[0] - 2) - (kh - 1)
  return np_upfirdn(y, kk, 1, 1, (p + 1) // 2 + 1, p // 2 + 1)


def np_conv_downsample(x, w, k):
  kh = w.shape[0]
  kk = _kernel2d(k)
  p = (kk.shape[0] - 2) + (kh - 1)
  y = np_upfirdn(x, kk, 1, 1, (p + 1) // 2, p // 2)
  return np_correlate_valid(y, w, stride=2)


@pytest.mark.parametrize('kname,k', [('k1331', (1, 3, 3, 1)), ('k121', (1, 2, 1)),
                                     ('k11', (1, 1))])
def test_fused_conv_resampling(kname, k):
  """Against numpy and against the (locally repaired) PyTorch reference outputs."""
  ref = np.load(os.path.join(FIXTURES, 'fir_conv_ref.npz'))
  x, w = ref['x'], ref['w_hwio']
  up = np.asarray(uds.upsample_conv_2d(x, w, k=k))
  down = np.asarray(uds.conv_downsample_2d(x, w, k=k))
  assert up.shape == (2, 12, 12, 4) and down.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(up, np_upsample_conv(x, w, k), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(down, np_conv_downsample(x, w, k), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(up, ref[f'upsample_conv_{kname}'], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(down, ref[f'conv_downsample_{kname}'], atol=1e-4, rtol=1e-4)


def test_bad_input_errors(x):
  with pytest.raises(ValueError, match='NHWC|N, H, W, C'):
    uds.upfirdn2d(x[0], np.ones((2, 2)))
  with pytest.raises(ValueError, match='up must be'):
    uds.upfirdn2d(x, np.ones((2, 2)), up=0)
  with pytest.raises(ValueError, match='sums to zero'):
    uds.upsample_2d(x, (1, -1))
  with pytest.raises(ValueError, match='channels'):
    uds.conv_downsample_2d(x, np.ones((3, 3, 5, 2), np.float32))


def _grouped_conv_upfirdn(x, k, up, down, pad0, pad1):
  """The filter as a 1-channel grouped convolution (this module's former formulation)."""
  cfg = [(0, 0, 0), (pad0, pad1 + up - 1, up - 1), (pad0, pad1 + up - 1, up - 1), (0, 0, 0)]
  x = jax.lax.pad(x, jnp.array(0, x.dtype), cfg)
  w = jnp.tile(jnp.asarray(k[::-1, ::-1], x.dtype)[:, :, None, None], (1, 1, 1, x.shape[-1]))
  return jax.lax.conv_general_dilated(x, w, (down, down), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=x.shape[-1])


@pytest.mark.parametrize('separable', [True, False])
@pytest.mark.parametrize('up,down,pad0,pad1', [(2, 1, 2, 1), (1, 2, 1, 1), (1, 1, 1, 2)])
def test_stencil_equals_grouped_convolution_with_gradients(separable, up, down, pad0, pad1):
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.randn(3, 16, 16, 5), jnp.float32)
  k = np.outer([1., 3., 3., 1.], [1., 2., 4., 1.]) if separable else rng.rand(4, 4)
  k = (k / k.sum()).astype(np.float32)
  cot = jnp.asarray(rng.randn(*uds.upfirdn2d(x, k, up, down, pad0, pad1).shape), jnp.float32)
  ours = lambda x: jnp.vdot(uds.upfirdn2d(x, k, up, down, pad0, pad1), cot)
  conv = lambda x: jnp.vdot(_grouped_conv_upfirdn(x, k, up, down, pad0, pad1), cot)
  np.testing.assert_allclose(uds.upfirdn2d(x, k, up, down, pad0, pad1),
                             _grouped_conv_upfirdn(x, k, up, down, pad0, pad1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(conv)(x), rtol=1e-5, atol=1e-6)


def test_resampling_compiles_without_grouped_convolutions():
  """The FIR filter is slices and adds: no convolution in the HLO, except the fused layers' own."""
  x = jnp.zeros((2, 8, 8, 4), jnp.bfloat16)
  w = jnp.zeros((3, 3, 4, 6), jnp.bfloat16)

  def convolutions(f, *args):
    return jax.jit(f).lower(*args).as_text().count('stablehlo.convolution')

  assert convolutions(lambda x: uds.upsample_2d(x, (1, 3, 3, 1)), x) == 0
  assert convolutions(lambda x: uds.downsample_2d(x, (1, 3, 3, 1)), x) == 0
  assert convolutions(lambda x, w: uds.upsample_conv_2d(x, w, (1, 3, 3, 1)), x, w) == 1
  assert convolutions(lambda x, w: uds.conv_downsample_2d(x, w, (1, 3, 3, 1)), x, w) == 1
  assert uds.upsample_2d(x, (1, 3, 3, 1)).dtype == jnp.bfloat16
