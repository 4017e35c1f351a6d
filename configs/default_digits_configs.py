"""Defaults of the embedded configs: scikit-learn's handwritten digits, no download needed.

Data: `sklearn.datasets.load_digits()`, 1,797 grayscale 8x8 images with 17 gray levels
(0..16), scaled to [0, 1] and used at their native 8x8 resolution (`data.image_size = 16`
upsamples by pixel repetition, for networks that need more resolution levels).

Network: a small DDPM++ (nf 32, ch_mult (1, 2): resolutions 8 and 4, one BigGAN block per
resolution, attention at 4x4, no FIR, continuous-time training), sized so that training
finishes in about ten minutes on a 2-core CPU (0.16 s per step there).
"""
from configs import default_configs
from configs.default_models import ddpmpp


def get_default_configs():
  config = default_configs.get_default_configs()

  data = config.data
  data.dataset = 'DIGITS'
  # Native 8x8 (16 would upsample 2x by pixel repetition; see the module docstring).
  data.image_size = 8
  data.random_flip = False  # Digits are not mirror-symmetric.
  data.num_channels = 1

  training = config.training
  training.batch_size = 64
  # Tuned for about ten minutes on a 2-core CPU.
  training.n_iters = 3000
  # One step per call: XLA:CPU runs convolution gradients inside loops far slower.
  training.n_jitted_steps = 1
  training.eval_freq = 250
  training.snapshot_freq = 1500
  training.snapshot_freq_for_preemption = 500

  evaluate = config.eval
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 2
  evaluate.batch_size = 256
  evaluate.enable_sampling = True
  evaluate.num_samples = 1024

  model = ddpmpp(config).model
  # Largest distance between two training images is 9.6 (Song & Ermon 2020, technique 1).
  model.sigma_max = 10.
  model.scale_by_sigma = True
  # The EMA starts at the initial parameters: at 0.999 they still weigh 0.999^3000 = 5% after
  # 3,000 steps, which ruined the high-noise scores and with them every ODE sampler's digits
  # (PC hid it). 0.995: the initialization is forgotten, the average spans ~200 steps.
  model.ema_rate = 0.995
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.fourier_scale = 16

  config.optim.lr = 5e-4
  config.optim.warmup = 200
  return config
