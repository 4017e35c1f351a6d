"""Inception-v3 of TF's 2015-12-05 graph (the FID / IS network) in Flax linen.

The architecture is the one pytorch-fid runs with its `pt_inception-2015-12-05-6726825d`
weights (`FIDInceptionA/C/E_1/E_2`), which differs from the usual Inception-v3:
  * the average-pool branch of the A, C and first E blocks (Mixed_5b-d, Mixed_6b-e,
    Mixed_7b) does not count padded zeros (TF's `avg_pool`, `count_include_pad=False`);
  * the last block (Mixed_7c) pools its pool branch with a 3x3 MAX pool instead;
  * the classifier is a 1008-way `fc` (with bias) on the 2048-d `pool_3` features;
  * BatchNorm epsilon is 1e-3 (running statistics only: inference).

Parameter names mirror the torch module tree (`Mixed_5b/branch1x1/conv/kernel`,
`.../bn/scale`, batch_stats `.../bn/mean`), so `convert_torch_state_dict` is a rename
plus a transpose. Compute is float32 with `Precision.HIGHEST` (no TF32/bf16 passes on
GPU/TPU, which would move FID in the 2nd-3rd digit).

Preprocessing (`preprocess`) is pytorch-fid's: images in [0, 255] are divided by 255,
resized to 299x299 with bilinear interpolation WITHOUT antialiasing and with half-pixel
centers (`F.interpolate(mode='bilinear', align_corners=False)` == `jax.image.resize(
'bilinear', antialias=False)`, checked against torch in tests/test_inception.py, also for
downsizing), then mapped to [-1, 1] by 2x - 1. Note that TF-GAN's graph (used by the
reference score_sde code through TF-Hub) resizes inside TF, whose legacy bilinear resize
did not use half-pixel centers; numbers can differ slightly from the reference's.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import parallel

INCEPTION_IMAGE_SIZE = 299
POOL_FEATURES = 2048
NUM_LOGITS = 1008
BN_EPSILON = 1e-3

_HIGHEST = jax.lax.Precision.HIGHEST


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  ph, pw = (p, p) if isinstance(p, int) else p
  return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (running stats, eps 1e-3) -> ReLU, NHWC."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel_size, strides=(self.strides, self.strides),
                padding=_pad(self.padding), use_bias=False, precision=_HIGHEST,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  # TF's avg_pool with SAME padding averages over in-image pixels only.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3, avg-pool branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv2d(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv2d(64, (5, 5), padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, (3, 3), padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, (3, 3), padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, (3, 3), padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convolutions (Mixed_6b-e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv2d(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv2d(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded filter banks (Mixed_7b: avg pool, Mixed_7c: max pool)."""
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv2d(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
    ], axis=-1)
    bd = BasicConv2d(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, (3, 3), padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
    ], axis=-1)
    if self.pool == 'avg':
      bp = _avg_pool_3x3_same(x)
    elif self.pool == 'max':
      # Max pool here is a quirk of the 2015-12-05 graph that FID numbers depend on.
      bp = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f'pool must be "avg" or "max", got {self.pool!r}')
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(bp)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3. `x: [B, 299, 299, 3]` float32 in [-1, 1].

  Returns `{'pool_3': [B, 2048], 'logits': [B, 1008]}` (float32). Other spatial sizes
  (>= 75) run too, but FID/IS are defined at 299x299.
  """

  @nn.compact
  def __call__(self, x):
    x = BasicConv2d(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, (3, 3), padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)
    pool_3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=_HIGHEST, name='fc')(pool_3)
    return {'pool_3': pool_3, 'logits': logits}


# ---------------------------------------------------------------------------
# Input checking and preprocessing.
# ---------------------------------------------------------------------------


def check_images(images, check_range: bool = True) -> None:
  """Raises ValueError unless `images` is a [B, H, W, 3] batch of pixels in [0, 255].

  Accepts uint8 or floating dtypes. With `check_range` and a concrete (non-traced)
  array, also checks the values (one device->host transfer of two scalars), and
  warns when float values all lie in (0, 1] (likely [0, 1] images).
  """
  shape = getattr(images, 'shape', None)
  dtype = getattr(images, 'dtype', None)
  if shape is None or dtype is None:
    raise ValueError(f'images must be an array of shape [B, H, W, 3], got {type(images)}.')
  if len(shape) != 4 or shape[-1] != 3:
    hint = ''
    if len(shape) == 4 and shape[1] == 3:
      hint = ' It looks channels-first (NCHW); transpose to NHWC.'
    elif len(shape) == 3:
      hint = ' Add a batch axis for a single image.'
    elif len(shape) == 4 and shape[-1] == 1:
      hint = ' Grayscale images: repeat the channel 3 times.'
    raise ValueError(f'images must have shape [B, H, W, 3] (NHWC, RGB), got {tuple(shape)}.'
                     + hint)
  if shape[0] == 0 or shape[1] < 1 or shape[2] < 1:
    raise ValueError(f'images must be a non-empty batch, got shape {tuple(shape)}.')
  dtype = np.dtype(dtype)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise ValueError(f'images must be uint8 or float with values in [0, 255], got dtype '
                     f'{dtype}.')
  if check_range and dtype != np.uint8 and not isinstance(images, jax.core.Tracer):
    # On device arrays reduce on device: np.min would copy the whole batch to host.
    xp = jnp if isinstance(images, jax.Array) else np
    lo, hi = float(xp.min(images)), float(xp.max(images))
    if not (np.isfinite(lo) and np.isfinite(hi)):
      raise ValueError('images contain NaN or Inf.')
    if lo < 0.0 or hi > 255.0:
      hint = (' They look like [-1, 1] images: map them with (x + 1) * 127.5.'
              if lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6 else '')
      raise ValueError(f'images must have values in [0, 255], got range [{lo:g}, {hi:g}].'
                       + hint)
    if 0.0 < hi <= 1.0:
      # Legal but almost surely [0, 1] images (e.g. raw sampler output): FID would be
      # computed on near-black images.
      warnings.warn(f'float images have values in [{lo:g}, {hi:g}]: expected [0, 255]. '
                    'Multiply [0, 1] images by 255.', stacklevel=2)


def preprocess(images: jax.Array, size: int = INCEPTION_IMAGE_SIZE) -> jax.Array:
  """`images: [B, H, W, 3]` in [0, 255] (uint8/float) -> `[B, size, size, 3]` in [-1, 1].

  pytorch-fid's order: scale to [0, 1], bilinear resize (half-pixel centers, no
  antialias; identity when H = W = size), then 2x - 1. float32 throughout.
  """
  x = images.astype(jnp.float32) / 255.0
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method='bilinear',
                         antialias=False)
  return 2.0 * x - 1.0


_MODULE = InceptionV3()


@jax.jit
def inception_features(variables: Any, images: jax.Array) -> dict[str, jax.Array]:
  """Pure jitted FID features: `images: [B, H, W, 3]` in [0, 255] (uint8 or float).

  `variables` is `{'params': ..., 'batch_stats': ...}` (see `weights.load_inception`).
  Returns `{'pool_3': [B, 2048], 'logits': [B, 1008]}` float32. Inputs may be sharded
  along the batch axis (e.g. over a 'data' mesh axis); outputs follow that sharding.
  This does not validate: call `check_images` first (or use `compute_features`).
  """
  return _MODULE.apply(variables, preprocess(images))


def compute_features(variables: Any, images, check_range: bool = True) -> dict[str, jax.Array]:
  """`inception_features` after `check_images` (clear errors for bad shapes/ranges)."""
  check_images(images, check_range=check_range)
  return inception_features(variables, images)


def init_random_variables(rng: jax.Array) -> Any:
  """Random (untrained) variables with the real tree structure, for tests/benchmarks.

  BatchNorm statistics are the identity (mean 0, var 1); conv kernels use He scaling
  so activations stay O(1) through the 94 conv layers.
  """
  shapes = variable_shapes()
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(rng, len(leaves))
  out = []
  for (path, shape), key in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = int(np.prod(shape.shape[:-1]))
      out.append(jax.random.normal(key, shape.shape, jnp.float32) * np.sqrt(2.0 / fan_in))
    elif name.endswith("['scale']") or name.endswith("['var']"):
      out.append(jnp.ones(shape.shape, jnp.float32))
    else:
      out.append(jnp.zeros(shape.shape, jnp.float32))
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=1)
def _variable_shapes():
  return jax.eval_shape(_MODULE.init, jax.random.key(0),
                        jnp.zeros((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3)))


def variable_shapes() -> Any:
  """The variables tree of `InceptionV3` as `jax.ShapeDtypeStruct` leaves."""
  return _variable_shapes()


def sharded_features(variables: Any, images, mesh: jax.sharding.Mesh | None = None,
                     check_range: bool = True) -> dict[str, np.ndarray]:
  """Features of a host batch, split over the mesh's 'data' axis, gathered to numpy.

  `images: [B, H, W, 3]` in [0, 255] on the host. The batch is padded (by repeating the
  last image) to a multiple of the number of devices; padding rows are dropped from the
  result. Variables are replicated. Returns `{'pool_3': [B, 2048], 'logits': [B, 1008]}`
  as float32 numpy arrays.
  """
  check_images(images, check_range=check_range)
  mesh = parallel.make_mesh() if mesh is None else mesh
  images = np.asarray(images)
  n = images.shape[0]
  n_dev = mesh.shape['data']
  pad = (-n) % n_dev
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)], axis=0)
  x = jax.device_put(images, parallel.data_sharding(mesh))
  variables = jax.device_put(variables, parallel.replicated(mesh))
  out = inception_features(variables, x)
  return {k: np.asarray(v)[:n] for k, v in out.items()}
