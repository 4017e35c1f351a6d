"""Defaults of the embedded configs: scikit-learn's handwritten digits, no download needed.

Data: `sklearn.datasets.load_digits()`, 1,797 grayscale 8x8 images with 17 gray levels
(0..16), scaled to [0, 1] and used at their native 8x8 resolution (`data.image_size = 16`
upsamples by pixel repetition, for networks that need more resolution levels).

Network: a small NCSN++/DDPM++-style U-Net (nf 32, ch_mult (1, 2): resolutions 8 and 4,
one BigGAN block per resolution, attention at 4x4, no FIR, continuous-time training), sized
so that training finishes in about ten minutes on a 2-core CPU (0.16 s per step there).
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 64
  # Tuned for about ten minutes on a 2-core CPU.
  training.n_iters = 3000
  training.snapshot_freq = 1500
  training.log_freq = 50
  training.eval_freq = 250
  training.snapshot_freq_for_preemption = 500
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  # One step per call: XLA:CPU runs convolution gradients inside loops far slower.
  training.n_jitted_steps = 1
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 2
  evaluate.batch_size = 256
  evaluate.enable_sampling = True
  evaluate.num_samples = 1024
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_repeats = 5
  evaluate.is_splits = 10
  # FID reference statistics (`--mode fid_stats` writes them); '' = look in the default places.
  evaluate.stats_path = ''
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth; '' = $SCORESDE_INCEPTION_WEIGHTS or cache.
  evaluate.inception_weights = ''
  # '' = the config's sampling setting; 'table1' = the paper's Table 1 sampler sweep.
  evaluate.sweep = ''

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'DIGITS'
  # Native 8x8 (16 would upsample 2x by pixel repetition; see the module docstring).
  data.image_size = 8
  data.random_flip = False  # Digits are not mirror-symmetric.
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 1
  data.tfrecords_path = ''
  data.data_dir = ''  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

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
  # The EMA starts at the initial parameters: at 0.999 they still weigh 0.999^3000 = 5% after
  # 3,000 steps, which ruined the high-noise scores and with them every ODE sampler's digits
  # (PC hid it). 0.995: the initialization is forgotten, the average spans ~200 steps.
  model.ema_rate = 0.995
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
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
