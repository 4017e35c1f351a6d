"""Defaults shared by the CelebA configs (64x64 RGB), as in the paper's reference code.

Every CelebA config starts from `get_default_configs()` and overrides what differs.
"""
import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000
  training.log_freq = 50
  training.eval_freq = 100
  # Extra checkpoints, overwritten each time, so a preempted job loses little work.
  training.snapshot_freq_for_preemption = 10000
  # Draw a sample grid at each snapshot.
  training.snapshot_sampling = True
  training.likelihood_weighting = False
  training.continuous = True
  # Training steps fused into one compiled call.
  training.n_jitted_steps = 5
  training.reduce_mean = False

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.17

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
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
  data.dataset = 'CELEBA'
  data.image_size = 64
  data.random_flip = True
  data.centered = False
  data.uniform_dequantization = False
  data.num_channels = 3
  # Only TFRecord datasets (CelebA-HQ, FFHQ) read it; '' means unset.
  data.tfrecords_path = ''
  data.data_dir = ''  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01
  model.sigma_max = 90.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'
  # Compute dtype of the network ('float32' or 'bfloat16'); parameters stay float32.
  model.dtype = 'float32'

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.

  config.seed = 42
  return config
