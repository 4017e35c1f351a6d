"""Defaults every config builds on: the keys of the reference's default_*_configs.py files.

Each dataset's defaults (default_<dataset>_configs.py) add the dataset, its image size and
sigma_max, and override what else differs; where datasets differ, the values here are
CIFAR-10's (batch 128, 1.3M steps, evaluation from checkpoint 9 to 26).
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300001
  # Training steps fused into one compiled call.
  training.n_jitted_steps = 5
  training.continuous = True
  training.likelihood_weighting = False
  # With likelihood_weighting: t drawn from q(t) ~ g(t)^2 / std(t)^2, weighted by u(t) / q(t)
  # (Song et al. 2021, maximum likelihood training). Not in the reference's configs.
  training.importance_weighting = False
  training.reduce_mean = False
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq = 50000
  # Extra checkpoints, overwritten each time, so a preempted job loses little work.
  training.snapshot_freq_for_preemption = 10000
  # Draw a sample grid at each snapshot.
  training.snapshot_sampling = True
  # Class-conditional models (model.num_classes > 0): the probability that a label becomes
  # the null class, so that the network also learns the unconditional score that
  # classifier-free guidance needs. Not in the reference's configs.
  training.label_dropout = 0.1

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  # Class-conditional models only: classifier-free guidance scale w, sampling the score
  # (1 + w) s(x, t, y) - w s(x, t); 0 = the conditional model as trained.
  sampling.guidance_scale = 0.
  # -1: balanced classes (sample i of a batch gets class i % num_classes); k: every sample k.
  sampling.class_label = -1

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_repeats = 5
  # Inception Score over 10 splits, as the Inception-score papers; score_sde reports 1.
  evaluate.is_splits = 10
  # How images are resized and scaled for Inception (evaluation.inception.PREPROCESSING):
  # 'pytorch_fid' (bilinear, half-pixel centers), 'tf' (the TF graph's legacy bilinear, as
  # TTUR's FID) or 'clean_fid' (PIL bicubic, antialiased). The reference statistics must
  # have been made with the same one (`--mode fid_stats` records it).
  evaluate.inception_preprocessing = 'pytorch_fid'
  # FID reference statistics (`--mode fid_stats` writes them); '' = look in the default places.
  evaluate.stats_path = ''
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth; '' = $SCORESDE_INCEPTION_WEIGHTS or cache.
  evaluate.inception_weights = ''
  # '' = the config's sampling setting; 'table1' = the paper's Table 1 sampler sweep; or a
  # list of settings (JSON on the command line): a name, config.sampling's sampler fields and,
  # for a class-conditional model, guidance_scale (run.sweeps).
  evaluate.sweep = ''

  config.data = data = ml_collections.ConfigDict()
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  # Only TFRecord datasets (CelebA-HQ, FFHQ) read it; '' means unset.
  data.tfrecords_path = ''
  data.data_dir = ''  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  # Only data.dataset = 'FOLDER' reads them: the directory of PNG / JPEG images ('' = unset), and
  # whether images smaller than data.image_size are upscaled (otherwise they are refused).
  data.path = ''
  data.upscale = False

  config.model = model = ml_collections.ConfigDict()
  model.embedding_type = 'fourier'
  model.dropout = 0.1
  # Compute dtype of the network ('float32' or 'bfloat16'); parameters stay float32.
  model.dtype = 'float32'
  # Noise scales: the VE SDE's sigmas (sigma_max is the dataset's), the VP SDEs' betas, and
  # how many of them discrete training and sampling use.
  model.sigma_min = 0.01
  model.beta_min = 0.1
  model.beta_max = 20.
  model.num_scales = 1000
  # Classes of a class-conditional U-Net (ncsnpp, ddpm); 0 = unconditional, as the paper's
  # models. NCSN configs tie it to num_scales instead (its noise levels).
  model.num_classes = 0

  config.optim = optim = ml_collections.ConfigDict()
  optim.lr = 2e-4
  optim.warmup = 5000
  # After the warmup, a half cosine from lr to 0 at training.n_iters (the paper: constant).
  optim.cosine_decay = False
  optim.grad_clip = 1.
  optim.optimizer = 'Adam'
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0

  config.seed = 42
  return config
