"""Defaults of the embedded configs: scikit-learn's handwritten digits, no download needed.

Data: `sklearn.datasets.load_digits()`, 1,797 grayscale 8x8 images with 17 gray levels
(0..16). Each image is scaled to [0, 1] and upsampled to 16x16 by nearest-neighbour
repetition (every pixel becomes a 2x2 block): 16x16 lets a three-level U-Net (16, 8, 4)
with attention at 8x8 run, while the content stays exactly the original digits. Samples
are therefore compared with the upsampled images.

Network: a small NCSN++/DDPM++-style U-Net (nf 32, ch_mult (1, 2, 2), 2 BigGAN blocks per
resolution, attention at 8x8, no FIR, continuous-time training), sized so that training
finishes in about ten minutes on a 2-core CPU.
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  # Tuned for about ten minutes on a 2-core CPU.
  training.n_iters = 3001
  training.snapshot_freq = 1000
  training.log_freq = 50
  training.eval_freq = 250
  training.snapshot_freq_for_preemption = 500
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  training.n_jitted_steps = 5
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 3
  evaluate.batch_size = 256
  evaluate.enable_sampling = True
  evaluate.num_samples = 1024
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'DIGITS'
  # 8x8 digits upsampled 2x by pixel repetition (see the module docstring).
  data.image_size = 16
  data.random_flip = False  # Digits are not mirror-symmetric.
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 1
  data.tfrecords_path = ''

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  # Largest distance between two training images is 9.6 (Song & Ermon 2020, technique 1).
  model.sigma_max = 10.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'
  model.dtype = 'float32'
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 32
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (8,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16
  model.conv_size = 3

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = 'Adam'
  optim.lr = 5e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 200
  optim.grad_clip = 1.

  config.seed = 42
  return config
