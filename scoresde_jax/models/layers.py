"""Layers shared by the DDPM and NCSN++ networks (Flax linen, NHWC).

Module and parameter names equal the auto-generated names of the original score_sde
Flax code (`Conv_0`, `GroupNorm_0`, `Dense_0`, `NIN_0` with `W`/`b`, ...), so its
checkpoints load without renaming. Helper functions such as `conv3x3` create their
`nn.Conv` inside the calling compact module, exactly as the reference does, which is what
makes the names line up.

Precision: parameters are always float32; `dtype` is the compute dtype. Normalization
statistics, attention softmax and embeddings are computed in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax.models import up_or_down_sampling
from scoresde_jax.errors import ArgumentError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_ACTS = {'elu': nn.elu, 'relu': nn.relu, 'swish': nn.swish,
         'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2)}


def get_dtype(name: str):
  """The compute dtype called `name` ('float32' or 'bfloat16'); ArgumentError('dtype') else."""
  if name not in _DTYPES:
    raise ArgumentError('dtype', '{name} must be one of {allowed}, got {value!r}.',
                        allowed=sorted(_DTYPES), value=name)
  return _DTYPES[name]


def get_act(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation called `name` (elu | relu | lrelu | swish, any case); ArgumentError else."""
  if name.lower() not in _ACTS:
    raise ArgumentError('nonlinearity', 'Unknown {name} {value!r}; expected one of {allowed}.',
                        value=name, allowed=sorted(_ACTS))
  return _ACTS[name.lower()]


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
  """SMLD noise levels, geometric from sigma_max down to sigma_min: [num_scales] float32."""
  return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min),
                            num_scales)).astype(np.float32)


def default_init(scale: float = 1.):
  """DDPM initialization: variance scaling, fan_avg, uniform. Scale 0 means 1e-10."""
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, 'fan_avg', 'uniform')


def conv1x1(x, out_planes: int, stride: int = 1, bias: bool = True, init_scale: float = 1.,
            dtype=jnp.float32):
  """1x1 convolution with DDPM initialization, created in the calling compact module."""
  return nn.Conv(out_planes, kernel_size=(1, 1), strides=(stride, stride), padding='SAME',
                 use_bias=bias, kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32)(x)


def conv3x3(x, out_planes: int, stride: int = 1, bias: bool = True, init_scale: float = 1.,
            dtype=jnp.float32):
  """3x3 'SAME' convolution with DDPM initialization (stride 2 pads 0 before, 1 after)."""
  return nn.Conv(out_planes, kernel_size=(3, 3), strides=(stride, stride), padding='SAME',
                 use_bias=bias, kernel_init=default_init(init_scale),
                 bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32)(x)


def group_norm(x, num_groups: int = 32, dtype=jnp.float32):
  """GroupNorm with eps 1e-6 (the reference's); statistics in float32 (Flax promotes)."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, dtype=dtype,
                      param_dtype=jnp.float32)(x)


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int,
                           max_positions: int = 10000) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, embedding_dim].

  First half sines, second half cosines of timesteps * max_positions^(-i / (half - 1)),
  zero-padded when `embedding_dim` is odd. Computed in float32.
  """
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must be 1-D [B], got shape {timesteps.shape}.')
  half_dim = embedding_dim // 2
  if half_dim < 2:
    raise ValueError(f'embedding_dim must be >= 4, got {embedding_dim}.')
  freq = math.log(max_positions) / (half_dim - 1)
  freq = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -freq)
  emb = timesteps.astype(jnp.float32)[:, None] * freq[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class NIN(nn.Module):
  """Per-pixel linear map (1x1 'network in network'): [..., C_in] -> [..., num_units].

  Parameters `W` [C_in, num_units] and `b` [num_units], as in the reference.
  """
  num_units: int
  init_scale: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param('W', default_init(scale=self.init_scale), (x.shape[-1], self.num_units),
                   jnp.float32)
    b = self.param('b', nn.initializers.zeros, (self.num_units,), jnp.float32)
    x = x.astype(self.dtype)
    return jnp.tensordot(x, w.astype(self.dtype), axes=1) + b.astype(self.dtype)


def spatial_attention(q, k, v):
  """Softmax attention over all H*W positions. q, k, v: [B, H, W, C] -> [B, H, W, C].

  One head, logits scaled by C^-1/2, softmax in float32. `jax.nn.dot_product_attention`
  lets XLA pick the backend's fused kernel (cuDNN flash attention on a GPU).
  """
  b, h, w, c = q.shape
  q, k, v = (a.reshape(b, h * w, 1, c) for a in (q, k, v))
  return jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)


