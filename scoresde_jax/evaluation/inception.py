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

Preprocessing (`preprocess(images, method=...)`, one of `PREPROCESSING`) turns pixels in
[0, 255] into the network's [-1, 1] input at 299x299. The network and weights are the same
for all three; FID tools differ only here, and FID moves with it (benchmarks/RESULTS.md):
  * 'pytorch_fid' (default): pytorch-fid's. x / 255, bilinear resize WITHOUT antialiasing
    and with half-pixel centers (`F.interpolate(mode='bilinear', align_corners=False)` ==
    `jax.image.resize('bilinear', antialias=False)`, checked against torch in
    tests/test_inception.py, also for downsizing), then 2x - 1.
  * 'tf': the TF 2015-12-05 graph's own, as TTUR's original FID code feeds it pixels in
    [0, 255]: its `ResizeBilinear` node is TF's legacy resize, `tf.compat.v1.image.
    resize_bilinear(align_corners=False, half_pixel_centers=False)` (source coordinate =
    dst * in / out, no half-pixel offset, no antialiasing), then its Sub / Mul nodes,
    (x - 128) / 128 = x / 128 - 1. (The reference score_sde code instead maps pixels with
    (x - 127.5) / 127.5 before TF-Hub's TF-GAN module: none of these three exactly.)
  * 'clean_fid': clean-fid's default mode ('clean'). Each channel resized as a float32
    image with PIL's antialiased bicubic filter, clipped to [0, 255] and not quantized, then
    x / 128 - 1 (the scaling clean-fid's TorchScript Inception wrapper applies). The PIL
    resize runs on the host (numpy, before the device): not a jax op, it cannot run under
    `jit` or on a traced array.
Images already 299x299 are not resized by any of them (each resize is then the identity).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import errors, parallel

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


# Preprocessing names, and the FID implementation whose input each reproduces (module
# docstring): pytorch-fid, the TF 2015-12-05 graph's own (TTUR), clean-fid.
PREPROCESSING = ('pytorch_fid', 'tf', 'clean_fid')
DEFAULT_PREPROCESSING = 'pytorch_fid'


def check_preprocessing(method) -> str:
  """`method` if it is one of `PREPROCESSING`; else an `errors.ArgumentError` (a ValueError)."""
  if not isinstance(method, str) or method not in PREPROCESSING:
    raise errors.ArgumentError(
        'preprocessing', "{name}={value!r} is not an Inception preprocessing; use one of "
        + ', '.join(repr(m) for m in PREPROCESSING) + '.', value=method)
  return method


def _size_hw(size) -> tuple[int, int]:
  return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def _tf_legacy_grid(in_size: int, out_size: int):
  """One axis of TF's legacy bilinear sampling grid: (lower [out], upper [out], lerp [out]).

  As TF's `resize_bilinear` kernel computes it with align_corners=False and
  half_pixel_centers=False, in float32: scale = in / out, source = dst * scale (no
  half-pixel offset), lower = floor(source), upper = min(ceil(source), in - 1) (clamped at
  the edge), lerp = source - floor(source). Static (shape-only) numpy values.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  floor = np.floor(src)
  lower = np.maximum(floor.astype(np.int64), 0)
  upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
  return lower, upper, (src - floor).astype(np.float32)


def resize_tf_legacy(images, size=INCEPTION_IMAGE_SIZE) -> jax.Array:
  """TF's legacy bilinear resize: `[B, H, W, C]` -> `[B, h, w, C]` float32 (`size`: int or (h, w)).

  `tf.compat.v1.image.resize_bilinear(images, size, align_corners=False,
  half_pixel_centers=False)` (the `ResizeBilinear` node of the 2015-12-05 Inception graph):
  the grid of `_tf_legacy_grid` on each axis, no antialiasing; each output pixel is
  top + (bottom - top) * y_lerp with top / bottom = left + (right - left) * x_lerp, TF's
  order of operations. A jax op (jit-able): the grid depends on shapes only.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  out_h, out_w = _size_hw(size)
  y_lo, y_hi, y_lerp = _tf_legacy_grid(x.shape[1], out_h)
  x_lo, x_hi, x_lerp = _tf_legacy_grid(x.shape[2], out_w)
  x_lerp = x_lerp[None, None, :, None]

  def horizontal(rows):
    left, right = rows[:, :, x_lo], rows[:, :, x_hi]
    return left + (right - left) * x_lerp

  top, bottom = horizontal(x[:, y_lo]), horizontal(x[:, y_hi])
  return top + (bottom - top) * y_lerp[None, :, None, None]


def resize_clean_fid(images, size=INCEPTION_IMAGE_SIZE) -> np.ndarray:
  """clean-fid's resize, on the host: `[B, H, W, C]` in [0, 255] -> float32 numpy `[B, h, w, C]`
  (`images` itself, untouched, when it is h x w already).

  Each channel of each image becomes a float32 PIL image (mode 'F'), is resized with
  `Image.resize((w, h), BICUBIC)` (PIL's antialiased bicubic: the filter widens by the
  downscaling factor) and clipped to [0, 255], without rounding to 8 bits: clean-fid's
  `make_resizer('PIL', quantize_after=False, 'bicubic', (299, 299))`. PIL runs on the
  CPU, so this is not a jax op: it cannot run under `jit` (a traced array is refused), and
  device arrays are copied to the host first. `size`: int or (h, w).
  """
  out_h, out_w = _size_hw(size)
  if tuple(images.shape[1:3]) == (out_h, out_w):
    return images  # Nothing to resize (also under jit).
  if isinstance(images, jax.core.Tracer):
    raise ValueError("preprocessing='clean_fid' resizes with PIL on the host and cannot run "
                     'under jit: resize first with inception.resize_clean_fid (or pass '
                     f'{out_h}x{out_w} images).')
  from PIL import Image  # Only this preprocessing needs PIL.

  x = np.asarray(images, np.float32)
  out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), np.float32)
  for i in range(x.shape[0]):
    for c in range(x.shape[3]):
      channel = Image.fromarray(np.ascontiguousarray(x[i, :, :, c]))  # float32 -> mode 'F'
      out[i, :, :, c] = np.asarray(channel.resize((out_w, out_h), Image.Resampling.BICUBIC))
  return np.clip(out, 0.0, 255.0, out=out)


def preprocess(images: jax.Array, size: int = INCEPTION_IMAGE_SIZE,
               method: str = DEFAULT_PREPROCESSING) -> jax.Array:
  """`images: [B, H, W, 3]` in [0, 255] (uint8/float) -> `[B, size, size, 3]` in [-1, 1].

  `method` (one of `PREPROCESSING`, see the module docstring), float32 throughout:
    'pytorch_fid': pytorch-fid's order: x / 255, bilinear resize (half-pixel centers, no
      antialias), then 2x - 1.
    'tf': the TF 2015-12-05 graph's: `resize_tf_legacy`, then x / 128 - 1.
    'clean_fid': clean-fid's: `resize_clean_fid` (PIL bicubic on the host: not under jit
      unless the images are already size x size), then x / 128 - 1.
  Images already size x size are not resized (every method's resize is then the identity).
  """
  method = check_preprocessing(method)
  resize = tuple(images.shape[1:3]) != (size, size)
  if method == 'pytorch_fid':
    x = images.astype(jnp.float32) / 255.0
    if resize:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method='bilinear',
                           antialias=False)
    return 2.0 * x - 1.0
  if method == 'tf':
    x = resize_tf_legacy(images, size) if resize else jnp.asarray(images).astype(jnp.float32)
  else:
    x = jnp.asarray(resize_clean_fid(images, size) if resize else images).astype(jnp.float32)
  # (x - 128) / 128 as the graph computes it; the same float32 numbers as x / 128 - 1.
  return x / 128.0 - 1.0


_MODULE = InceptionV3()


@functools.partial(jax.jit, static_argnames=('preprocessing',))
def _inception_features(variables, images, preprocessing):
  return _MODULE.apply(variables, preprocess(images, method=preprocessing))


def inception_features(variables: Any, images: jax.Array,
                       preprocessing: str = DEFAULT_PREPROCESSING) -> dict[str, jax.Array]:
  """Pure jitted FID features: `images: [B, H, W, 3]` in [0, 255] (uint8 or float).

  `variables` is `{'params': ..., 'batch_stats': ...}` (see `weights.load_inception`);
  `preprocessing` one of `PREPROCESSING` (compiled once per method and input shape).
  Returns `{'pool_3': [B, 2048], 'logits': [B, 1008]}` float32. Inputs may be sharded
  along the batch axis (e.g. over a 'data' mesh axis); outputs follow that sharding.
  With 'clean_fid', images that are not 299x299 are first resized on the host (PIL; the
  result is not sharded: `sharded_features` resizes before it shards).
  This does not validate: call `check_images` first (or use `compute_features`).
  """
  preprocessing = check_preprocessing(preprocessing)
  if preprocessing == 'clean_fid':
    images = resize_clean_fid(images)  # a no-op at 299x299 (and then fine under jit)
  return _inception_features(variables, images, preprocessing)


def compute_features(variables: Any, images, check_range: bool = True,
                     preprocessing: str = DEFAULT_PREPROCESSING) -> dict[str, jax.Array]:
  """`inception_features` after `check_images` (clear errors for bad shapes/ranges)."""
  check_images(images, check_range=check_range)
  return inception_features(variables, images, preprocessing)


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
                     check_range: bool = True,
                     preprocessing: str = DEFAULT_PREPROCESSING) -> dict[str, np.ndarray]:
  """Features of a host batch, split over the mesh's 'data' axis, gathered to numpy.

  `images: [B, H, W, 3]` in [0, 255] on the host. The batch is padded (by repeating the
  last image) to a multiple of the number of devices; padding rows are dropped from the
  result. Variables are replicated. `preprocessing`: one of `PREPROCESSING`; with
  'clean_fid' the images are resized on the host (PIL) before they are sharded, and travel
  to the devices as float32 299x299. Returns `{'pool_3': [B, 2048], 'logits': [B, 1008]}`
  as float32 numpy arrays.
  """
  preprocessing = check_preprocessing(preprocessing)
  check_images(images, check_range=check_range)
  mesh = parallel.make_mesh() if mesh is None else mesh
  images = np.asarray(images)
  if preprocessing == 'clean_fid':
    images = resize_clean_fid(images)
  n = images.shape[0]
  n_dev = mesh.shape['data']
  pad = (-n) % n_dev
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)], axis=0)
  x = jax.device_put(images, parallel.data_sharding(mesh))
  variables = jax.device_put(variables, parallel.replicated(mesh))
  out = inception_features(variables, x, preprocessing)
  return {k: np.asarray(v)[:n] for k, v in out.items()}
