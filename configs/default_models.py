"""What the model configs share: each SDE's training and sampling keys, each network's keys.

Each function sets its keys on a whole config and returns it, so that a config file reads as
the dataset defaults it starts from, its SDE and network, then what it alone changes.
"""


def ve_sde(config, *, continuous):
  """The VE SDE (SMLD): predictor-corrector sampling, reverse diffusion plus Langevin.

  The network's output is divided by sigma (`model.scale_by_sigma`).
  """
  config.training.sde = 'vesde'
  config.training.continuous = continuous
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  config.model.scale_by_sigma = True
  return config


def vp_sde(config, *, continuous):
  """The VP SDE (DDPM): a mean-reduced loss on data centered to [-1, 1].

  Samples with the predictor alone: Euler-Maruyama for continuous-time training, DDPM's
  ancestral sampling for the discrete objective. The sub-VP configs derive from these.
  """
  training = config.training
  training.sde = 'vpsde'
  training.continuous = continuous
  training.reduce_mean = True
  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama' if continuous else 'ancestral_sampling'
  sampling.corrector = 'none'
  config.data.centered = True
  config.model.scale_by_sigma = False
  return config


def ddpm(config):
  """DDPM's U-Net (Ho et al. 2020), CIFAR-10 size.

  Channels 128 to 256, 2 residual blocks a resolution, self-attention at 16x16.
  """
  model = config.model
  model.name = 'ddpm'
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  return config


def ncsnpp(config):
  """NCSN++ (the paper's App. H), CIFAR-10 size: DDPM's U-Net with 4 BigGAN blocks a resolution.

  Adds FIR up- and downsampling, skip connections rescaled by 1/sqrt(2) and a residual
  pyramid of the input image. The config picks the embedding of time or sigma.
  """
  model = ddpm(config).model
  model.name = 'ncsnpp'
  model.num_res_blocks = 4
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'residual'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.conv_size = 3
  return config


def ddpmpp(config):
  """DDPM++: NCSN++ without FIR resampling and without the input pyramid."""
  model = ncsnpp(config).model
  model.fir = False
  model.progressive_input = 'none'
  return config


def _ncsn_family(config, *, name, num_scales, n_steps_each, snr):
  """NCSN and NCSNv2: VE models, RefineNets with InstanceNorm++ fed noise-level indices.

  Trained on the discrete objective with Adam, no warmup and no gradient clipping; sampled
  by annealed Langevin dynamics alone, `n_steps_each` steps a noise level.
  """
  sampling = ve_sde(config, continuous=False).sampling
  sampling.predictor = 'none'
  sampling.corrector = 'ald'
  sampling.n_steps_each = n_steps_each
  sampling.snr = snr
  model = config.model
  model.name = name
  model.num_scales = num_scales
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.nf = 128
  model.interpolation = 'bilinear'
  optim = config.optim
  optim.amsgrad = False
  optim.warmup = 0
  optim.grad_clip = -1.
  return config


def ncsn(config, *, num_scales, n_steps_each, snr):
  """NCSN (Song & Ermon 2019): output not divided by sigma, no EMA, learning rate 1e-3.

  NCSN is conditioned on the noise-level index through conditional InstanceNorm++, whose
  embeddings have one row per noise level: `model.num_classes` is tied to `model.num_scales`
  (an ml_collections reference, so overriding num_scales on the command line moves both).
  """
  _ncsn_family(config, name='ncsn', num_scales=num_scales, n_steps_each=n_steps_each, snr=snr)
  model = config.model
  model.scale_by_sigma = False
  model.num_classes = model.get_ref('num_scales')
  model.ema_rate = 0.
  config.optim.lr = 1e-3
  return config


def ncsnv2(config, *, name, num_scales, n_steps_each, snr):
  """NCSNv2 (Song & Ermon 2020): EMA 0.999, learning rate 1e-4.

  The network divides its output by the sigma of the label's noise level
  (`scale_by_sigma`), as NCSNv2 does.
  """
  _ncsn_family(config, name=name, num_scales=num_scales, n_steps_each=n_steps_each, snr=snr)
  config.model.ema_rate = 0.999
  config.optim.lr = 1e-4
  return config