class AttnBlock(nn.Module):
  """DDPM self-attention block: x + NIN(attention(GroupNorm(x))). [B, H, W, C]."""
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = group_norm(x, self.num_groups, self.dtype)
    q = NIN(c, dtype=self.dtype)(h)
    k = NIN(c, dtype=self.dtype)(h)
    v = NIN(c, dtype=self.dtype)(h)
    h = spatial_attention(q, k, v)
    h = NIN(c, init_scale=0., dtype=self.dtype)(h)
    return x + h


class Upsample(nn.Module):
  """DDPM nearest-neighbour x2 upsampling, optionally followed by a 3x3 conv."""
  with_conv: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = up_or_down_sampling.naive_upsample_2d(x, factor=2)
    if self.with_conv:
      h = conv3x3(h, x.shape[-1], dtype=self.dtype)
    return h


class Downsample(nn.Module):
  """DDPM x2 downsampling: stride-2 3x3 conv, or 2x2 average pooling."""
  with_conv: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return conv3x3(x, x.shape[-1], stride=2, dtype=self.dtype)
    return up_or_down_sampling.naive_downsample_2d(x, factor=2)


def time_mlp(temb, nf: int, act, dtype):
  """The label embedding through Dense(4 nf), act, Dense(4 nf): how both U-Nets condition.

  Call it inside the network: the two Dense layers are the network's, created in this order.
  """
  dense = functools.partial(nn.Dense, nf * 4, kernel_init=default_init(), dtype=dtype,
                            param_dtype=jnp.float32)
  h = dense()(temb)
  return dense()(act(h))


def add_class_embedding(temb, class_labels, num_classes: int):
  """temb + a learned embedding of `class_labels`: how a class-conditional U-Net conditions.

  temb: [B, D], the output of `time_mlp`; class_labels: [B] int in [0, num_classes], where
  `num_classes` is the null class (the unconditional model of classifier-free guidance), or
  None: the null class for the whole batch. The table `class_embed` [num_classes + 1, D]
  starts at zero, so a fresh conditional network computes what the unconditional one does,
  for every label. Call it inside the network: the Embed is the network's. Named
  explicitly: an explicit name takes no auto-generated index from the other layers.
  """
  if class_labels is None:
    class_labels = jnp.full((temb.shape[0],), num_classes, jnp.int32)
  if class_labels.shape != temb.shape[:1]:
    raise ValueError(f'class_labels must be [B] = [{temb.shape[0]}], got shape '
                     f'{class_labels.shape}.')
  embed = nn.Embed(num_classes + 1, temb.shape[-1], embedding_init=nn.initializers.zeros,
                   param_dtype=jnp.float32, name='class_embed')
  return temb + embed(class_labels.astype(jnp.int32)).astype(temb.dtype)


