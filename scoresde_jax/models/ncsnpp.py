"""NCSN++ and DDPM++ (Song et al. 2021): one U-Net family configured by `config.model`.

Registered as 'ncsnpp'. `NCSNpp(config=config).apply({'params': p}, x, labels, train=...)`:
  x: [B, H, W, C] float32 (in [0, 1] unless `config.data.centered`, then [-1, 1]);
  labels: [B] -- sigma(t) for the 'fourier' embedding, a (possibly fractional) timestep or
    noise-level index for 'positional' (used sigma = sigmas[int(label)]);
  returns [B, H, W, C] float32; divided by the used sigma when `scale_by_sigma`.
Dropout draws from the 'dropout' RNG stream when `train`.

Layer creation order and therefore the auto-generated names equal the original score_sde
Flax model, so its checkpoints (and, via `scoresde_jax.convert`, the PyTorch ones) load.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from scoresde_jax.models import layers
from scoresde_jax.models import layerspp
from scoresde_jax.models.utils import register_model

_PROGRESSIVE = ('none', 'output_skip', 'residual')
_PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
_EMBEDDINGS = ('fourier', 'positional')
_RESBLOCKS = ('ddpm', 'biggan')
_COMBINE = ('sum', 'cat')


def _choice(config, key, allowed, default=None):
  value = config.model.get(key, default)
  if value is None:
    raise ValueError(f'config.model.{key} is required (one of {allowed}).')
  value = value.lower()
  if value not in allowed:
    raise ValueError(f'config.model.{key} must be one of {allowed}, got {value!r}.')
  return value


@register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network (see module docstring for the call signature)."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x, time_cond, train: bool = True):
    config = self.config
    m = config.model
    act = layers.get_act(config)
    dtype = layers.get_dtype(config)
    nf = m.nf
    ch_mult = tuple(m.ch_mult)
    num_res_blocks = m.num_res_blocks
    attn_resolutions = tuple(m.attn_resolutions)
    num_resolutions = len(ch_mult)
    conditional = m.conditional
    fir = m.fir
    fir_kernel = tuple(m.fir_kernel)
    skip_rescale = m.skip_rescale
    init_scale = m.init_scale
    resblock_type = _choice(config, 'resblock_type', _RESBLOCKS)
    progressive = _choice(config, 'progressive', _PROGRESSIVE, 'none')
    progressive_input = _choice(config, 'progressive_input', _PROGRESSIVE_INPUT, 'none')
    embedding_type = _choice(config, 'embedding_type', _EMBEDDINGS, 'fourier')
    combine_method = _choice(config, 'progressive_combine', _COMBINE, 'sum')
    attention_type = m.get('attention_type', 'ddpm')
    if attention_type.lower() != 'ddpm':
      raise ValueError(f"config.model.attention_type must be 'ddpm', got {attention_type!r}.")
    if x.ndim != 4:
      raise ValueError(f'x must be [B, H, W, C], got shape {x.shape}.')
    if time_cond.shape != (x.shape[0],):
      raise ValueError(f'labels must be [B] = [{x.shape[0]}], got shape {time_cond.shape}.')
    if x.shape[1] % (2 ** (num_resolutions - 1)) or x.shape[2] % (2 ** (num_resolutions - 1)):
      raise ValueError(f'Image size {x.shape[1:3]} is not divisible by '
                       f'2^{num_resolutions - 1} (len(config.model.ch_mult) - 1 halvings).')
    channels = x.shape[-1]

    # Noise-level / timestep embedding.
    if embedding_type == 'fourier':
      used_sigmas = time_cond.astype(jnp.float32)
      temb = layerspp.GaussianFourierProjection(
          embedding_size=nf, scale=m.fourier_scale)(jnp.log(used_sigmas))
    else:
      sigmas = jnp.asarray(layers.get_sigmas(config))
      used_sigmas = sigmas[time_cond.astype(jnp.int32)]
      temb = layers.get_timestep_embedding(time_cond, nf)

    if conditional:
      dense = functools.partial(nn.Dense, nf * 4, kernel_init=layers.default_init(),
                                dtype=dtype, param_dtype=jnp.float32)
      temb = dense()(temb)
      temb = dense()(act(temb))
    else:
      temb = None

    attn_block = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                   skip_rescale=skip_rescale, dtype=dtype)
    upsample = functools.partial(layerspp.Upsample, with_conv=m.resamp_with_conv, fir=fir,
                                 fir_kernel=fir_kernel, dtype=dtype)
    downsample = functools.partial(layerspp.Downsample, with_conv=m.resamp_with_conv,
                                   fir=fir, fir_kernel=fir_kernel, dtype=dtype)
    # Pyramid resamplers: parameter-free for the skip modes, convolutional for 'residual'.
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                         with_conv=progressive == 'residual', dtype=dtype)
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                           with_conv=progressive_input == 'residual',
                                           dtype=dtype)
    combiner = functools.partial(layerspp.Combine, method=combine_method, dtype=dtype)
    if resblock_type == 'ddpm':
      resnet_block = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=m.dropout,
                                       init_scale=init_scale, skip_rescale=skip_rescale,
                                       dtype=dtype)
    else:
      resnet_block = functools.partial(layerspp.ResnetBlockBigGANpp, act=act,
                                       dropout=m.dropout, fir=fir, fir_kernel=fir_kernel,
                                       init_scale=init_scale, skip_rescale=skip_rescale,
                                       dtype=dtype)

    def out_conv(h, out_ch, **kwargs):
      # GroupNorm -> act -> 3x3 conv, the head used by the pyramid and the final layer.
      h = act(layers.group_norm(h, layerspp.num_groups_pp(h.shape[-1]), dtype))
      return layerspp.conv3x3(h, out_ch, dtype=dtype, **kwargs)

    x = x.astype(jnp.float32)
    if not config.data.centered:
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
    if m.scale_by_sigma:
      h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return h
