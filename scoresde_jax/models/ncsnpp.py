"""NCSN++ and DDPM++ (Song et al. 2021): one U-Net family, registered as 'ncsnpp'.

`NCSNpp(nf=128, ch_mult=(1, 2, 2, 2), ...).apply({'params': p}, x, labels, train=...)`:
  x: [B, H, W, C] float32 (in [0, 1] unless `centered`, then [-1, 1]);
  labels: [B] -- sigma(t) for the 'fourier' embedding, a (possibly fractional) timestep or
    noise-level index for 'positional' (used sigma = sigmas[int(label)]);
  returns [B, H, W, C] float32; divided by the used sigma when `scale_by_sigma`.
With `num_classes` > 0, `apply(..., class_labels=y)` also takes y: [B] int class labels in
[0, num_classes], num_classes being the null class (None: null for the whole batch).
Dropout draws from the 'dropout' RNG stream when `train`.

Each field is set by the `config.model` key of its name (`centered` by config.data.centered).

Layer creation order and therefore the auto-generated names equal the original score_sde
Flax model, so its checkpoints (and, via `scoresde_jax.convert`, the PyTorch ones) load.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from scoresde_jax.models import layers
from scoresde_jax.models import layerspp
from scoresde_jax.errors import ArgumentError
from scoresde_jax.models.utils import check_choice, register_model

_PROGRESSIVE = ('none', 'output_skip', 'residual')
_PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
_EMBEDDINGS = ('fourier', 'positional')
_RESBLOCKS = ('ddpm', 'biggan')
_COMBINE = ('sum', 'cat')
_ATTENTION = ('ddpm',)


@register_model(name='ncsnpp')
class NCSNpp(layers.UNet):
  """NCSN++ / DDPM++ score network (see the module docstring for the call signature).

  Attributes (besides those of `layers.UNet`; `resamp_with_conv` concerns the 'ddpm'
  resamplers, `scale_by_sigma` divides by the used sigma):
    fir: FIR (up_or_down_sampling) resampling instead of naive resizing.
    fir_kernel: the FIR kernel, e.g. (1, 3, 3, 1).
    skip_rescale: divide residual sums by sqrt(2).
    resblock_type: 'ddpm' or 'biggan' (which also resamples).
    init_scale: initialization scale of output layers (0 means 1e-10).
    progressive: output pyramid, 'none' | 'output_skip' | 'residual'.
    progressive_input: input pyramid, 'none' | 'input_skip' | 'residual'.
    progressive_combine: how 'input_skip' merges the pyramid, 'sum' | 'cat'.
    attention_type: 'ddpm' only.
    embedding_type: 'fourier' (labels are sigmas) or 'positional' (labels are indices).
    fourier_scale: std of the Fourier frequencies; required by 'fourier'.
    sigma_min, sigma_max, num_scales: the noise levels labels index; required by
      'positional'.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
  """
  fir: bool
  fir_kernel: tuple[int, ...]
  skip_rescale: bool
  resblock_type: str
  init_scale: float
  progressive: str = 'none'
  progressive_input: str = 'none'
  progressive_combine: str = 'sum'
  attention_type: str = 'ddpm'
  embedding_type: str = 'fourier'
  fourier_scale: float | None = None
  sigma_min: float | None = None
  sigma_max: float | None = None
  num_scales: int | None = None
  dtype: str = 'float32'

  def __post_init__(self):
    check_choice('resblock_type', self.resblock_type, _RESBLOCKS)
    check_choice('progressive', self.progressive, _PROGRESSIVE)
    check_choice('progressive_input', self.progressive_input, _PROGRESSIVE_INPUT)
    check_choice('progressive_combine', self.progressive_combine, _COMBINE)
    check_choice('attention_type', self.attention_type, _ATTENTION)
    embedding = check_choice('embedding_type', self.embedding_type, _EMBEDDINGS)
    needed = ('fourier_scale',) if embedding == 'fourier' else (
        'sigma_min', 'sigma_max', 'num_scales')
    for field in needed:
      if getattr(self, field) is None:
        raise ArgumentError(field, '{name} is required by embedding_type={embedding!r}.',
                            embedding=embedding)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, time_cond, train: bool = True, class_labels=None):
    act, dtype = self.act_and_dtype()
    nf = self.nf
    ch_mult = tuple(self.ch_mult)
    num_res_blocks = self.num_res_blocks
    attn_resolutions = tuple(self.attn_resolutions)
    num_resolutions = len(ch_mult)
    conditional = self.conditional
    fir = self.fir
    fir_kernel = tuple(self.fir_kernel)
    skip_rescale = self.skip_rescale
    init_scale = self.init_scale
    # Choices were validated in __post_init__; any case is accepted.
    resblock_type = self.resblock_type.lower()
    progressive = self.progressive.lower()
    progressive_input = self.progressive_input.lower()
    embedding_type = self.embedding_type.lower()
    combine_method = self.progressive_combine.lower()
    self.check_inputs(x, time_cond)
    channels = x.shape[-1]

    # Noise-level / timestep embedding.
    if embedding_type == 'fourier':
      used_sigmas = time_cond.astype(jnp.float32)
      temb = layerspp.GaussianFourierProjection(
          embedding_size=nf, scale=self.fourier_scale)(jnp.log(used_sigmas))
    else:
      sigmas = jnp.asarray(layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales))
      used_sigmas = sigmas[time_cond.astype(jnp.int32)]
      temb = layers.get_timestep_embedding(time_cond, nf)

    temb = layers.time_mlp(temb, nf, act, dtype) if conditional else None
    temb = self.class_embedding(temb, class_labels)

    attn_block = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                   skip_rescale=skip_rescale, dtype=dtype)
    upsample = functools.partial(layerspp.Upsample, with_conv=self.resamp_with_conv, fir=fir,
                                 fir_kernel=fir_kernel, dtype=dtype)
    downsample = functools.partial(layerspp.Downsample, with_conv=self.resamp_with_conv,
                                   fir=fir, fir_kernel=fir_kernel, dtype=dtype)
    # Pyramid resamplers: parameter-free for the skip modes, convolutional for 'residual'.
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                         with_conv=progressive == 'residual', dtype=dtype)
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                           with_conv=progressive_input == 'residual',
                                           dtype=dtype)
    combiner = functools.partial(layerspp.Combine, method=combine_method, dtype=dtype)
    if resblock_type == 'ddpm':
      resnet_block = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=self.dropout,
                                       init_scale=init_scale, skip_rescale=skip_rescale,
                                       dtype=dtype)
    else:
      resnet_block = functools.partial(layerspp.ResnetBlockBigGANpp, act=act,
                                       dropout=self.dropout, fir=fir, fir_kernel=fir_kernel,
                                       init_scale=init_scale, skip_rescale=skip_rescale,
                                       dtype=dtype)

    def out_conv(h, out_ch, **kwargs):
      # GroupNorm -> act -> 3x3 conv, the head used by the pyramid and the final layer.
      h = act(layers.group_norm(h, layerspp.num_groups_pp(h.shape[-1]), dtype))
      return layerspp.conv3x3(h, out_ch, dtype=dtype, **kwargs)

    x = x.astype(jnp.float32)
    if not self.centered:
      x = 2 * x - 1.  # data in [0, 1] -> [-1, 1]

    # Downsampling path.
    input_pyramid = x if progressive_input != 'none' else None
    hs = [layerspp.conv3x3(x, nf, dtype=dtype)]
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        h = resnet_block(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in attn_resolutions:
          h = attn_block()(h)
        hs.append(h)

      if i_level != num_resolutions - 1:
        if resblock_type == 'ddpm':
          h = downsample()(hs[-1])
        else:
          h = resnet_block(down=True)(hs[-1], temb, train)

        if progressive_input == 'input_skip':
          input_pyramid = pyramid_downsample()(input_pyramid)
          h = combiner()(input_pyramid, h)
        elif progressive_input == 'residual':
          input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
          input_pyramid = input_pyramid + h
          if skip_rescale:
            input_pyramid = input_pyramid / np.sqrt(2.)
          h = input_pyramid
        hs.append(h)

    h = hs[-1]
    h = resnet_block()(h, temb, train)
    h = attn_block()(h)
    h = resnet_block()(h, temb, train)

    # Upsampling path.
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        skip = hs.pop()
        h = resnet_block(out_ch=nf * ch_mult[i_level])(
            jnp.concatenate([h, skip.astype(h.dtype)], axis=-1), temb, train)

      if h.shape[1] in attn_resolutions:
        h = attn_block()(h)

      if progressive != 'none':
        if i_level == num_resolutions - 1:
          if progressive == 'output_skip':
            pyramid = out_conv(h, channels, bias=True, init_scale=init_scale)
          else:
            pyramid = out_conv(h, h.shape[-1], bias=True)
        elif progressive == 'output_skip':
          pyramid = pyramid_upsample()(pyramid)
          pyramid = pyramid + out_conv(h, channels, bias=True, init_scale=init_scale)
        else:
          pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
          pyramid = pyramid + h
          if skip_rescale:
            pyramid = pyramid / np.sqrt(2.)
          h = pyramid

      if i_level != 0:
        if resblock_type == 'ddpm':
          h = upsample()(h)
        else:
          h = resnet_block(up=True)(h, temb, train)

    assert not hs

    if progressive == 'output_skip':
      h = pyramid
    else:
      h = out_conv(h, channels, init_scale=init_scale)

    h = h.astype(jnp.float32)
    if self.scale_by_sigma:
      h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return h