def add_time_embedding(h, temb, act, dtype):
  """h + Dense(act(temb)) over every pixel: a residual block's conditioning on the noise
  level (h unchanged when `temb` is None). Call it inside the block: the Dense is the block's."""
  if temb is None:
    return h
  dense = nn.Dense(h.shape[-1], kernel_init=default_init(), dtype=dtype, param_dtype=jnp.float32)
  return h + dense(act(temb))[:, None, None, :]


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block: [B, H, W, C] (+ temb [B, D]) -> [B, H, W, out_ch]."""
  act: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None, train: bool = True):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = self.act(group_norm(x, self.num_groups, self.dtype))
    h = conv3x3(h, out_ch, dtype=self.dtype)
    h = add_time_embedding(h, temb, self.act, self.dtype)
    h = self.act(group_norm(h, self.num_groups, self.dtype))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=0., dtype=self.dtype)
    if c != out_ch:
      if self.conv_shortcut:
        x = conv3x3(x, out_ch, dtype=self.dtype)
      else:
        x = NIN(out_ch, dtype=self.dtype)(x)
    return x + h


class UNet(nn.Module):
  """The fields and input checks the DDPM and NCSN++ / DDPM++ U-Nets share.

  Attributes:
    nf: base channel count; level i has nf * ch_mult[i] channels.
    ch_mult: channel multipliers, one per resolution (len - 1 halvings).
    num_res_blocks: residual blocks per resolution.
    attn_resolutions: feature-map sides (H) that get self-attention.
    dropout: dropout rate inside residual blocks.
    resamp_with_conv: resamplers convolve after resizing.
    conditional: embed the labels and feed them to every residual block.
    scale_by_sigma: divide the output by the noise level of the labels.
    nonlinearity: elu | relu | lrelu | swish.
    centered: inputs are in [-1, 1] already (else [0, 1]).
    num_classes: classes of a class-conditional network (`__call__(..., class_labels=)`,
      `add_class_embedding`); 0 (the default) builds the unconditional network, parameters
      and outputs unchanged. Needs `conditional` (the class embedding joins the time one).
  """
  nf: int
  ch_mult: tuple[int, ...]
  num_res_blocks: int
  attn_resolutions: tuple[int, ...]
  dropout: float
  resamp_with_conv: bool
  conditional: bool
  scale_by_sigma: bool
  nonlinearity: str
  centered: bool
  # Keyword-only: a field with a default here, before the subclasses' required fields.
  num_classes: int = dataclasses.field(default=0, kw_only=True)

  def __post_init__(self):
    if (not isinstance(self.num_classes, (int, np.integer)) or isinstance(self.num_classes, bool)
        or self.num_classes < 0):
      raise ArgumentError('num_classes', '{name} must be an integer >= 0 (0: unconditional), '
                          'got {value!r}.', value=self.num_classes)
    if self.num_classes and not self.conditional:
      raise ArgumentError('num_classes', '{name}={value} needs conditional=True: the class '
                          'embedding is added to the time embedding.', value=self.num_classes)
    self.act_and_dtype()  # unknown names fail when the network is built
    super().__post_init__()

  def act_and_dtype(self):
    """The activation of `nonlinearity` and the compute dtype of `dtype` (a field each
    subclass declares with its defaults, after its own required fields)."""
    return get_act(self.nonlinearity), get_dtype(self.dtype)

  def class_embedding(self, temb, class_labels):
    """temb with the class embedding of `class_labels` added (`add_class_embedding`); temb
    itself for an unconditional network, which takes no class labels."""
    if not self.num_classes:
      if class_labels is not None:
        raise ArgumentError('class_labels', '{name} given to an unconditional network '
                            '(num_classes=0).')
      return temb
    return add_class_embedding(temb, class_labels, self.num_classes)

  def check_inputs(self, x, labels):
    """x: [B, H, W, C], H and W divisible by 2^(len(ch_mult) - 1); labels: [B]."""
    if x.ndim != 4:
      raise ValueError(f'x must be [B, H, W, C], got shape {x.shape}.')
    if labels.shape != (x.shape[0],):
      raise ValueError(f'labels must be [B] = [{x.shape[0]}], got shape {labels.shape}.')
    halvings = len(self.ch_mult) - 1
    if x.shape[1] % (2 ** halvings) or x.shape[2] % (2 ** halvings):
      raise ValueError(f'Image size {x.shape[1:3]} is not divisible by '
                       f'2^{halvings} (len(ch_mult) - 1 halvings).')
